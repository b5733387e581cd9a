"""Where the listening client's commands come from and its lines go.

Two setups:

- a person at a terminal (standard input and output both terminals):
  ``prompt_toolkit`` edits the command line; status lines are printed above
  it through its stdout proxy, and the progress of the playing stream is the
  prompt's bottom toolbar, so nothing ever garbles the half-typed command;
- anything else (a pipe, a file, a test): commands are read line by line by
  a thread, lines go to standard output as they are; the progress line is
  redrawn in place (``\\r``) when standard output is a terminal, and the
  caller prints an occasional plain progress line when it is not.

Every ``read`` gives ``None`` at the end of input (Ctrl-D, end of a pipe) and
on Ctrl-C at the prompt.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, TextIO

from clients.py_cli.terminal import PromptLines

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession

PROMPT = "listen> "
READ_CHUNK = 4096
# Seconds between redraws of the prompt's toolbar when nothing else redraws it.
TOOLBAR_REFRESH = 0.5


class Screen(Protocol):
    #: True when ``status`` is shown in place (a terminal); otherwise the
    #: caller prints progress as occasional ordinary lines.
    live: bool

    def line(self, text: str) -> None:
        """One line of output, above the status line if there is one."""

    def status(self, text: str | None) -> None:
        """Replace the in-place status line (``None``: remove it)."""


def is_interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


class PlainScreen:
    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._status = ""

    def line(self, text: str) -> None:
        if self.live and self._status:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        if self.live and self._status:
            self.stream.write(self._status)
        self.stream.flush()

    def status(self, text: str | None) -> None:
        if not self.live:
            return
        self._status = text or ""
        self.stream.write("\r\x1b[K" + self._status)
        self.stream.flush()


class PromptScreen:
    """Lines above the prompt; the status in its bottom toolbar."""

    live = True

    def __init__(self) -> None:
        self._status = ""
        self.session: PromptSession[str] | None = None

    def toolbar(self) -> str:
        # A plain str: prompt_toolkit shows it as text, never as markup.
        return self._status or " "

    def line(self, text: str) -> None:
        print(text, flush=True)

    def status(self, text: str | None) -> None:
        self._status = text or ""
        if self.session is not None:
            self.session.app.invalidate()


@contextlib.contextmanager
def prompt_terminal() -> Iterator[tuple[PromptLines, PromptScreen]]:
    """A command prompt whose printed lines and status never garble it."""
    # Imported here: a pipe never needs prompt_toolkit, and it is most of
    # the program's start-up time.
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    screen = PromptScreen()
    with patch_stdout():
        session: PromptSession[str] = PromptSession(
            PROMPT, bottom_toolbar=screen.toolbar, refresh_interval=TOOLBAR_REFRESH
        )
        screen.session = session
        yield PromptLines(session), screen
