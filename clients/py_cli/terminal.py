"""Where the chat client's typed lines come from, and where its lines go.

Two kinds of standard input:

- a terminal: ``prompt_toolkit`` edits the line, and every printed line goes
  through its stdout proxy, which draws it above the prompt and redraws the
  half-typed input after it (``interactive``). A paste of several lines gives
  them one by one. Ctrl-C is the program's interrupt, as SIGINT is;
- anything else (a pipe, a file, ``docker run -i``): lines are read by a
  thread and handed to the event loop (``PipeLines``).

Both give ``None`` at the end of input (Ctrl-D, end of file, Ctrl-C), and say
what they hold that was typed but not yet given out (``unsent``).

The user's stops (``stop_signals``, a key) are events; ``unless_stopped``
waits on something, or gives it up when one of them is set.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import (
    AbstractContextManager,
    ExitStack,
    contextmanager,
    nullcontext,
    redirect_stdout,
)
from typing import Any, Protocol, TypeVar

from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application, get_app_session
from prompt_toolkit.input.vt100 import Vt100Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent, merge_key_bindings
from prompt_toolkit.keys import Keys
from prompt_toolkit.patch_stdout import patch_stdout

from hub.lines import Printer

log = logging.getLogger(__name__)

T = TypeVar("T")

PROMPT = "> "
# Lines read ahead of the sender: enough to absorb a paste, small enough that
# a huge piped file is read only as fast as it is sent.
PIPE_BACKLOG = 64
READ_CHUNK = 64 * 1024


class LineSource(Protocol):
    async def read(self) -> str | None:
        """The next line without its line ending; ``None`` when input ends."""
        ...

    def unsent(self) -> list[str]:
        """Lines, or a half-typed line, taken in but not yet given out by ``read``."""
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

    def unsent(self) -> list[str]:
        """Takes them: for the way out."""
        # Only what the loop already holds: the thread's line in hand and the
        # rest of the input were never taken from the pipe's writer.
        held = []
        while not self._queue.empty():
            line = self._queue.get_nowait()
            self._slots.release()
            if line is None:
                self._ended = True
            else:
                held.append(line)
        return held

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


def pasted_lines(text: str) -> list[str]:
    """The lines of an accepted input: a paste of several lines is several lines.

    Only line feeds split (a bracketed paste turns the terminal's CR and CRLF
    into them); a final line feed ends the last line rather than adding an
    empty one.
    """
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return lines


def ignore_mouse_reports() -> KeyBindings:
    """Key bindings that drop mouse reports, which the prompt never asks for.

    So any that come are typed bytes: Esc followed quickly by ``[31m`` parses
    as one, and prompt_toolkit's own handler raises on such malformed ones
    (ValueError, KeyError), killing the prompt's input.
    """
    bindings = KeyBindings()

    @bindings.add(Keys.Vt100MouseEvent)
    def _drop(event: KeyPressEvent) -> None:
        log.debug("ignoring a mouse report: %r", event.data)

    return bindings


def contain_key_errors(app: Application[Any]) -> None:
    """Let no key binding that fails end the prompt's input or print a traceback.

    prompt_toolkit runs key handlers from a reader callback: one that raises
    makes its key processor drop every key queued after it (the rest of a
    paste) and the loop prints the traceback over the screen.
    ``ignore_mouse_reports`` removes the failure known; this keeps any other
    to a bell. It wraps the processor's internal ``_call_handler``, the one
    place every handler passes: prompt_toolkit's own bindings (where the
    known failure was) sit in the application's private ``_default_bindings``,
    out of reach of a wrapper around the public ``key_bindings``. Without
    ``_call_handler`` (a prompt_toolkit that changed), nothing is wrapped.
    """
    processor = app.key_processor
    call_handler = getattr(processor, "_call_handler", None)
    if call_handler is None:
        return

    def guarded(handler: Any, key_sequence: Any) -> None:
        try:
            call_handler(handler, key_sequence=key_sequence)
        except Exception:
            log.debug("a key binding failed on %r", key_sequence, exc_info=True)
            app.output.bell()

    processor._call_handler = guarded  # type: ignore[method-assign]


class PromptLines:
    """Lines typed at a ``prompt_toolkit`` prompt.

    Ctrl-C ends the input, after calling ``on_interrupt`` if given. No
    keystroke ends it otherwise: the session gets ``ignore_mouse_reports`` and
    ``contain_key_errors``.

    With ``hold_raw_mode``, from the first ``read`` until the input ends or
    ``close`` (which the owner must then call), the terminal stays in raw
    mode between prompts too: a key typed just after Enter, before the next
    prompt is up, waits for that prompt instead of going to the terminal
    driver, which would echo it over the screen, turn Ctrl-C into SIGINT and
    swallow Ctrl-D (it then reads as a NUL).
    """

    def __init__(
        self,
        session: PromptSession[str],
        on_interrupt: Callable[[], None] | None = None,
        *,
        hold_raw_mode: bool = False,
    ) -> None:
        own = [session.key_bindings] if session.key_bindings is not None else []
        session.key_bindings = merge_key_bindings([ignore_mouse_reports(), *own])
        contain_key_errors(session.app)
        self._session = session
        self._on_interrupt = on_interrupt
        self._pasted: deque[str] = deque()  # the rest of an accepted paste
        self._prompting = False
        self._left = ""  # what the prompt held when Ctrl-C was pressed
        self._hold_raw_mode = hold_raw_mode
        self._raw = ExitStack()
        self._raw_mode_held = False

    async def read(self) -> str | None:
        if self._pasted:
            return self._pasted.popleft()
        if self._hold_raw_mode and not self._raw_mode_held:
            self._raw.enter_context(self._session.input.raw_mode())
            self._raw_mode_held = True
        self._left = ""
        self._prompting = True
        try:
            # SIGINT stays with the program's own handler (the prompt sees
            # Ctrl-C as a key anyway); unexpected loop errors are not turned
            # into "Press ENTER to continue" dialogs.
            text = await self._session.prompt_async(
                handle_sigint=False, set_exception_handler=False
            )
        except EOFError:
            self.close()
            return None
        except KeyboardInterrupt:
            self._left = self._session.default_buffer.text
            self.close()
            if self._on_interrupt is not None:
                self._on_interrupt()
            return None
        except asyncio.CancelledError:  # no more reading
            self.close()
            raise
        finally:
            self._prompting = False
        first, *rest = pasted_lines(text)
        self._pasted.extend(rest)
        return first

    def unsent(self) -> list[str]:
        typed = self._session.default_buffer.text if self._prompting else self._left
        return [*self._pasted, *([typed] if typed else [])]

    def close(self) -> None:
        """Give the terminal back its own mode."""
        self._raw.close()
        self._raw_mode_held = False


class PromptInput(Vt100Input):
    """Standard input for the prompt, left raw while a line prints above it.

    ``patch_stdout`` prints through ``run_in_terminal``, which puts the
    terminal in cooked mode for the moment of the print: a key typed then
    went to the terminal driver, echoed over the screen, Ctrl-D swallowed.
    Printing needs no cooked input, so the mode is left alone.
    """

    def cooked_mode(self) -> AbstractContextManager[None]:
        return nullcontext()


@contextmanager
def interactive(
    color: bool, on_interrupt: Callable[[], None]
) -> Iterator[tuple[PromptLines, Printer]]:
    """A prompt on the terminal, and a printer whose lines never garble it.

    Everything, the prompt included, goes to standard error as the
    reference's lines do; standard output stays unused. Ctrl-C at the
    prompt calls ``on_interrupt``.
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
        session: PromptSession[str] = PromptSession(
            PROMPT, erase_when_done=True, input=PromptInput(sys.stdin)
        )
        lines = PromptLines(session, on_interrupt, hold_raw_mode=True)
        try:
            yield lines, Printer(sys.stderr, color=color)
        finally:
            lines.close()


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


class Interrupted(Exception):
    """The user asked to stop (a key, a signal) before what was awaited was done."""


async def unless_stopped(awaitable: Awaitable[T], stops: Sequence[asyncio.Event]) -> T:
    """``await awaitable``, or cancel it and raise ``Interrupted`` once any of ``stops`` is set."""
    task = asyncio.ensure_future(awaitable)
    waiting = [asyncio.create_task(stop.wait()) for stop in stops]
    await asyncio.wait({task, *waiting}, return_when=asyncio.FIRST_COMPLETED)
    for wait in waiting:
        wait.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Interrupted
    return task.result()
