"""``python x_screenshot.py OUT.png``: save the whole X screen ($DISPLAY) as a PNG.

What ImageMagick's ``import -window root`` does, with the Qt the tests already
have: the picture comes from the X server, not from the simulator's process."""

from __future__ import annotations

import os
import sys

os.environ["QT_QPA_PLATFORM"] = "xcb"

from PyQt5.QtWidgets import QApplication


def main(out: str) -> int:
    app = QApplication(sys.argv[:1])
    screen = app.primaryScreen()
    if screen is None:
        print("x_screenshot: no screen", file=sys.stderr)
        return 1
    return 0 if screen.grabWindow(0).save(out, "PNG") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
