"""Where the chat client's typed lines come from, and where its lines go.

Two kinds of standard input:

- a terminal: ``prompt_toolkit`` edits the line, and every printed line goes
  through its stdout proxy, which draws it above the prompt and redraws the
  half-typed input after it (``interactive``);
- anything else (a pipe, a file, ``docker run -i``): lines are read by a
  thread and handed to the event loop (``PipeLines``).

Both give ``None`` at the end of input (Ctrl-D, end of file) and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Protocol

from prompt_toolkit import PromptSession
from prompt_toolkit.application import get_app_session
from prompt_toolkit.patch_stdout import patch_stdout

from hub.lines import Printer

PROMPT = "> "
# Lines read ahead of the sender: enough to absorb a paste, small enough that
# a huge piped file is read only as fast as it is sent.
PIPE_BACKLOG = 64
READ_CHUNK = 64 * 1024


class LineSource(Protocol):
    async def read(self) -> str | None:
        """The next line without its line ending; ``None`` when input ends."""
        ...


def is_interactive() -> bool:
    """True when a person types at a terminal that also shows our lines."""
    return sys.stdin.isatty() and sys.stderr.isatty()


class PipeLines:
    """Lines of a non-terminal file descriptor, read by a daemon thread.

    A thread rather than ``loop.connect_read_pipe``: it also reads regular
    files (``hub ... < lines.txt``) and never makes the descriptor
    non-blocking under other processes that share it. It reads with
    ``os.read`` so it holds no lock of ``sys.stdin`` that interpreter
    shutdown would wait for.
    """

    def __init__(self, fd: int = 0) -> None:
        self._fd = fd
        # The thread takes a slot per line and ``read`` gives it back: the
        # backlog is bounded, and the thread never creates a coroutine that a
        # closing loop would leave un-awaited.
        self._slots = threading.Semaphore(PIPE_BACKLOG)
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._ended = False
        threading.Thread(target=self._pump, name="stdin-reader", daemon=True).start()

    async def read(self) -> str | None:
        if self._ended:
            return None
        line = await self._queue.get()
        self._slots.release()
        if line is None:
            self._ended = True
        return line

    def _pump(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while True:
            try:
                chunk = os.read(self._fd, READ_CHUNK)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += decoder.decode(chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                if not self._post(line.removesuffix("\r")):
                    return
        pending += decoder.decode(b"", final=True)
        if pending and not self._post(pending.removesuffix("\r")):
            return
        self._post(None)

    def _post(self, line: str | None) -> bool:
        """Hand ``line`` to the loop, waiting for room; False once the loop is gone."""
        self._slots.acquire()
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
        except RuntimeError:  # the loop is closed: the program is leaving
            return False
        return True


class PromptLines:
    """Lines typed at a ``prompt_toolkit`` prompt."""

    def __init__(self, session: PromptSession[str]) -> None:
        self._session = session

    async def read(self) -> str | None:
        try:
            # SIGINT stays with the program's own handler (the prompt sees
            # Ctrl-C as a key anyway); unexpected loop errors are not turned
            # into "Press ENTER to continue" dialogs.
            return await self._session.prompt_async(
                handle_sigint=False, set_exception_handler=False
            )
        except (EOFError, KeyboardInterrupt):
            return None


@contextmanager
def interactive(color: bool) -> Iterator[tuple[PromptLines, Printer]]:
    """A prompt on the terminal, and a printer whose lines never garble it.

    Everything, the prompt included, goes to standard error as the
    reference's lines do; standard output stays unused.
    """
    # patch_stdout's writer thread finds the prompt through prompt_toolkit's
    # default session (a thread starts with an empty context, so a session
    # made with create_app_session would not be seen: lines would be written
    # over the prompt instead of above it). That session creates its output
    # on first use, from sys.stdout: make that first use see standard error.
    with redirect_stdout(sys.stderr):
        get_app_session().output  # noqa: B018 (created and kept on first access)
    # Inside patch_stdout sys.stderr is the proxy that prints above the
    # prompt; raw, so the printer's colours pass through.
    with patch_stdout(raw=True):
        session: PromptSession[str] = PromptSession(PROMPT, erase_when_done=True)
        yield PromptLines(session), Printer(sys.stderr, color=color)


@contextmanager
def stop_signals(on_signal: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``on_signal`` instead of killing the process."""
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            continue
        installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
