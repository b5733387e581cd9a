"""The streaming protocol (docs/protocol.md), client side: asyncio streams around the codec.

``ListenClient`` dials, says HELLO, and then runs two tasks: a reader that
feeds the socket's bytes to ``hub.tcp.codec.Connection`` and hands every
server message to ``on_event`` as soon as it is parsed (no queue between the
socket and the audio), and a keepalive that PINGs when the connection has
been quiet for a third of ``WELCOME.idle_timeout_ms``. No printing, no input,
no sound devices: the program (``clients.py_cli.listen``) decides what to show.

Answers in this protocol are ordinary messages, not numbered replies, so most
requests (``play``, ``stop``, ``join``, ``leave``) just send and return; what
comes back arrives as events. Two are awaited here because their answer is
unambiguous: ``list`` (the ``LIST_RESULT`` pages, or an ``ERROR`` for
``LIST``; the server answers requests in order) and a publication's refusal
(an ``ERROR`` for ``PUBLISH_START``). Those are not passed on as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path

from clients.py_cli.listen_audio import Microphone, file_packets
from hub.audio.opus import OpusEncoder, OpusSettings
from hub.audio.pacer import pace
from hub.clock import SystemClock
from hub.tcp import codec as proto

log = logging.getLogger(__name__)

CLIENT_NAME = "hub-listen"
# Dialling and the handshake each: a server on the network answers in
# milliseconds; ten seconds only bounds a black-holed address.
CONNECT_TIMEOUT = 10.0
# One read from the socket: a LIST_RESULT page at most, or ~400 AUDIO frames.
READ_CHUNK = 64 * 1024
_CLOSED_STATES = (proto.State.CLOSED, proto.State.ERROR)


class ListenError(Exception):
    """Root of the client's errors; the message is for a person."""


class ConnectError(ListenError):
    """Could not connect, or the server refused the HELLO."""


class ConnectionEnded(ListenError):
    """The connection is closed: nothing more can be sent."""


class RequestRefused(ListenError):
    """The server refused a request with a non-fatal ERROR."""

    def __init__(self, error: proto.Error) -> None:
        super().__init__(error_text(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over; the last event a client emits.

    ``by_us``: ``close()`` ended it. ``error``: the server's fatal ERROR, if
    it said why it closed.
    """

    reason: str
    by_us: bool = False
    error: proto.Error | None = None


Event = proto.Message | Closed
EventHandler = Callable[[Event], None]


def error_text(error: proto.Error) -> str:
    """``not_found: no track 9 ...``: the code as the doc names it, then the text."""
    return f"{error.code.label}: {error.text}" if error.text else error.code.label


def describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


class _PendingList:
    __slots__ = ("future", "tracks")

    def __init__(self, future: asyncio.Future[list[proto.TrackInfo]]) -> None:
        self.future = future
        self.tracks: list[proto.TrackInfo] = []


class ListenClient:
    """One connection to a hub's streaming door.

    ``on_event`` is called from the reader task for every server message
    except those a pending ``list``/publication consumes, PINGs (answered
    here) and fatal ERRORs (reported in the final ``Closed``). It must not
    block: it runs between two reads of the socket.
    """

    def __init__(
        self,
        on_event: EventHandler | None = None,
        *,
        name: str = CLIENT_NAME,
        token: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.on_event = on_event
        self.connect_timeout = connect_timeout
        self.name = name
        self.token = token or None
        self.codec = proto.Connection(proto.Role.CLIENT)
        self.welcome: proto.Welcome | None = None
        self.close_reason: Closed | None = None
        self.pings_sent = 0
        self._closed = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lists: deque[_PendingList] = deque()
        self._publishing: int | None = None
        self._publish_refusal: proto.Error | None = None
        self._publish_ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._syncs: dict[int, asyncio.Future[None]] = {}
        self._fatal: proto.Error | None = None
        self._last_sent = self._last_heard = self._last_ping = 0.0

    # -- connecting ------------------------------------------------------------

    async def connect(self, host: str, port: int) -> proto.Welcome:
        """Dial and shake hands; raises ConnectError with a reason for a person."""
        timeout = self.connect_timeout
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise ConnectError(
                f"cannot connect to {host}:{port}: {describe_os_error(exc)}"
            ) from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader, self._writer = reader, writer
        try:
            writer.write(
                self.codec.send(proto.Hello(proto.PROTOCOL_VERSION, self.name, self.token))
            )
            welcome, early = await asyncio.wait_for(self._handshake(), timeout)
        except (ConnectError, TimeoutError, OSError) as exc:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if isinstance(exc, ConnectError):
                raise
            what = "no answer to HELLO" if isinstance(exc, TimeoutError) else describe_os_error(exc)
            raise ConnectError(f"{host}:{port}: {what}") from exc
        self.welcome = welcome
        loop = asyncio.get_running_loop()
        self._last_sent = self._last_heard = self._last_ping = loop.time()
        interval = welcome.idle_timeout_ms / 3000
        self._tasks = [
            loop.create_task(self._read_loop(), name="listen reader"),
            loop.create_task(
                self._keepalive(interval, welcome.idle_timeout_ms / 1000), name="listen keepalive"
            ),
        ]
        for event in early:
            self._dispatch(event)
        return welcome

    async def _handshake(self) -> tuple[proto.Welcome, list[proto.Event]]:
        assert self._reader is not None and self._writer is not None
        while True:
            data = await self._reader.read(READ_CHUNK)
            self.codec.receive_data(data)
            events = list(self.codec.events())
            for i, event in enumerate(events):
                if isinstance(event, proto.Welcome):
                    return event, events[i + 1 :]
                if isinstance(event, proto.Error):
                    raise ConnectError(f"the server refused us: {error_text(event)}")
                if isinstance(event, proto.ProtocolViolation):
                    self._writer.write(self.codec.error_frame())
                    raise ConnectError(f"not a hub streaming server ({event.text})")
                if isinstance(event, proto.ConnectionClosed):
                    raise ConnectError("the server closed the connection without a WELCOME")

    # -- requests ----------------------------------------------------------------

    async def list(self) -> list[proto.TrackInfo]:
        """The server's library, asked afresh every time."""
        pending = _PendingList(asyncio.get_running_loop().create_future())
        self._lists.append(pending)
        try:
            await self._request(proto.ListTracks())
        except BaseException:
            with contextlib.suppress(ValueError):
                self._lists.remove(pending)
            raise
        return await pending.future

    async def play(self, track_id: int) -> None:
        await self._request(proto.Play(track_id))

    async def stop(self) -> None:
        await self._request(proto.Stop())

    async def join(self, room: str) -> None:
        await self._request(proto.Join(room))

    async def leave(self) -> None:
        await self._request(proto.Leave())

    async def sync(self) -> None:
        """Return once the server has answered everything sent before (a PING
        it answers in turn). Raises ConnectionEnded if the connection ends."""
        nonce = next(self._nonces)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._syncs[nonce] = future
        try:
            await self._request(proto.Ping(nonce))
            await future
        finally:
            self._syncs.pop(nonce, None)

    # -- publishing ----------------------------------------------------------------

    async def publish(
        self,
        packets: AsyncIterable[bytes],
        room: str,
        *,
        title: str = "",
        frame_seconds: float = 0.02,
        paced: bool = True,
    ) -> int:
        """PUBLISH_START, one AUDIO per packet, PUBLISH_END; the packets sent.

        ``paced``: send packet n at n x frame (a file); a microphone is paced
        by nature. Raises RequestRefused if the server refused the publication
        (after PUBLISH_END, which the protocol asks of a refused client).
        """
        if self._publishing is not None:
            raise ListenError("already publishing")
        stream_id = next(self._publish_ids)
        self._publish_refusal = None
        self._send(
            proto.PublishStart(
                stream_id,
                room,
                proto.fit_text(title, proto.MAX_TITLE_BYTES),
                frame_duration_us=round(frame_seconds * 1_000_000),
            )
        )
        self._publishing = stream_id
        sent = 0
        source = pace(packets, frame_seconds, SystemClock()) if paced else _numbered(packets)
        try:
            async with contextlib.aclosing(source):
                async for seq, packet in source:
                    if self._publish_refusal is not None:
                        break
                    self._send(proto.Audio(stream_id, seq % 2**32, packet))
                    sent += 1
                    await self._drain()
        finally:
            self._publishing = None
            if self.close_reason is None and self.codec.uplink_stream == stream_id:
                with contextlib.suppress(ListenError, OSError):
                    self._send(proto.PublishEnd(stream_id))
        # A refusal may still be on its way: the server answers in order.
        if self._publish_refusal is None:
            self._publishing = stream_id
            try:
                await self.sync()
            finally:
                self._publishing = None
        if self._publish_refusal is not None:
            raise RequestRefused(self._publish_refusal)
        return sent

    async def publish_file(
        self,
        path: str | os.PathLike[str],
        room: str,
        *,
        title: str | None = None,
        settings: OpusSettings | None = None,
    ) -> int:
        """Publish a sound file (anything soundfile reads) in real time."""
        settings = settings or OpusSettings()
        return await self.publish(
            file_packets(path, settings),
            room,
            title=Path(path).stem if title is None else title,
            frame_seconds=settings.frame_seconds,
        )

    async def publish_mic(
        self,
        room: str,
        microphone: Microphone,
        *,
        title: str = "microphone",
        settings: OpusSettings | None = None,
    ) -> int:
        """Publish an opened microphone until cancelled."""
        settings = settings or OpusSettings()

        async def packets() -> AsyncGenerator[bytes, None]:
            encoder = OpusEncoder(settings)
            async for block in microphone.frames():
                for packet in encoder.feed(block):
                    yield packet

        return await self.publish(
            packets(), room, title=title, frame_seconds=settings.frame_seconds, paced=False
        )

    # -- closing -------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection (there is no goodbye message); idempotent."""
        self._finish(Closed("closed by the client", by_us=True))
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._writer is not None:
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def wait_closed(self) -> Closed:
        await self._closed.wait()
        assert self.close_reason is not None
        return self.close_reason

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    # -- the connection's insides --------------------------------------------------------

    def _send(self, message: proto.Message) -> None:
        """Write one message now; LocalProtocolError for a message that is not
        legal (e.g. a room name over 64 bytes), ConnectionEnded once closed."""
        writer = self._writer
        if self.close_reason is not None or writer is None or writer.is_closing():
            reason = self.close_reason.reason if self.close_reason else "not connected"
            raise ConnectionEnded(reason)
        writer.write(self.codec.send(message))
        self._last_sent = asyncio.get_running_loop().time()

    async def _request(self, message: proto.Message) -> None:
        self._send(message)
        await self._drain()

    async def _drain(self) -> None:
        assert self._writer is not None
        try:
            await self._writer.drain()
        except OSError as exc:
            raise ConnectionEnded(describe_os_error(exc)) from exc

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reason = "the server closed the connection"
        try:
            while True:
                try:
                    data = await self._reader.read(READ_CHUNK)
                except OSError as exc:
                    reason = f"connection lost: {describe_os_error(exc)}"
                    break
                self._last_heard = asyncio.get_running_loop().time()
                self.codec.receive_data(data)
                for event in self.codec.events():
                    if isinstance(event, proto.ProtocolViolation):
                        reason = f"the server broke the protocol: {event.text}"
                        if self._writer is not None and not self._writer.is_closing():
                            self._writer.write(self.codec.error_frame())
                        break
                    self._dispatch(event)
                if self.codec.state in _CLOSED_STATES:
                    break
        finally:
            fatal = self._fatal
            self._finish(Closed(error_text(fatal) if fatal else reason, error=fatal))

    def _dispatch(self, event: proto.Event) -> None:
        if isinstance(event, proto.Ping):
            with contextlib.suppress(ListenError):
                self._send(proto.Pong(event.nonce))
            return
        if isinstance(event, proto.Pong):
            future = self._syncs.pop(event.nonce, None)
            if future is not None and not future.done():
                future.set_result(None)
        elif isinstance(event, proto.ListResult) and self._lists:
            pending = self._lists[0]
            pending.tracks.extend(event.tracks)
            if not event.more:
                self._lists.popleft()
                if not pending.future.done():
                    pending.future.set_result(pending.tracks)
            return
        elif isinstance(event, proto.Error):
            if event.fatal:
                self._fatal = event  # the server closes next: the Closed says why
                return
            if event.request is proto.FrameType.LIST and self._lists:
                pending = self._lists.popleft()
                if not pending.future.done():
                    pending.future.set_exception(RequestRefused(event))
                return
            if event.request is proto.FrameType.PUBLISH_START and self._publishing is not None:
                self._publish_refusal = event
                return
        elif isinstance(event, proto.ConnectionClosed | proto.ProtocolViolation):
            return  # the read loop ends on these
        self._emit(event)

    def _emit(self, event: Event) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:
            # The boundary between the connection and its user: a bug in a
            # handler must not take the connection down with it.
            log.exception("event handler failed on %s", type(event).__name__)

    async def _keepalive(self, interval: float, limit: float) -> None:
        """PING when we have sent nothing, or heard nothing, for ``interval``;
        give up on a server silent for ``limit`` seconds despite the PINGs."""
        loop = asyncio.get_running_loop()
        while self.close_reason is None:
            now = loop.time()
            if now - self._last_heard >= limit:
                self._finish(Closed(f"the server stopped answering ({limit:g} s of silence)"))
                return
            quiet_since = max(self._last_heard, self._last_ping)
            if now - self._last_sent >= interval or now - quiet_since >= interval:
                try:
                    self._send(proto.Ping(next(self._nonces)))
                except ListenError:
                    return
                self.pings_sent += 1
                self._last_ping = now
                quiet_since = now
            wake = min(self._last_sent + interval, quiet_since + interval, self._last_heard + limit)
            await asyncio.sleep(max(wake - loop.time(), 0.001))

    def _finish(self, closed: Closed) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = closed
        if self._writer is not None:
            self._writer.close()
        ended = ConnectionEnded(closed.reason)
        while self._lists:
            pending = self._lists.popleft()
            if not pending.future.done():
                pending.future.set_exception(ended)
        for future in self._syncs.values():
            if not future.done():
                future.set_exception(ended)
        self._closed.set()
        log.debug("connection closed: %s", closed.reason)
        self._emit(closed)


async def _numbered(packets: AsyncIterable[bytes]) -> AsyncGenerator[tuple[int, bytes], None]:
    seq = 0
    async for packet in packets:
        yield seq, packet
        seq += 1
