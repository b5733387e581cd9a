"""The reference chat program's printed lines, and a printer for them.

These lines are the CLI's output (the reference prints them all on standard
error), not the server's log format. Text that came from other people — names
and messages — is shown literally: control characters are made visible and
nothing is ever read as rich markup.
"""

from __future__ import annotations

import sys
import time
import unicodedata
from typing import TextIO

from rich.console import Console
from rich.text import Text

SERVER = "<<Server>>"
CLIENT = "<<Client>>"
PROCESS = "<<Process>>"

STYLES = {SERVER: "bold cyan", CLIENT: "bold green", PROCESS: "bold red"}


def stamp(when: float | None = None) -> str:
    """Local time as the reference shows it: ``03:04:05 PM``."""
    return time.strftime("%I:%M:%S %p", time.localtime(when))


def literal(text: str) -> str:
    """``text`` with every control or format character shown as an escape.

    Keeps peers from driving the terminal (ANSI escapes, carriage returns that
    overwrite a line, bidi overrides that reorder it).
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or char == " ":
            out.append(char)
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


class Printer:
    """Writes lines plainly, or with colour when the stream is a terminal."""

    def __init__(self, stream: TextIO | None = None, *, color: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.color = self.stream.isatty() if color is None else color
        self._console = (
            Console(
                file=self.stream,
                markup=False,
                highlight=False,
                emoji=False,
                force_terminal=True,
                soft_wrap=True,
            )
            if self.color
            else None
        )

    def line(self, who: str, text: str, when: float | None = None) -> None:
        """``[TIME] WHO: TEXT``; ``who`` and ``text`` are shown literally."""
        prefix = f"[{stamp(when)}]"
        if self._console is None:
            self.stream.write(f"{prefix} {literal(who)}: {literal(text)}\n")
            self.stream.flush()
            return
        styled = Text(prefix, style="dim")
        styled.append(" ")
        styled.append(literal(who), style=STYLES.get(who, "bold magenta"))
        styled.append(": ")
        styled.append(literal(text))
        self._console.print(styled)

    def render(self, who: str, text: str, when: float | None = None) -> Text:
        """The same line as a rich Text (for UIs that print it themselves)."""
        styled = Text(f"[{stamp(when)}]", style="dim")
        styled.append(" ")
        styled.append(literal(who), style=STYLES.get(who, "bold magenta"))
        styled.append(": ")
        styled.append(literal(text))
        return styled
