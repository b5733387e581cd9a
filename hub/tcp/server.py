"""The raw-TCP streaming front door: a thin asyncio shim over ``hub.tcp.codec``.

Bytes in go to the codec (``data_received``); the requests it parses are
handled in order by one task per connection; frames out go straight to the
transport. What a client listens to (a track, or a room) is its
``Downlink`` (``hub.tcp.downlink``); what it publishes into a room, its
``Uplink`` (``hub.tcp.uplink``). The connection owns the socket, the
handshake, the timers and the order of requests, and hands the rest to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import socket
from collections import Counter, deque
from typing import cast

from hub.addresses import host_block
from hub.audio.music import MusicFolder
from hub.clock import Timer
from hub.core.hub import Hub
from hub.core.ratelimit import TokenBucket
from hub.core.sessions import Session
from hub.errors import Code, HubError, MissingToken, NotFound, ShuttingDown
from hub.metrics import TCP, Metrics
from hub.settings import StreamSettings
from hub.tcp import codec as proto
from hub.tcp.downlink import Downlink, ms
from hub.tcp.uplink import Uplink

log = logging.getLogger(__name__)

ERROR_CODES: dict[Code, proto.ErrorCode] = {
    Code.INVALID_ARGUMENT: proto.ErrorCode.INVALID_ARGUMENT,
    Code.UNAUTHENTICATED: proto.ErrorCode.UNAUTHENTICATED,
    Code.PERMISSION_DENIED: proto.ErrorCode.FORBIDDEN,
    Code.NOT_FOUND: proto.ErrorCode.NOT_FOUND,
    Code.RESOURCE_EXHAUSTED: proto.ErrorCode.RATE_LIMITED,
    Code.FAILED_PRECONDITION: proto.ErrorCode.INVALID_ARGUMENT,
    Code.UNAVAILABLE: proto.ErrorCode.UNAVAILABLE,
}


def error_code(error: HubError) -> proto.ErrorCode:
    """The TCP door's code for ``error``: a shutdown has its own (section 9)."""
    if isinstance(error, ShuttingDown):
        return proto.ErrorCode.SHUTDOWN
    return ERROR_CODES[error.code]


# Requests waiting for the connection's handler; past this the shim stops
# reading the socket until the handler catches up (TCP then pushes back).
PAUSE_AT = 64
RESUME_AT = 16
CLOSED_STATES = (proto.State.CLOSED, proto.State.ERROR)
# LIST warms this many tracks' first second of audio: a screenful of choices,
# at a bounded cost however large the folder.
WARM_TRACKS = 64
# The kernel's send buffer adds its own lag on top of ours; 64 KiB is a few
# seconds of audio, where the default may grow to megabytes.
SOCKET_SEND_BUFFER = 64 * 1024
# How long ``StreamServer.close`` waits for clients to take their shutdown
# ERROR and hang up before it cuts the rest off: inside the app's stop budget.
CLOSE_GRACE = 1.0


# -- the server ---------------------------------------------------------------


class StreamServer:
    def __init__(
        self,
        hub: Hub,
        music: MusicFolder | None,
        settings: StreamSettings | None = None,
        *,
        name: str = "hub",
        metrics: Metrics | None = None,
    ) -> None:
        self.hub = hub
        self.music = music
        self.settings = settings or hub.settings.stream
        self.metrics = metrics or Metrics()
        self.name = name
        self.clients: set[ClientConnection] = set()
        # Open connections per peer address (settings.max_connections_per_peer).
        self.per_peer: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._no_clients = asyncio.Event()  # set whenever ``clients`` empties

    async def start(self, address: str) -> str:
        """Listen on ``host:port``; returns it with the real port."""
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self),
            host or None,
            int(port),
            reuse_address=True,
            reuse_port=self.hub.settings.reuse_port,
        )
        bound = self._server.sockets[0].getsockname()
        where = f"{host}:{bound[1]}"
        log.info("streaming on %s", where)
        return where

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        """Stop listening, send every client ERROR(shutdown), and wait up to
        ``grace`` for them to hang up; cut off whoever is left."""
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            client.fail_with(ShuttingDown())
        # (Python 3.11's Server.wait_closed does not wait for connections.)
        await self._wait_for_no_clients(grace)
        for client in list(self.clients):
            client.abort()
        await self._wait_for_no_clients(grace)
        if self._server is not None:
            await self._server.wait_closed()

    async def _wait_for_no_clients(self, timeout: float) -> None:
        if self.clients:
            self._no_clients.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._no_clients.wait()

    def admit(self, client: ClientConnection, peer: str) -> bool:
        """Count a new connection; False if its address already has its share."""
        self.clients.add(client)
        self.per_peer[peer] += 1
        return self.per_peer[peer] <= self.settings.max_connections_per_peer

    def forget(self, client: ClientConnection, peer: str) -> None:
        if client in self.clients:
            self.per_peer[peer] -= 1
            if not self.per_peer[peer]:
                del self.per_peer[peer]
        self.clients.discard(client)
        if not self.clients:
            self._no_clients.set()

    def session_id(self) -> str:
        return f"{secrets.token_hex(3)}{next(self._ids):02x}"[:16]


class ClientConnection(asyncio.Protocol):
    """One TCP client: the codec's events in, frames out, one request at a time."""

    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self.hub = server.hub
        self.settings = server.settings
        self.codec = proto.Connection(proto.Role.SERVER)
        self.id = server.session_id()
        # Every record about this client names it (hub/logs.py).
        self.log = logging.LoggerAdapter(log, {"session": self.id})
        self.skipped = 0  # audio frames skipped because this client lagged
        self._transport: asyncio.Transport | None = None
        self._requests: deque[proto.Event] = deque()
        self._wakeup = asyncio.Event()
        self._handler: asyncio.Task[None] | None = None
        self._paused = False
        self._session: Session | None = None
        self._downlink = Downlink(self, self.hub)  # what it listens to
        self._uplink = Uplink(self, self.hub, server.metrics)  # what it publishes
        self._requests_bucket = TokenBucket(
            self.settings.request_rate, self.settings.request_burst, self.hub.clock
        )
        self._heard = 0.0
        self._idle_timer: Timer | None = None
        self._handshake_timer: Timer | None = None
        self._peer = ""
        self._welcomed = False
        self._closing = False
        self._linger: Timer | None = None

    @property
    def transport(self) -> asyncio.Transport | None:
        """The client's socket, None once the connection is lost."""
        return self._transport

    # -- transport callbacks ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, as ``create_server`` gives; not checked with
        # isinstance: uvloop's transports do not derive from asyncio's classes.
        self._transport = cast(asyncio.Transport, transport)
        self.server.metrics.tcp_connected()
        self.server.metrics.stream_opened(TCP)  # closed in connection_lost, always called
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and peername:
            # An IPv6 host is counted by its /64, as the login throttle counts it.
            self._peer = host_block(str(peername[0]))
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.log = logging.LoggerAdapter(
                log, {"session": self.id, "peer": f"{peername[0]}:{peername[1]}"}
            )
        self.log.debug("%s: connected from %s", self.id, peername)
        if not self.server.admit(self, self._peer):
            # Refused before a byte is read: a host opening connections by
            # the thousand costs no handler and no parsing.
            limit = self.settings.max_connections_per_peer
            self.log.info(
                "%s: refused: more than %d connections from %s", self.id, limit, self._peer
            )
            self.fail(
                proto.ErrorCode.UNAVAILABLE,
                f"too many connections from your address (at most {limit})",
            )
            return
        clock = self.hub.clock
        self._heard = clock.monotonic()
        self._idle_timer = clock.call_later(self.settings.idle_timeout, self._check_idle)
        # Its own deadline, which bytes do not reset: the idle timer alone
        # would let a peer that drips HELLO a byte at a time stay for ever.
        self._handshake_timer = clock.call_later(
            self.settings.handshake_timeout, self._check_handshake
        )
        self._handler = asyncio.get_running_loop().create_task(
            self._serve(), name=f"tcp client {self.id}"
        )

    def data_received(self, data: bytes) -> None:
        self._heard = self.hub.clock.monotonic()
        self.codec.receive_data(data)
        self._take_events()

    def eof_received(self) -> bool:
        self.codec.receive_data(b"")
        self._take_events()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self, self._peer)
        self.server.metrics.stream_closed(TCP)
        self._transport = None
        for timer in (self._idle_timer, self._handshake_timer, self._linger):
            if timer is not None:
                timer.cancel()
        if self._handler is not None:
            self._handler.cancel()
        # Leaving the room, ending a publication and detaching from the
        # session all await the hub: do it in a task of its own.
        self.hub.spawn(self._cleanup())
        self.log.debug("%s: disconnected (%s)", self.id, exc or "closed")

    def _take_events(self) -> None:
        for event in self.codec.events():
            if isinstance(event, proto.ProtocolViolation):
                self.log.info("%s: protocol violation: %s", self.id, event.text)
                self.server.metrics.protocol_error(event.code.label)
                self.write(self.codec.error_frame())
                self._close()
                return
            if isinstance(event, proto.ConnectionClosed):
                self._close()
                return
            self._requests.append(event)
        if self._requests:
            self._wakeup.set()
        if len(self._requests) >= PAUSE_AT and not self._paused and self._transport:
            self._paused = True
            self._transport.pause_reading()

    def _check_idle(self) -> None:
        clock = self.hub.clock
        silent = clock.monotonic() - self._heard
        if silent >= self.settings.idle_timeout:
            self.fail(proto.ErrorCode.TIMEOUT, f"nothing heard for {silent:.0f} s")
        else:
            self._idle_timer = clock.call_later(
                self.settings.idle_timeout - silent, self._check_idle
            )

    def _check_handshake(self) -> None:
        if not self._welcomed:
            timeout = self.settings.handshake_timeout
            self.log.info("%s: no handshake within %g s", self.id, timeout)
            self.fail(proto.ErrorCode.TIMEOUT, f"no HELLO answered within {timeout:g} s")

    # -- sending -----------------------------------------------------------

    def send(self, message: proto.Message | proto.Prepared, *, droppable: bool = False) -> None:
        if self._transport is None or self.codec.state in CLOSED_STATES:
            return
        self.write(self.codec.send(message), droppable=droppable)

    def write(self, data: bytes, *, droppable: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._closing:
            return
        buffered = transport.get_write_buffer_size()
        if droppable and buffered > self.settings.send_high_water:
            self.skipped += 1
            self.server.metrics.audio_skipped(TCP)
            return
        if buffered > self.settings.send_buffer_max:
            self.log.warning("%s: disconnected as slow (%d bytes unsent)", self.id, buffered)
            self.server.metrics.slow_consumer(TCP)
            self.fail(proto.ErrorCode.SLOW, "too slow: the client does not keep up")
            return
        transport.write(data)

    def end_downlink(self, reason: proto.StreamEndReason) -> None:
        stream_id = self.codec.downlink_stream
        if stream_id is not None:
            self.send(proto.StreamEnd(stream_id, reason))

    def fail(
        self, code: proto.ErrorCode, text: str, request: proto.FrameType | None = None
    ) -> None:
        """End the connection with a fatal ERROR (the protocol's last word);
        ``request`` is the type of the request it refuses, if any."""
        if self._transport is None:
            return
        if self.codec.state not in CLOSED_STATES:  # legal in every open phase
            error = proto.Error(code, text, fatal=True, request=request)
            with contextlib.suppress(proto.LocalProtocolError):
                self._transport.write(self.codec.send(error))
        self._close()

    def fail_with(self, error: HubError, request: proto.FrameType | None = None) -> None:
        self.fail(error_code(error), error.message, request)

    def close(self, error: HubError | None = None) -> None:
        """The chat session behind this connection ended."""
        self.fail(proto.ErrorCode.UNAUTHENTICATED, error.message if error else "logged out")

    def _close(self) -> None:
        """Close once the frames already queued (a fatal ERROR last) are out.

        Half-close, and read on (the codec discards it) until the client
        hangs up too: closing outright while its bytes sit unread would make
        the kernel send a RST, which destroys our queued frames, the ERROR
        among them. A client that neither reads nor hangs up is cut off after
        the idle timeout.
        """
        transport = self._transport
        if transport is None or transport.is_closing() or self._closing:
            return
        self._closing = True
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the client is already gone
            transport.abort()
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        # A peer that never got WELCOME is a stranger: its slot is freed
        # within the handshake deadline, not the (longer) idle timeout.
        linger = self.settings.idle_timeout
        if not self._welcomed:
            linger = min(linger, self.settings.handshake_timeout)
        self._linger = self.hub.clock.call_later(linger, transport.abort)

    def abort(self) -> None:
        """Drop the connection now, whatever is still queued."""
        if self._transport is not None:
            self._transport.abort()

    # -- requests ------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while True:
                while not self._requests:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                event = self._requests.popleft()
                if self._paused and len(self._requests) <= RESUME_AT and self._transport:
                    self._paused = False
                    self._transport.resume_reading()
                await self._handle(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("%s: request failed", self.id)
            self.fail(proto.ErrorCode.INTERNAL, "internal error")

    async def _handle(self, event: proto.Event) -> None:
        if isinstance(event, proto.Hello):
            await self._hello(event)
            return
        if isinstance(event, proto.Audio):
            await self._uplink.packet(event)
            return
        if isinstance(event, proto.Ping):
            self.send(proto.Pong(event.nonce))
            return
        if isinstance(event, proto.Pong):
            return
        request = type(event).TYPE  # type: ignore[union-attr]
        if not self._requests_bucket.take():
            self.server.metrics.rate_limited(TCP)
            self.send(
                proto.Error(
                    proto.ErrorCode.RATE_LIMITED, "too many requests", fatal=False, request=request
                )
            )
            return
        try:
            await self._request(event)
        except HubError as error:
            self.server.metrics.refused(TCP, error)
            self.send(proto.Error(error_code(error), error.message, fatal=False, request=request))

    async def _request(self, event: proto.Event) -> None:
        if isinstance(event, proto.ListTracks):
            await self._list()
        elif isinstance(event, proto.Play):
            await self._play(event.track_id)
        elif isinstance(event, proto.Stop):
            await self._downlink.stop_track(proto.StreamEndReason.STOPPED)
        elif isinstance(event, proto.Join):
            await self._join(event.room)
        elif isinstance(event, proto.Leave):
            await self._downlink.leave(proto.StreamEndReason.STOPPED)
        elif isinstance(event, proto.PublishStart):
            await self._publish_start(event)
        elif isinstance(event, proto.PublishEnd):
            await self._uplink.end()
        elif isinstance(event, proto.Error):
            self.log.info("%s: client reports %s: %s", self.id, event.code.label, event.text)

    async def _hello(self, hello: proto.Hello) -> None:
        # Every refusal names the request it refuses: HELLO (section 4).
        refused = proto.FrameType.HELLO
        if self.server.hub.closing:
            self.fail_with(ShuttingDown(), refused)
            return
        if len(self.server.clients) > self.settings.max_connections:
            self.fail(proto.ErrorCode.UNAVAILABLE, "the server is full", refused)
            return
        user = None
        if hello.token:
            try:
                self._session = await self.hub.sessions.authenticate(hello.token)
            except HubError as error:
                self.server.metrics.refused(TCP, error)
                self.fail_with(error, refused)
                return
            self.hub.sessions.attach(self._session, self)
            user = self._session.name
        elif self.settings.require_token:
            self.server.metrics.auth_failed(TCP, MissingToken.reason)
            self.fail(proto.ErrorCode.UNAUTHENTICATED, "this server requires a token", refused)
            return
        self.send(
            proto.Welcome(
                proto.PROTOCOL_VERSION,
                self.server.name,
                self.id,
                user=proto.fit_text(user, proto.MAX_NAME_BYTES) if user else None,
                idle_timeout_ms=round(self.settings.idle_timeout * 1000),
            )
        )
        self._welcomed = self.codec.state is proto.State.READY
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.log.info(
            "%s: %r says hello%s",
            self.id,
            hello.client_name,
            f" as {self._session.id}" if self._session else "",
        )

    async def _list(self) -> None:
        music = self.server.music
        tracks = [] if music is None else await asyncio.to_thread(music.scan)
        infos = [
            proto.TrackInfo(t.id, proto.fit_text(t.title, proto.MAX_TITLE_BYTES), ms(t.duration))
            for t in tracks
        ]
        for page in proto.list_result_pages(infos, self.codec.peer_max_frame_size):
            self.send(page)
        # Whoever lists is about to play: have each track's first second
        # encoded by then (about 10 KB and a few ms of CPU a track).
        rooms = self.hub.rooms
        for track in tracks[:WARM_TRACKS]:
            rooms.encoded(track.sound).warm()

    async def _play(self, track_id: int) -> None:
        music = self.server.music
        track = None if music is None else music.get(track_id)
        if track is None and music is not None:
            # Ids outlive a connection (and a restart): one may be known to the
            # client but not yet to us, if nobody has listed since we started.
            await asyncio.to_thread(music.scan)
            track = music.get(track_id)
        if track is None:
            raise NotFound(f"no track {track_id} (send LIST for the current ids)")
        await self._downlink.play(track)

    def _check_room_access(self, room_id: str) -> None:
        if self.hub.settings.devices.requires_token(room_id) and self._session is None:
            raise MissingToken(f"room {room_id} requires a token in HELLO")

    async def _join(self, room_id: str) -> None:
        self._check_room_access(room_id)
        await self._downlink.join(await self.hub.rooms.open(room_id))

    async def _publish_start(self, start: proto.PublishStart) -> None:
        self._check_room_access(start.room)
        room = await self.hub.rooms.open(start.room)
        title = start.title or (self._session.name if self._session else "live")
        await self._uplink.start(start, room, title)

    async def _cleanup(self) -> None:
        if self._handler is not None:
            # Let the cancelled handler unwind first: nothing it was doing can
            # then start a player or join a room after this has cleaned up.
            await asyncio.wait((self._handler,))
        await self._downlink.close()
        await self._uplink.end()
        if self._session is not None:
            self.hub.sessions.detach(self._session, self)
