"""A small asyncio test client for the raw-TCP streaming protocol.

The protocol engine is the reference codec, ``Connection(Role.CLIENT)``: every
frame the server sends is checked against docs/protocol.md as it arrives (a
violation shows up as a ``ProtocolViolation`` event, which tests assert never
comes). ``send_raw`` bypasses the codec, to send what a correct client never
would. Every received event wakes ``wait_for`` waiters: nothing here sleeps to
synchronise; each wait has a timeout that is only a sanity bound, scaled by
``HUB_TEST_TIMEOUT_FACTOR``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from waiting import Changes

from hub.tcp.codec import (
    PROTOCOL_VERSION,
    Audio,
    Connection,
    ConnectionClosed,
    Error,
    ErrorCode,
    Event,
    FrameType,
    Hello,
    Message,
    ProtocolViolation,
    Role,
    StreamEnd,
    StreamStart,
    Welcome,
)

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Received:
    time: float  # time.monotonic() at arrival
    event: Event


class RawClient(asyncio.Protocol):
    """One TCP connection to a StreamServer: ``await RawClient.connect(address)``."""

    def __init__(self, name: str = "test") -> None:
        self.name = name
        self.codec = Connection(Role.CLIENT)
        self.received: list[Received] = []
        self.cursor = 0  # index of the next event ``next`` returns
        self.eof = False  # the server closed its side cleanly (FIN)
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.welcome: Welcome | None = None
        self.transport: asyncio.Transport | None = None
        self._changes = Changes()

    def __repr__(self) -> str:
        return f"RawClient({self.name!r} {self.codec.state.value})"

    # -- connecting ----------------------------------------------------------

    @classmethod
    async def connect(
        cls, address: str, *, name: str = "test", receive_buffer: int | None = None
    ) -> RawClient:
        """Connect; ``receive_buffer`` sets SO_RCVBUF before connecting (a small
        window, so that a client that stops reading pushes back quickly)."""
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if receive_buffer is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, int(port)))
        except BaseException:
            sock.close()
            raise
        client = cls(name)
        await loop.create_connection(lambda: client, sock=sock)
        return client

    async def hello(self, token: str | None = None, timeout: float = 5.0) -> Welcome:
        """HELLO, then the WELCOME that must answer it."""
        self.send(Hello(PROTOCOL_VERSION, self.name, token))
        welcome = await self.next(Welcome, timeout=timeout)
        self.welcome = welcome
        return welcome

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.codec.receive_data(data)
        self._take()

    def eof_received(self) -> bool:
        self.eof = True
        self.codec.receive_data(b"")
        self._take()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        self._notify()

    def _take(self) -> None:
        now = time.monotonic()
        for event in self.codec.events():
            self.received.append(Received(now, event))
        self._notify()

    def _notify(self) -> None:
        self._changes.notify()

    # -- sending ---------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Send ``message`` through the codec (which refuses illegal ones)."""
        assert self.transport is not None
        self.transport.write(self.codec.send(message))

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are: garbage, partial frames, other versions."""
        assert self.transport is not None
        self.transport.write(data)

    # -- ending ----------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def write_eof(self) -> None:
        """Half-close: FIN, but keep reading."""
        assert self.transport is not None
        self.transport.write_eof()

    def reset(self) -> None:
        """Vanish with a RST (SO_LINGER 0), as a crashed peer does."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def pause(self) -> None:
        """Stop reading: the kernel buffers fill, then the server's."""
        assert self.transport is not None
        self.transport.pause_reading()

    def resume(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    @property
    def closed(self) -> bool:
        return self.lost.done()

    # -- waiting ---------------------------------------------------------------

    async def wait_for(
        self, predicate: Callable[[], object], timeout: float = 5.0, what: str = ""
    ) -> None:
        """Until ``predicate()`` holds, re-checked on every event received."""
        await self._changes.wait_for(
            predicate,
            timeout,
            lambda: (
                f"{self!r}: timed out waiting for {what or predicate!r}; "
                f"last events: {self.events[-5:]}"
            ),
        )

    async def next(self, kind: type[E], timeout: float = 5.0) -> E:
        """The next event not yet taken, which must be a ``kind``."""
        await self.wait_for(
            lambda: self.cursor < len(self.received) or self.closed,
            timeout,
            f"a {kind.__name__}",
        )
        if self.cursor >= len(self.received):
            raise AssertionError(f"{self!r}: closed while waiting for a {kind.__name__}")
        event = self.received[self.cursor].event
        self.cursor += 1
        assert isinstance(event, kind), f"{self!r}: expected a {kind.__name__}, got {event!r}"
        return event

    async def skip_to(self, kind: type[E], timeout: float = 5.0) -> E:
        """The next ``kind`` event, passing over any others before it."""

        def found() -> bool:
            while self.cursor < len(self.received):
                if isinstance(self.received[self.cursor].event, kind):
                    return True
                self.cursor += 1
            return self.closed

        await self.wait_for(found, timeout, f"a {kind.__name__}")
        return await self.next(kind, timeout)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Until the connection is gone (both sides)."""
        await self.wait_for(lambda: self.closed, timeout, "the connection to close")

    async def fatal_error(self, timeout: float = 5.0) -> Error:
        """Until the server's fatal ERROR, then its EOF; that ERROR."""
        await self.wait_for(lambda: self.closed, timeout, "a fatal ERROR and the close")
        errors = self.errors()
        assert errors, f"{self!r}: closed without an ERROR; events: {self.events[-5:]}"
        error = errors[-1]
        assert error.fatal, error
        assert isinstance(self.events[-1], Error | ConnectionClosed), self.events[-3:]
        return error

    # -- what was received -------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        return [r.event for r in self.received]

    def of(self, kind: type[E]) -> list[E]:
        return [r.event for r in self.received if isinstance(r.event, kind)]

    def errors(self, code: ErrorCode | None = None) -> list[Error]:
        return [e for e in self.of(Error) if code is None or e.code is code]

    def audio(self, stream_id: int) -> list[Audio]:
        return [a for a in self.of(Audio) if a.stream_id == stream_id]

    def starts(self) -> list[StreamStart]:
        return self.of(StreamStart)

    def ends(self, stream_id: int | None = None) -> list[StreamEnd]:
        return [e for e in self.of(StreamEnd) if stream_id is None or e.stream_id == stream_id]

    def ended(self, stream_id: int) -> bool:
        return bool(self.ends(stream_id))

    def violations(self) -> list[ProtocolViolation]:
        return self.of(ProtocolViolation)

    def check(self) -> None:
        """Fail if the server ever broke the protocol towards this client."""
        assert not self.violations(), f"{self!r}: {self.violations()} ({self.codec.error})"


def refused(error: Error, code: ErrorCode, request: FrameType | None = None) -> bool:
    """Whether ``error`` is a non-fatal refusal ``code`` of ``request``."""
    return error.code is code and not error.fatal and (request is None or error.request is request)


def contiguous(packets: Sequence[Audio]) -> bool:
    """Whether sequence numbers go 0, 1, 2, ... with no gap and no repeat."""
    return [p.seq for p in packets] == list(range(len(packets)))


async def publish_paced(client: RawClient, stream_id: int, packets: list[bytes]) -> None:
    """Send like a microphone: packet n at n x 20 ms."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    for seq, packet in enumerate(packets):
        delay = began + seq * 0.02 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # real-time pacing, not synchronisation
        client.send(Audio(stream_id, seq, packet))
