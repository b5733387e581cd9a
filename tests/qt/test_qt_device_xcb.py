"""The simulator on a real X server (Xvfb) with Qt's xcb platform, not offscreen.

Offscreen Qt loads none of the X libraries that the xcb plugin needs, so only
this shows that `scripts/setup --dev` installed them. The simulator runs as a
process, as a user starts it; the screenshot comes from the X server.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_device_server import FakeServer, hub_frame
from PyQt5.QtGui import QImage
from qt_helpers import WaitUntil
from waiting import scaled

from clients.qt_device.protocol import DEVICE_LED_ON, rgb_of
from clients.qt_device.widgets import PANEL_WIDTH
from hub.core.roomstate import RoomState

pytestmark = [
    pytest.mark.qt,
    pytest.mark.skipif(
        shutil.which("Xvfb") is None, reason="no Xvfb (scripts/setup --dev installs it)"
    ),
]

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = Path(__file__).with_name("x_screenshot.py")
WINDOW_TITLE = "^Device simulator$"
# What a connected device shows in the hub's scheme: LED 0 lit by the device
# itself, LED 1 the idle room's blue. The gadget's body is drawn in #3b3f45.
DEVICE_GREEN = rgb_of(DEVICE_LED_ON)
IDLE_BLUE = rgb_of(hub_frame(RoomState.IDLE, 0)[1])
GADGET_BODY = 0x3B3F45


@dataclass(frozen=True)
class XServer:
    display: str
    runtime_dir: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ, DISPLAY=self.display, QT_QPA_PLATFORM="xcb")
        env["XDG_RUNTIME_DIR"] = str(self.runtime_dir)  # else Qt warns about it
        return env

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env=self.env(), capture_output=True, text=True, timeout=scaled(20)
        )


@pytest.fixture
def xserver(tmp_path: Path) -> Iterator[XServer]:
    """Xvfb on a display number it picks itself (-displayfd: never a clash)."""
    read_end, write_end = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        # Xvfb writes the display number once it accepts clients.
        ready, _, _ = select.select([read_end], [], [], scaled(20))
        number = os.read(read_end, 64).decode().strip() if ready else ""
        assert number.isdigit(), f"Xvfb did not start (exit code {xvfb.poll()})"
        runtime_dir = tmp_path / "xdg-runtime"
        runtime_dir.mkdir(mode=0o700)
        yield XServer(f":{number}", runtime_dir)
    finally:
        os.close(read_end)
        xvfb.terminate()
        xvfb.wait(scaled(10))


def start_simulator(x: XServer, server: FakeServer, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "clients.qt_device", "--server", server.target]
    command += ["--device-id", "xcb", "--count", "2", "--connect", "--no-audio"]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=x.env(), stdout=out, stderr=out)


def find_window(x: XServer) -> str | None:
    found = x.run("xdotool", "search", "--onlyvisible", "--name", WINDOW_TITLE)
    return found.stdout.split()[0] if found.returncode == 0 and found.stdout.split() else None


def window_geometry(x: XServer, window: str) -> tuple[int, int, int, int]:
    shell = x.run("xdotool", "getwindowgeometry", "--shell", window).stdout
    values = dict(re.findall(r"^(\w+)=(\d+)$", shell, re.MULTILINE))
    return int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"])


def screenshot(x: XServer, out: Path) -> QImage:
    taken = x.run(sys.executable, str(SCREENSHOT), str(out))
    assert taken.returncode == 0, f"screenshot failed: {taken.stderr}"
    return QImage(str(out))


def colours_in(image: QImage, left: int, top: int, width: int, height: int) -> set[int]:
    """Every RGB value in the rectangle (every other pixel: LEDs are 22 px wide)."""
    return {
        image.pixel(px, py) & 0xFFFFFF
        for py in range(top, top + height, 2)
        for px in range(left, left + width, 2)
    }


def test_the_simulator_shows_two_connected_devices_on_x(
    xserver: XServer, server: FakeServer, wait_until: WaitUntil, tmp_path: Path
) -> None:
    if shutil.which("xdotool") is None:
        pytest.fail("xdotool is missing: run scripts/setup --dev")
    log = tmp_path / "simulator.log"
    simulator = start_simulator(xserver, server, log)

    def failure(what: str) -> str:
        return f"{what}; simulator exit code {simulator.poll()}, output:\n{log.read_text()}"

    try:
        window = None

        def window_shown() -> bool:
            nonlocal window
            assert simulator.poll() is None, failure("the simulator exited")
            window = find_window(xserver)
            return window is not None

        wait_until(window_shown, "the simulator's window on X", timeout=30)
        assert window is not None
        wait_until(
            lambda: all(server.service.answers(d) for d in ("xcb", "xcb-2")),
            "both devices to connect and answer the first LED frame",
            timeout=15,
        )
        left, top, width, height = window_geometry(xserver, window)
        assert width >= 2 * PANEL_WIDTH, f"window {width}x{height} is narrower than two devices"

        # The picture on the X server, until both devices show as connected
        # (the window repaints a moment after the frames arrive).
        shot = tmp_path / "simulator-xcb.png"
        halves: list[set[int]] = []

        def both_devices_drawn() -> bool:
            nonlocal halves
            image = screenshot(xserver, shot)
            half = width // 2
            halves = [
                colours_in(image, left, top, half, height),
                colours_in(image, left + half, top, width - half, height),
            ]
            return all({DEVICE_GREEN, IDLE_BLUE, GADGET_BODY} <= colours for colours in halves)

        wait_until(both_devices_drawn, f"both devices drawn connected in {shot}", timeout=20)
        assert all(len(colours) > 20 for colours in halves), "the window is nearly blank"
    finally:
        if simulator.poll() is None:
            simulator.send_signal(signal.SIGINT)  # the simulator closes its window on Ctrl-C
        try:
            code = simulator.wait(scaled(10))
        except subprocess.TimeoutExpired:
            simulator.kill()
            simulator.wait()
            raise
    assert code == 0, failure("the simulator did not exit cleanly")
