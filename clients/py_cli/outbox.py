"""Typed lines on their way to the chat room: checked, queued, paced.

The terminal client sends what people type or pipe in. Two things the server
would otherwise do to such lines end the whole stream: refuse one (a control
character from a paste of coloured text, a line over the size bound), or cut
the stream off when lines come faster than its rate limit allows. So a line is
checked with the server's own rule (``hub.core.chat.check_message``) at a
hub's default bounds before it is queued, and refused here with a line saying
why; and lines are sent no faster than a hub's default rate limit takes them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

import grpc

from clients.py_cli.chat_client import ChatClient, StreamEnded
from clients.py_cli.rooms import RoomControl
from clients.py_cli.terminal import LineSource
from hub.clock import Clock, SystemClock
from hub.core.chat import check_message
from hub.core.ratelimit import TokenBucket
from hub.errors import InvalidArgument
from hub.lines import CLIENT, Printer
from hub.settings import ChatSettings

log = logging.getLogger(__name__)

# The bounds of a hub with default settings: lines are checked against them,
# with the server's own rule, before they are sent.
SERVER_DEFAULTS = ChatSettings()
# Pacing: the server's default rate, and half its burst. The server counts a
# line when it reads it, not when it was sent; the half of its burst left
# unused absorbs lines that arrive bunched (a busy server, a stalled
# connection: a second's worth) without a refusal.
PACE_RATE = SERVER_DEFAULTS.rate_per_second
PACE_BURST = SERVER_DEFAULTS.rate_burst / 2
# Piped lines read ahead of the sender: a huge piped file is read only as
# fast as it is sent. (Typed lines are not bounded here: the prompt must stay
# up, to read Ctrl-C, while a paste is sent; a paste is bounded by its size.)
OUTBOX_MAX = 256
# How much of a refused line its refusal shows.
PREVIEW_CHARS = 60


def refusal(text: str) -> str | None:
    """Why a hub with default settings would refuse ``text`` as a line; None if it would not.

    The server's own check (``hub.core.chat.check_message``), so that the
    client never sends what would end its stream.
    """
    try:
        check_message(text, SERVER_DEFAULTS.message_max_bytes)
    except InvalidArgument as error:
        return error.message
    return None


def preview(text: str) -> str:
    """``text``, cut short if long: for a line that says why it was not sent."""
    if len(text) <= PREVIEW_CHARS:
        return text
    return f"{text[: PREVIEW_CHARS - 1]}… ({len(text.encode('utf-8', 'surrogatepass'))} bytes)"


class Pacer:
    """Lets lines go no faster than the server's rate limit would take them."""

    def __init__(self, rate: float, burst: float, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._bucket = TokenBucket(rate, burst, self._clock)
        self._interval = 1 / rate if rate > 0 else 0.0

    async def wait(self) -> None:
        """Return when the next line may go."""
        while not self._bucket.take():
            await self._clock.sleep(self._interval)


class Typed(NamedTuple):
    text: str
    command: bool = False  # a room command (clients/py_cli/rooms.py), not a message


class Outbox:
    """Typed lines on their way to the room.

    ``take_input`` reads them as they come (so the prompt stays up while a
    paste is sent) and refuses, with a line saying why, those the server
    would refuse; ``deliver`` sends the rest in order, paced. ``unsent``
    says what never went.
    """

    def __init__(
        self, source: LineSource, printer: Printer, pacer: Pacer, *, limit: int = OUTBOX_MAX
    ) -> None:
        """``limit``: lines queued at most (0: no limit)."""
        self._source = source
        self._printer = printer
        self._pacer = pacer
        self._queue: asyncio.Queue[Typed | None] = asyncio.Queue(limit)
        self._sending: Typed | None = None  # taken from the queue, not yet sent
        self._queuing: Typed | None = None  # read, waiting for room in the queue
        self.input_ended = asyncio.Event()

    async def take_input(self) -> None:
        """Queue every line read until the end of input, then the end."""
        while (text := await self._source.read()) is not None:
            typed = self._triage(text)
            if typed is not None:
                self._queuing = typed
                await self._queue.put(typed)
                self._queuing = None
        self.input_ended.set()
        await self._queue.put(None)

    def _triage(self, text: str) -> Typed | None:
        if RoomControl.command(text):
            return Typed(text, command=True)
        if text.startswith("//") and RoomControl.command(text[1:]):
            text = text[1:]  # ``//watch`` sends ``/watch`` as a message
        reason = refusal(text)
        if reason is None:
            return Typed(text)
        self._printer.line(CLIENT, f"not sent ({reason}): {preview(text)}")
        return None

    async def deliver(self, client: ChatClient, rooms: RoomControl) -> bool:
        """Send the queued lines in order.

        True once the end of input is reached, False if the stream is gone.
        """
        while (typed := await self._queue.get()) is not None:
            self._sending = typed
            if typed.command:
                await rooms.run(typed.text)
            else:
                await self._pacer.wait()
                try:
                    await client.send(typed.text)
                except (StreamEnded, grpc.RpcError, asyncio.InvalidStateError) as error:
                    # The stream has ended; the receiver reports why.
                    log.debug("failed to send message: %s", error)
                    return False
            self._sending = None
        return True

    def unsent(self) -> list[str]:
        """The messages typed but not sent, in order; takes them (for the way out)."""
        typed = [self._sending]
        while not self._queue.empty():
            typed.append(self._queue.get_nowait())
        typed.append(self._queuing)
        self._sending = self._queuing = None
        messages = [t.text for t in typed if t is not None and not t.command]
        return messages + self._source.unsent()
