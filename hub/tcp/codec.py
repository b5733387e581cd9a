"""The hub's raw-TCP streaming protocol, sans-I/O: bytes in, events out, bytes to send.

``docs/protocol.md`` is the specification; this module is its reference
implementation, and the tests hold it to the doc's byte layouts. Nothing here
touches a socket, an event loop, a thread or a clock: the asyncio server and
the client are thin shims around one :class:`Connection` per socket
(python-websockets' and h11's design), which is what lets the tests drive a
whole session with byte literals and lets a fuzzer throw arbitrary bytes at
the parser.

How a shim uses it::

    conn = Connection(Role.SERVER)
    # bytes from the socket (b"" at EOF):
    conn.receive_data(data)
    for event in conn.events():
        ...                                  # Hello, Play, ConnectionClosed, ...
        if isinstance(event, Ping):          # keepalive is the shim's to answer
            transport.write(conn.send(Pong(event.nonce)))
    transport.write(conn.send(Welcome(...))) # validated against the state
    if conn.state is State.ERROR:            # the peer broke the protocol
        transport.write(conn.error_frame())
        transport.close()

Fan-out encodes once: ``prepared = prepare(Audio(stream, seq, packet))`` makes
the frame's bytes a single time and ``conn.send(prepared)`` only checks the
state and returns those same bytes, for each of a thousand listeners.

The rules that change a connection's state are all in one table,
``_RULES`` (section "State machine"): one for each frame and one for each way
a connection ends without one (EOF, a violation). :meth:`Connection._check`
reads it and :meth:`Connection._commit` applies it; nothing else moves the
state.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Final, Self

# ---------------------------------------------------------------------------
# Limits. Every default is a bound on what a peer can make us hold in memory;
# each says why it is the size it is.
# ---------------------------------------------------------------------------

#: The protocol version this module speaks. HELLO's first field in every
#: version, present and future, so any server can refuse any client cleanly.
PROTOCOL_VERSION: Final = 1

#: Bytes before a frame's body: its length, a big-endian u32.
HEADER_SIZE: Final = 4

#: Default largest frame body (type byte + payload) a peer accepts, and the
#: largest a server ever sends (clients must accept it). 64 KiB carries any
#: Opus packet RFC 6716 allows without padding (48 frames x 1275 bytes = 61,200)
#: and a LIST_RESULT page of at least 125 tracks, while a thousand connections
#: each stuck holding a partial frame cost at most 64 MiB.
DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024

#: The smallest limit a server may announce. The largest HELLO (a 4 KiB token)
#: and an AUDIO frame with libopus' largest 120 ms packet (6 x 1275 bytes) both
#: fit in 8 KiB, so no configuration can make a legal client unable to talk.
MIN_MAX_FRAME_SIZE: Final = 8 * 1024

#: Default idle timeout a server announces in WELCOME: a peer that sends nothing
#: for this long is closed (error ``timeout``). Clients PING after a third of it
#: without sending, so a dead peer is found within a minute and consumer NATs,
#: some of which forget idle TCP mappings after a few minutes, stay open.
DEFAULT_IDLE_TIMEOUT_MS: Final = 60_000

#: Names (client, server, user, session id, room): room for a device id or a
#: login name with some to spare; they show up in logs and on screens.
MAX_NAME_BYTES: Final = 64
#: A JWT from the chat Login is a few hundred bytes; 4 KiB is the common HTTP
#: header-line limit and leaves room for longer claims.
MAX_TOKEN_BYTES: Final = 4096
#: Track titles come from file tags and names; longer ones are cut by the
#: server (see :func:`fit_text`), so a page of the list stays large.
MAX_TITLE_BYTES: Final = 512
#: An error's text is for a person to read, never a traceback.
MAX_ERROR_TEXT_BYTES: Final = 1024

#: Version 1 audio: Opus at 48 kHz, mono.
SAMPLE_RATE: Final = 48_000
CHANNELS: Final = 1
#: The packet durations Opus can produce, in microseconds (2.5 ms to 120 ms).
OPUS_FRAME_DURATIONS_US: Final = frozenset(
    {2_500, 5_000, 10_000, 20_000, 40_000, 60_000, 80_000, 100_000, 120_000}
)

#: A u32 field's value for "none" (track id) or "unknown" (duration).
NONE_U32: Final = 0xFFFF_FFFF

_U16_MAX: Final = 0xFFFF
_U32_MAX: Final = 0xFFFF_FFFF
_U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF

_LENGTH = struct.Struct("!I")
_HEAD = struct.Struct("!IB")  # length, type
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_U32_U32 = struct.Struct("!II")
_FORMAT = struct.Struct("!IBI")  # sample rate, channels, frame duration (us)


# ---------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------


class FrameType(enum.IntEnum):
    """The type byte of a frame. Grouped by topic; see the doc's table."""

    HELLO = 0x01
    WELCOME = 0x02
    ERROR = 0x03
    PING = 0x04
    PONG = 0x05
    LIST = 0x10
    LIST_RESULT = 0x11
    PLAY = 0x12
    STOP = 0x13
    STREAM_START = 0x20
    AUDIO = 0x21
    STREAM_END = 0x22
    JOIN = 0x30
    LEAVE = 0x31
    JOINED = 0x32
    LEFT = 0x33
    PUBLISH_START = 0x40
    PUBLISH_END = 0x41


class ErrorCode(enum.IntEnum):
    """The code in an ERROR frame. 0x0_: protocol violations (always fatal);
    0x1_: a refused request (fatal only where the doc says); 0x2_: reasons the
    server ends a connection (always fatal)."""

    BAD_FRAME = 0x01
    FRAME_TOO_LARGE = 0x02
    UNSUPPORTED_VERSION = 0x03
    BAD_STATE = 0x04
    UNAUTHENTICATED = 0x10
    FORBIDDEN = 0x11
    NOT_FOUND = 0x12
    INVALID_ARGUMENT = 0x13
    RATE_LIMITED = 0x14
    UNAVAILABLE = 0x15
    INTERNAL = 0x16
    SLOW = 0x20
    TIMEOUT = 0x21
    SHUTDOWN = 0x22

    @property
    def always_fatal(self) -> bool:
        return self < 0x10 or self >= 0x20

    @property
    def label(self) -> str:
        """The code's name in the doc, e.g. ``bad_frame``."""
        return self.name.lower()


class StreamEndReason(enum.IntEnum):
    FINISHED = 0  # the track or the room's audio reached its end
    STOPPED = 1  # STOP, LEAVE, or the room's audio was stopped
    SWITCHED = 2  # replaced by another stream (PLAY or JOIN)
    ERROR = 3  # the server could not go on (e.g. an undecodable file)


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    @property
    def peer(self) -> Role:
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class State(enum.Enum):
    """A connection's phase; the same on both ends once frames in flight land."""

    AWAITING_HELLO = "awaiting_hello"
    AWAITING_WELCOME = "awaiting_welcome"
    READY = "ready"
    CLOSED = "closed"  # EOF, or a fatal ERROR sent or received
    ERROR = "error"  # the peer broke the protocol: send error_frame(), close


# ---------------------------------------------------------------------------
# Exceptions
# ---------------------------------------------------------------------------


class ProtocolError(Exception):
    """Root of every error this module reports. ``code`` is what the ERROR
    frame for it carries; ``message`` is safe to show to the peer."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.label}, {self.message!r})"


class LocalProtocolError(ProtocolError):
    """We tried to break the protocol: a bad field value, or a message that is
    not legal for our role in the current state. Nothing was sent and the
    connection is unchanged, so the two ends still agree."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol. Never raised out of ``receive_data``:
    recorded as ``Connection.error`` and reported as a ProtocolViolation event.

    ``request`` is the type of the offending frame when it is a known type; the
    ERROR frame reporting the violation carries it.
    """

    def __init__(self, code: ErrorCode, message: str, request: FrameType | None = None) -> None:
        super().__init__(code, message)
        self.request = request


# ---------------------------------------------------------------------------
# Field checks, shared by constructors (LocalProtocolError) and the decoder,
# which turns their complaint into a RemoteProtocolError(bad_frame).
# ---------------------------------------------------------------------------


def _bad(message: str) -> LocalProtocolError:
    return LocalProtocolError(ErrorCode.BAD_FRAME, message)


def _check_int(name: str, value: int, maximum: int, minimum: int = 0) -> None:
    if not minimum <= value <= maximum:
        raise _bad(f"{name} {value} is outside {minimum}..{maximum}")


def _check_text(name: str, value: str, max_bytes: int, *, min_bytes: int = 0) -> bytes:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"{name} is not encodable as UTF-8") from None
    if not min_bytes <= len(raw) <= max_bytes:
        raise _bad(f"{name} is {len(raw)} bytes, allowed {min_bytes}..{max_bytes}")
    return raw


def _check_format(sample_rate: int, channels: int, frame_duration_us: int) -> None:
    if sample_rate != SAMPLE_RATE or channels != CHANNELS:
        raise _bad(f"version 1 audio is {SAMPLE_RATE} Hz mono, not {sample_rate} Hz x{channels}")
    if frame_duration_us not in OPUS_FRAME_DURATIONS_US:
        raise _bad(f"{frame_duration_us} us is not an Opus frame duration")


def _text(raw: bytes) -> bytes:
    return _U16.pack(len(raw)) + raw


def _opt_u32(value: int | None) -> int:
    return NONE_U32 if value is None else value


class _Reader:
    """Reads one frame's payload; every short read or bad value is a bad_frame.

    Bounds are checked before each unpack, so struct.error and IndexError
    cannot happen; UTF-8 is decoded strictly.
    """

    __slots__ = ("_pos", "_view")

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def _take(self, size: int) -> int:
        pos = self._pos
        if len(self._view) - pos < size:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame ends inside a field")
        self._pos = pos + size
        return pos

    def u8(self) -> int:
        return int(self._view[self._take(1)])

    def u16(self) -> int:
        value: int = _U16.unpack_from(self._view, self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack_from(self._view, self._take(4))[0]
        return value

    def opt_u32(self) -> int | None:
        value = self.u32()
        return None if value == NONE_U32 else value

    def u64(self) -> int:
        value: int = _U64.unpack_from(self._view, self._take(8))[0]
        return value

    def flag(self) -> bool:
        value = self.u8()
        if value > 1:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"flag byte {value} is not 0 or 1")
        return value == 1

    def text(self, name: str, max_bytes: int) -> str:
        size = self.u16()
        if size > max_bytes:
            raise RemoteProtocolError(
                ErrorCode.BAD_FRAME, f"{name} is {size} bytes, allowed at most {max_bytes}"
            )
        pos = self._take(size)
        try:
            return str(self._view[pos : pos + size], "utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"{name} is not UTF-8") from None

    def rest(self) -> bytes:
        pos, self._pos = self._pos, len(self._view)
        return bytes(self._view[pos:])

    def end(self) -> None:
        extra = len(self._view) - self._pos
        if extra:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"{extra} bytes after the last field")


# ---------------------------------------------------------------------------
# Messages: one frozen dataclass per frame type; fields are checked when a
# message is built, so a message that exists can always be encoded. Each class
# keeps its byte layout (``_parts`` and ``_read``) next to its fields.
# ---------------------------------------------------------------------------


class _Message:
    __slots__ = ()
    TYPE: ClassVar[FrameType]

    def _parts(self) -> tuple[bytes, ...]:
        """The payload (everything after the type byte), as pieces to join."""
        raise NotImplementedError

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        raise NotImplementedError


class _Empty(_Message):
    """A message with no payload."""

    __slots__ = ()

    def _parts(self) -> tuple[bytes, ...]:
        return ()

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls()


@dataclass(frozen=True, slots=True)
class Hello(_Message):
    """Client -> server, first frame. ``token`` is a JWT from the chat Login."""

    TYPE: ClassVar[FrameType] = FrameType.HELLO
    version: int
    client_name: str
    token: str | None = None

    def __post_init__(self) -> None:
        _check_int("version", self.version, _U16_MAX)
        _check_text("client name", self.client_name, MAX_NAME_BYTES)
        if self.token is not None:
            _check_text("token", self.token, MAX_TOKEN_BYTES, min_bytes=1)

    def _parts(self) -> tuple[bytes, ...]:
        return (
            _U16.pack(self.version),
            _text(self.client_name.encode()),
            _text((self.token or "").encode()),
        )

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        version = r.u16()
        if version != PROTOCOL_VERSION:
            # Checked before the rest: a later version may lay the rest out anew.
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"version {version} not supported (server speaks {PROTOCOL_VERSION})",
            )
        name = r.text("client name", MAX_NAME_BYTES)
        token = r.text("token", MAX_TOKEN_BYTES)
        return cls(version, name, token or None)


@dataclass(frozen=True, slots=True)
class Welcome(_Message):
    """Server -> client, the handshake's answer: the session and its limits.

    ``max_frame_size`` is the largest frame body the server accepts;
    ``user`` is the name from the token, None for an anonymous session.
    """

    TYPE: ClassVar[FrameType] = FrameType.WELCOME
    version: int
    server_name: str
    session_id: str
    user: str | None = None
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    idle_timeout_ms: int = DEFAULT_IDLE_TIMEOUT_MS

    def __post_init__(self) -> None:
        _check_int("version", self.version, _U16_MAX)
        _check_text("server name", self.server_name, MAX_NAME_BYTES)
        _check_text("session id", self.session_id, MAX_NAME_BYTES, min_bytes=1)
        if self.user is not None:
            _check_text("user", self.user, MAX_NAME_BYTES, min_bytes=1)
        _check_int("max frame size", self.max_frame_size, _U32_MAX, MIN_MAX_FRAME_SIZE)
        _check_int("idle timeout", self.idle_timeout_ms, _U32_MAX, 1)

    def _parts(self) -> tuple[bytes, ...]:
        return (
            _U16.pack(self.version),
            _U32_U32.pack(self.max_frame_size, self.idle_timeout_ms),
            _text(self.server_name.encode()),
            _text(self.session_id.encode()),
            _text((self.user or "").encode()),
        )

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        version = r.u16()
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED_VERSION, f"server answered with version {version}"
            )
        max_frame_size = r.u32()
        idle_timeout_ms = r.u32()
        server_name = r.text("server name", MAX_NAME_BYTES)
        session_id = r.text("session id", MAX_NAME_BYTES)
        user = r.text("user", MAX_NAME_BYTES)
        return cls(version, server_name, session_id, user or None, max_frame_size, idle_timeout_ms)


@dataclass(frozen=True, slots=True)
class Error(_Message):
    """Either direction. ``fatal``: the sender closes the connection after it.
    ``request``: the type of the request this refuses, None if it refuses none."""

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: ErrorCode
    text: str
    fatal: bool
    request: FrameType | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.code, ErrorCode):
            raise _bad(f"unknown error code {self.code!r}")
        if self.code.always_fatal and not self.fatal:
            raise _bad(f"error {self.code.label} is always fatal")
        if self.request is not None and not isinstance(self.request, FrameType):
            raise _bad(f"unknown frame type {self.request!r}")
        _check_text("error text", self.text, MAX_ERROR_TEXT_BYTES)

    def _parts(self) -> tuple[bytes, ...]:
        request = 0 if self.request is None else int(self.request)
        return (bytes((self.code, self.fatal, request)), _text(self.text.encode()))

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        code, fatal, request = r.u8(), r.flag(), r.u8()
        if code not in _ERROR_CODES:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unknown error code {code}")
        if request and request not in _FRAME_TYPES:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unknown frame type {request}")
        text = r.text("error text", MAX_ERROR_TEXT_BYTES)
        return cls(ErrorCode(code), text, fatal, FrameType(request) if request else None)


@dataclass(frozen=True, slots=True)
class _Nonce(_Message):
    nonce: int = 0

    def __post_init__(self) -> None:
        _check_int("nonce", self.nonce, _U64_MAX)

    def _parts(self) -> tuple[bytes, ...]:
        return (_U64.pack(self.nonce),)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class Ping(_Nonce):
    """Either direction, READY only; the peer answers PONG with the same nonce."""

    TYPE: ClassVar[FrameType] = FrameType.PING


@dataclass(frozen=True, slots=True)
class Pong(_Nonce):
    """The answer to a PING, echoing its nonce."""

    TYPE: ClassVar[FrameType] = FrameType.PONG


@dataclass(frozen=True, slots=True)
class ListTracks(_Empty):
    """Client -> server (LIST): asks for the music library."""

    TYPE: ClassVar[FrameType] = FrameType.LIST


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """One entry of LIST_RESULT. ``duration_ms`` None: unknown."""

    track_id: int
    title: str
    duration_ms: int | None = None

    def __post_init__(self) -> None:
        _check_int("track id", self.track_id, NONE_U32 - 1)
        if self.duration_ms is not None:
            _check_int("duration", self.duration_ms, NONE_U32 - 1)
        _check_text("title", self.title, MAX_TITLE_BYTES)

    @property
    def wire_size(self) -> int:
        """Bytes this entry takes in a LIST_RESULT."""
        return 10 + len(self.title.encode())


@dataclass(frozen=True, slots=True)
class ListResult(_Message):
    """Server -> client, one page of the library; ``more``: another page follows.
    Build the pages with :func:`list_result_pages`."""

    TYPE: ClassVar[FrameType] = FrameType.LIST_RESULT
    tracks: tuple[TrackInfo, ...]
    more: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.tracks, tuple):
            raise _bad("tracks must be a tuple")
        _check_int("track count", len(self.tracks), _U16_MAX)

    def _parts(self) -> tuple[bytes, ...]:
        parts = [bytes((self.more,)), _U16.pack(len(self.tracks))]
        for track in self.tracks:
            parts.append(_U32_U32.pack(track.track_id, _opt_u32(track.duration_ms)))
            parts.append(_text(track.title.encode()))
        return tuple(parts)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        more = r.flag()
        tracks = []
        for _ in range(r.u16()):
            track_id, duration = r.u32(), r.opt_u32()
            tracks.append(TrackInfo(track_id, r.text("title", MAX_TITLE_BYTES), duration))
        return cls(tuple(tracks), more)


@dataclass(frozen=True, slots=True)
class Play(_Message):
    """Client -> server: play a track (switching at once if one is playing)."""

    TYPE: ClassVar[FrameType] = FrameType.PLAY
    track_id: int

    def __post_init__(self) -> None:
        _check_int("track id", self.track_id, NONE_U32 - 1)

    def _parts(self) -> tuple[bytes, ...]:
        return (_U32.pack(self.track_id),)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.u32())


@dataclass(frozen=True, slots=True)
class Stop(_Empty):
    """Client -> server: end the track stream PLAY started (a no-op if none)."""

    TYPE: ClassVar[FrameType] = FrameType.STOP


@dataclass(frozen=True, slots=True)
class StreamStart(_Message):
    """Server -> client: a stream begins; AUDIO with this id follows.

    ``track_id`` None: not a library track (a room's live audio).
    ``duration_ms`` None: unknown (live, or a file without a length).
    """

    TYPE: ClassVar[FrameType] = FrameType.STREAM_START
    stream_id: int
    track_id: int | None
    title: str
    duration_ms: int | None = None
    frame_duration_us: int = 20_000
    sample_rate: int = SAMPLE_RATE
    channels: int = CHANNELS

    def __post_init__(self) -> None:
        _check_int("stream id", self.stream_id, _U32_MAX)
        if self.track_id is not None:
            _check_int("track id", self.track_id, NONE_U32 - 1)
        if self.duration_ms is not None:
            _check_int("duration", self.duration_ms, NONE_U32 - 1)
        _check_format(self.sample_rate, self.channels, self.frame_duration_us)
        _check_text("title", self.title, MAX_TITLE_BYTES)

    def _parts(self) -> tuple[bytes, ...]:
        return (
            _U32.pack(self.stream_id),
            _U32_U32.pack(_opt_u32(self.track_id), _opt_u32(self.duration_ms)),
            _FORMAT.pack(self.sample_rate, self.channels, self.frame_duration_us),
            _text(self.title.encode()),
        )

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        stream_id, track_id, duration = r.u32(), r.opt_u32(), r.opt_u32()
        sample_rate, channels, frame_duration = r.u32(), r.u8(), r.u32()
        title = r.text("title", MAX_TITLE_BYTES)
        return cls(stream_id, track_id, title, duration, frame_duration, sample_rate, channels)


@dataclass(frozen=True, slots=True)
class Audio(_Message):
    """Either direction: one Opus packet of the open stream (server -> client)
    or of the client's publication (client -> server).

    ``seq`` counts packets from the stream's start (so position = seq x frame
    duration) and wraps at 2**32; a listener may see gaps and a first seq > 0.
    """

    TYPE: ClassVar[FrameType] = FrameType.AUDIO
    stream_id: int
    seq: int
    packet: bytes

    def __post_init__(self) -> None:
        _check_int("stream id", self.stream_id, _U32_MAX)
        _check_int("sequence number", self.seq, _U32_MAX)
        # An Opus packet has at least its TOC byte; an empty one would decode
        # as 120 ms of concealment noise on the devices a room relays to.
        if not self.packet:
            raise _bad("an AUDIO frame carries a non-empty Opus packet")

    def _parts(self) -> tuple[bytes, ...]:
        return (_U32_U32.pack(self.stream_id, self.seq), self.packet)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        stream_id, seq = r.u32(), r.u32()
        return cls(stream_id, seq, r.rest())


@dataclass(frozen=True, slots=True)
class StreamEnd(_Message):
    """Server -> client: the stream is over; no AUDIO with its id follows."""

    TYPE: ClassVar[FrameType] = FrameType.STREAM_END
    stream_id: int
    reason: StreamEndReason

    def __post_init__(self) -> None:
        _check_int("stream id", self.stream_id, _U32_MAX)
        if not isinstance(self.reason, StreamEndReason):
            raise _bad(f"unknown stream end reason {self.reason!r}")

    def _parts(self) -> tuple[bytes, ...]:
        return (_U32.pack(self.stream_id), bytes((self.reason,)))

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        stream_id, reason = r.u32(), r.u8()
        if reason not in _END_REASONS:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unknown stream end reason {reason}")
        return cls(stream_id, StreamEndReason(reason))


@dataclass(frozen=True, slots=True)
class _RoomMessage(_Message):
    room: str

    def __post_init__(self) -> None:
        _check_text("room", self.room, MAX_NAME_BYTES, min_bytes=1)

    def _parts(self) -> tuple[bytes, ...]:
        return (_text(self.room.encode()),)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.text("room", MAX_NAME_BYTES))


@dataclass(frozen=True, slots=True)
class Join(_RoomMessage):
    """Client -> server: listen to a device room (leaving any other source)."""

    TYPE: ClassVar[FrameType] = FrameType.JOIN


@dataclass(frozen=True, slots=True)
class Leave(_Empty):
    """Client -> server: stop listening to the room (a no-op if in none)."""

    TYPE: ClassVar[FrameType] = FrameType.LEAVE


@dataclass(frozen=True, slots=True)
class Joined(_RoomMessage):
    """Server -> client: the connection now listens to ``room``."""

    TYPE: ClassVar[FrameType] = FrameType.JOINED


@dataclass(frozen=True, slots=True)
class Left(_RoomMessage):
    """Server -> client: the connection no longer listens to ``room``."""

    TYPE: ClassVar[FrameType] = FrameType.LEFT


@dataclass(frozen=True, slots=True)
class PublishStart(_Message):
    """Client -> server: AUDIO frames with ``stream_id`` (the client's choice)
    follow, for ``room``, until PUBLISH_END."""

    TYPE: ClassVar[FrameType] = FrameType.PUBLISH_START
    stream_id: int
    room: str
    title: str = ""
    frame_duration_us: int = 20_000
    sample_rate: int = SAMPLE_RATE
    channels: int = CHANNELS

    def __post_init__(self) -> None:
        _check_int("stream id", self.stream_id, _U32_MAX)
        _check_format(self.sample_rate, self.channels, self.frame_duration_us)
        _check_text("room", self.room, MAX_NAME_BYTES, min_bytes=1)
        _check_text("title", self.title, MAX_TITLE_BYTES)

    def _parts(self) -> tuple[bytes, ...]:
        return (
            _U32.pack(self.stream_id),
            _FORMAT.pack(self.sample_rate, self.channels, self.frame_duration_us),
            _text(self.room.encode()),
            _text(self.title.encode()),
        )

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        stream_id = r.u32()
        sample_rate, channels, frame_duration = r.u32(), r.u8(), r.u32()
        room = r.text("room", MAX_NAME_BYTES)
        title = r.text("title", MAX_TITLE_BYTES)
        return cls(stream_id, room, title, frame_duration, sample_rate, channels)


@dataclass(frozen=True, slots=True)
class PublishEnd(_Message):
    """Client -> server: the publication is over."""

    TYPE: ClassVar[FrameType] = FrameType.PUBLISH_END
    stream_id: int

    def __post_init__(self) -> None:
        _check_int("stream id", self.stream_id, _U32_MAX)

    def _parts(self) -> tuple[bytes, ...]:
        return (_U32.pack(self.stream_id),)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.u32())


Message = (
    Hello
    | Welcome
    | Error
    | Ping
    | Pong
    | ListTracks
    | ListResult
    | Play
    | Stop
    | StreamStart
    | Audio
    | StreamEnd
    | Join
    | Leave
    | Joined
    | Left
    | PublishStart
    | PublishEnd
)

_CLASSES: Final[Mapping[int, type[Message]]] = MappingProxyType(
    {
        cls.TYPE: cls
        for cls in (
            Hello,
            Welcome,
            Error,
            Ping,
            Pong,
            ListTracks,
            ListResult,
            Play,
            Stop,
            StreamStart,
            Audio,
            StreamEnd,
            Join,
            Leave,
            Joined,
            Left,
            PublishStart,
            PublishEnd,
        )
    }
)
_FRAME_TYPES: Final = frozenset(FrameType)
_ERROR_CODES: Final = frozenset(ErrorCode)
_END_REASONS: Final = frozenset(StreamEndReason)

# Messages that belong to a stream, and so are checked against the open one.
_STREAM_MESSAGES: Final = (StreamStart, Audio, StreamEnd, PublishStart, PublishEnd)


# ---------------------------------------------------------------------------
# Events that are not messages
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side (EOF) between frames."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol; ``Connection.error`` has the details and
    ``Connection.error_frame()`` the ERROR frame to send before closing."""

    code: ErrorCode
    text: str


Event = Message | ConnectionClosed | ProtocolViolation


# ---------------------------------------------------------------------------
# Encoding: pure functions of the message, never of a connection, so a frame
# made once can go to any number of connections.
# ---------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """The whole frame for ``message``: length, type byte, payload."""
    parts = message._parts()
    size = 1 + sum(map(len, parts))
    return b"".join((_HEAD.pack(size, message.TYPE), *parts))


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message and its frame, encoded once (see :func:`prepare`)."""

    message: Message
    data: bytes


def prepare(message: Message) -> Prepared:
    """Encode once for fan-out: ``Connection.send(prepared)`` returns
    ``prepared.data`` itself after the state checks, without re-encoding."""
    return Prepared(message, encode(message))


def decode_frame(frame_type: int, payload: memoryview | bytes) -> Message:
    """Parse one frame's payload (the bytes after the type byte).

    Raises RemoteProtocolError for an unknown type or any malformed payload;
    nothing else. The result never holds a view of ``payload``.
    """
    cls = _CLASSES.get(frame_type)
    if cls is None:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unknown frame type 0x{frame_type:02x}")
    reader = _Reader(memoryview(payload))
    try:
        message = cls._read(reader)
    except LocalProtocolError as exc:  # a field value the constructor refuses
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"{cls.TYPE.name}: {exc.message}") from None
    reader.end()
    return message


def list_result_pages(
    tracks: Sequence[TrackInfo], max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> list[ListResult]:
    """Split a library into LIST_RESULT pages that each fit ``max_frame_size``.

    Always at least one page (an empty library is one empty page); every page
    but the last has ``more`` set.
    """
    budget = max_frame_size - 4  # type byte, more flag, count
    pages: list[list[TrackInfo]] = [[]]
    used = 0
    for track in tracks:
        size = track.wire_size
        if pages[-1] and (used + size > budget or len(pages[-1]) == _U16_MAX):
            pages.append([])
            used = 0
        pages[-1].append(track)
        used += size
    return [
        ListResult(tuple(page), more=index < len(pages) - 1) for index, page in enumerate(pages)
    ]


def fit_text(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8 on a character boundary.

    Characters UTF-8 cannot carry (lone surrogates, as ``os.fsdecode`` makes
    from undecodable file names) become U+FFFD, so any file name can be a title.
    """
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raw = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text).encode("utf-8")
    return raw[:max_bytes].decode("utf-8", "ignore")


# ---------------------------------------------------------------------------
# State machine. Everything that moves a connection's state is in this table
# and in Connection._check/_commit/_end just below it, which read it.
#
# Each part of the state is moved by one side's frames only: the phase by
# HELLO (client), WELCOME (server) and fatal ERRORs; the downlink stream by the
# server's STREAM_START/STREAM_END; the uplink publication by the client's
# PUBLISH_START/PUBLISH_END. So both ends of a TCP connection, seeing the same
# frames in the same order, always agree. The endings (EOF, a violation) are
# seen by the receiving end alone, and end it: after EOF there is no peer to
# agree with, and a violation is answered with a fatal ERROR, which closes the
# peer's end too. Outcomes that depend on the other
# side (a PLAY of a missing track, a refused JOIN) are the application's
# business, answered with events; they are not codec state.
# ---------------------------------------------------------------------------


class _Slot(enum.IntEnum):
    DOWNLINK = 0  # the stream the server sends (STREAM_START..END)
    UPLINK = 1  # the publication the client sends (PUBLISH_START..END)


class _Ending(enum.Enum):
    """How the peer ends a connection without a frame: the table's key for
    what is not a frame type."""

    EOF = "eof"  # it closed its side between frames
    VIOLATION = "violation"  # it broke the protocol (a bad frame, EOF inside one)


class _Op(enum.Enum):
    OPEN = "open"  # the slot must be free; it takes the message's stream id
    CARRY = "carry"  # the slot must hold the message's stream id
    CLOSE = "close"  # the slot must hold the message's stream id; it is freed


@dataclass(frozen=True, slots=True)
class _Rule:
    # Tuples, not sets: ``in`` on a tuple of enum members compares by identity
    # first, where a set would call Enum's Python-level __hash__ on every frame.
    phases: tuple[State, ...]  # where the message is legal
    then: State | None = None  # the phase after it; None: unchanged
    slot: _Slot | None = None  # the stream slot the message belongs to
    op: _Op = _Op.CARRY  # what it does to that slot


# Enum members as module constants: ``_Op.OPEN`` costs a class attribute
# lookup on every frame, a global does not.
_OPEN, _CARRY, _CLOSE = _Op.OPEN, _Op.CARRY, _Op.CLOSE
_ANY_OPEN = (State.READY, State.AWAITING_HELLO, State.AWAITING_WELCOME)
_READY = (State.READY,)
_C, _S = Role.CLIENT, Role.SERVER
_T = FrameType
_DOWN, _UP = _Slot.DOWNLINK, _Slot.UPLINK
_EOF, _VIOLATION = _Ending.EOF, _Ending.VIOLATION
#: What a rule is for: a frame of that type, or an ending.
_Trigger = FrameType | _Ending

#: (sender, frame type or ending, is a fatal ERROR) -> rule. A key that is
#: missing means that side never sends that frame (for the receiver: bad_frame).
_RULES: Final[Mapping[tuple[Role, _Trigger, bool], _Rule]] = MappingProxyType(
    {
        # Ends without a frame, the peer's doing, from any open phase: EOF
        # between frames closes; a violation leaves ERROR (the receiver then
        # sends error_frame() and closes). The buffer goes with either.
        (_C, _EOF, False): _Rule(_ANY_OPEN, State.CLOSED),
        (_S, _EOF, False): _Rule(_ANY_OPEN, State.CLOSED),
        (_C, _VIOLATION, False): _Rule(_ANY_OPEN, State.ERROR),
        (_S, _VIOLATION, False): _Rule(_ANY_OPEN, State.ERROR),
        # Handshake: HELLO, then WELCOME or a fatal ERROR; nothing else before.
        (_C, _T.HELLO, False): _Rule((State.AWAITING_HELLO,), State.AWAITING_WELCOME),
        (_S, _T.WELCOME, False): _Rule((State.AWAITING_WELCOME,), State.READY),
        # A fatal ERROR ends the connection from any open phase, either way.
        (_C, _T.ERROR, True): _Rule(_ANY_OPEN, State.CLOSED),
        (_S, _T.ERROR, True): _Rule(_ANY_OPEN, State.CLOSED),
        (_C, _T.ERROR, False): _Rule(_READY),
        (_S, _T.ERROR, False): _Rule(_READY),
        (_C, _T.PING, False): _Rule(_READY),
        (_S, _T.PING, False): _Rule(_READY),
        (_C, _T.PONG, False): _Rule(_READY),
        (_S, _T.PONG, False): _Rule(_READY),
        # Requests and their answers: legal whenever READY.
        (_C, _T.LIST, False): _Rule(_READY),
        (_S, _T.LIST_RESULT, False): _Rule(_READY),
        (_C, _T.PLAY, False): _Rule(_READY),
        (_C, _T.STOP, False): _Rule(_READY),
        (_C, _T.JOIN, False): _Rule(_READY),
        (_C, _T.LEAVE, False): _Rule(_READY),
        (_S, _T.JOINED, False): _Rule(_READY),
        (_S, _T.LEFT, False): _Rule(_READY),
        # The downlink: at most one stream open; its AUDIO only while open.
        (_S, _T.STREAM_START, False): _Rule(_READY, slot=_DOWN, op=_OPEN),
        (_S, _T.AUDIO, False): _Rule(_READY, slot=_DOWN, op=_CARRY),
        (_S, _T.STREAM_END, False): _Rule(_READY, slot=_DOWN, op=_CLOSE),
        # The uplink: the same shape, moved by the client.
        (_C, _T.PUBLISH_START, False): _Rule(_READY, slot=_UP, op=_OPEN),
        (_C, _T.AUDIO, False): _Rule(_READY, slot=_UP, op=_CARRY),
        (_C, _T.PUBLISH_END, False): _Rule(_READY, slot=_UP, op=_CLOSE),
    }
)

#: The table split by sender, keyed by (type, fatal): what a connection reads
#: per frame (its own rules to send, its peer's to receive).
_RULES_OF: Final[Mapping[Role, Mapping[tuple[_Trigger, bool], _Rule]]] = MappingProxyType(
    {
        role: MappingProxyType({(t, f): rule for (r, t, f), rule in _RULES.items() if r is role})
        for role in Role
    }
)

#: Frame types each role may send, derived from the table.
_SENDS: Final[Mapping[Role, frozenset[FrameType]]] = MappingProxyType(
    {role: frozenset(t for (t, _) in _RULES_OF[role] if isinstance(t, FrameType)) for role in Role}
)

_FINISHED: Final = (State.CLOSED, State.ERROR)


class _Illegal(Exception):
    """Internal: why a message is illegal now; the caller makes it a Local- or
    RemoteProtocolError depending on who sent it."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class Connection:
    """One end of one TCP connection, as a state machine; no I/O.

    ``max_frame_size`` is the largest frame body this end accepts; a server
    announces it in WELCOME. A client keeps the default: servers send frames up
    to DEFAULT_MAX_FRAME_SIZE.
    """

    def __init__(self, role: Role, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if not MIN_MAX_FRAME_SIZE <= max_frame_size <= _U32_MAX:
            raise ValueError(
                f"max_frame_size must be within {MIN_MAX_FRAME_SIZE}..{_U32_MAX}, "
                f"not {max_frame_size}"
            )
        self.role: Final = role
        self.max_frame_size: Final = max_frame_size
        #: The largest frame body the peer accepts: a server's WELCOME says for
        #: the client; a client's is fixed by the protocol.
        self.peer_max_frame_size = (
            DEFAULT_MAX_FRAME_SIZE if role is Role.SERVER else MIN_MAX_FRAME_SIZE
        )
        #: The peer's violation, once there is one (state ERROR).
        self.error: RemoteProtocolError | None = None
        self._state = State.AWAITING_HELLO
        self._peer: Final = role.peer
        self._own_rules = _RULES_OF[role]
        self._peer_rules = _RULES_OF[self._peer]
        self._peer_sends = _SENDS[self._peer]
        # Open stream ids, indexed by _Slot.
        self._slots: list[int | None] = [None, None]
        # The unparsed tail: at most one incomplete frame, never more than
        # HEADER_SIZE + receive_limit bytes (an oversized length is refused as
        # soon as its header is complete).
        self._buffer = bytearray()
        self._events: deque[Event] = deque()

    def __repr__(self) -> str:
        return (
            f"<Connection {self.role.value} {self._state.value}"
            f" downlink={self.downlink_stream} uplink={self.uplink_stream}>"
        )

    @property
    def state(self) -> State:
        return self._state

    @property
    def downlink_stream(self) -> int | None:
        """The id of the server's open stream, if any."""
        return self._slots[_Slot.DOWNLINK]

    @property
    def uplink_stream(self) -> int | None:
        """The id of the client's open publication, if any."""
        return self._slots[_Slot.UPLINK]

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (at most HEADER_SIZE + receive_limit)."""
        return len(self._buffer)

    @property
    def receive_limit(self) -> int:
        """The largest frame body accepted now.

        A server takes at most MIN_MAX_FRAME_SIZE until it has sent WELCOME
        (the document's limit for HELLO): a stranger who has not said who it
        is cannot make it hold more than that. From WELCOME on, and always
        for a client, it is ``max_frame_size``.
        """
        if self.role is Role.SERVER and self._state is not State.READY:
            return MIN_MAX_FRAME_SIZE
        return self.max_frame_size

    # -- the state table, read and applied --------------------------------

    def _check(self, sender: Role, message: Message) -> _Rule:
        """The rule that makes ``message`` from ``sender`` legal now; raises
        _Illegal if there is none. Changes nothing."""
        fatal = message.fatal if isinstance(message, Error) else False
        # (Enum members hash in Python, so the role is matched by identity.)
        rules = self._own_rules if sender is self.role else self._peer_rules
        rule = rules.get((message.TYPE, fatal))
        if rule is None:
            raise _Illegal(
                ErrorCode.BAD_FRAME, f"a {sender.value} does not send {message.TYPE.name}"
            )
        if self._state not in rule.phases:
            raise _Illegal(
                ErrorCode.BAD_STATE,
                f"{message.TYPE.name} is not allowed in state {self._state.value}",
            )
        if rule.slot is not None and isinstance(message, _STREAM_MESSAGES):
            current = self._slots[rule.slot]
            if rule.op is _OPEN:
                if current is not None:
                    raise _Illegal(
                        ErrorCode.BAD_STATE,
                        f"{message.TYPE.name} while {rule.slot.name.lower()} stream "
                        f"{current} is open",
                    )
            elif current != message.stream_id:
                raise _Illegal(
                    ErrorCode.BAD_STATE,
                    f"{message.TYPE.name} for stream {message.stream_id}, but the open "
                    f"{rule.slot.name.lower()} stream is {current}",
                )
        return rule

    def _commit(self, sender: Role, rule: _Rule, message: Message | None) -> None:
        """Apply ``message``, which ``_check`` found legal under ``rule``
        (None: an ending, see :meth:`_end`)."""
        if rule.then is not None:
            self._state = rule.then
            if rule.then in _FINISHED:
                self._buffer.clear()
            elif isinstance(message, Welcome) and sender is Role.SERVER:
                self.peer_max_frame_size = message.max_frame_size
        if rule.slot is not None and rule.op is not _CARRY:
            if isinstance(message, _STREAM_MESSAGES) and rule.op is _OPEN:
                self._slots[rule.slot] = message.stream_id
            else:
                self._slots[rule.slot] = None

    # -- sending ------------------------------------------------------------

    def send(self, message: Message | Prepared) -> bytes:
        """The bytes to write for ``message``, once it is checked to be legal
        for this role in this state; the state then moves as the peer's will.

        Raises LocalProtocolError (and changes nothing) if it is not.
        """
        data = b""
        if isinstance(message, Prepared):
            data = message.data
            message = message.message
        try:
            rule = self._check(self.role, message)
        except _Illegal as exc:
            raise LocalProtocolError(exc.code, exc.text) from None
        if isinstance(message, Hello) and message.version != PROTOCOL_VERSION:
            raise LocalProtocolError(
                ErrorCode.UNSUPPORTED_VERSION, f"this codec speaks version {PROTOCOL_VERSION}"
            )
        if isinstance(message, Welcome):
            if message.version != PROTOCOL_VERSION:
                raise LocalProtocolError(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"the client speaks version {PROTOCOL_VERSION}",
                )
            if message.max_frame_size != self.max_frame_size:
                raise LocalProtocolError(
                    ErrorCode.BAD_FRAME,
                    f"WELCOME announces {message.max_frame_size} bytes but this "
                    f"connection accepts {self.max_frame_size}",
                )
        data = data or encode(message)
        if len(data) - HEADER_SIZE > self.peer_max_frame_size:
            raise LocalProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"{message.TYPE.name} frame of {len(data) - HEADER_SIZE} bytes exceeds "
                f"the peer's limit of {self.peer_max_frame_size}",
            )
        self._commit(self.role, rule, message)
        return data

    def error_frame(self) -> bytes:
        """The fatal ERROR frame reporting the peer's violation (state ERROR).

        Send it, then close: the text names the rule broken, never our internals.
        """
        if self.error is None:
            raise LocalProtocolError(ErrorCode.BAD_STATE, "no protocol violation to report")
        text = fit_text(self.error.message, MAX_ERROR_TEXT_BYTES)
        return encode(Error(self.error.code, text, fatal=True, request=self.error.request))

    # -- receiving ------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer, split anywhere; ``b""`` means EOF.

        Parsed messages, a ConnectionClosed or a ProtocolViolation become
        events. Never raises for anything the peer sent. Once the connection
        is CLOSED or in ERROR, further bytes are dropped unread.
        """
        if self._state in _FINISHED:
            return
        if not data:
            self._receive_eof()
            return
        view = memoryview(data).cast("B")
        end = len(view)
        pos = 0
        buffer = self._buffer
        if buffer:
            # Complete the frame begun in an earlier call, taking from the
            # front of ``view`` only the bytes it still needs.
            if len(buffer) < HEADER_SIZE:
                pos = min(HEADER_SIZE - len(buffer), end)
                buffer += view[:pos]
                if len(buffer) < HEADER_SIZE:
                    return
            length: int = _LENGTH.unpack_from(buffer)[0]
            if not self._length_ok(length):
                return
            take = min(HEADER_SIZE + length - len(buffer), end - pos)
            buffer += view[pos : pos + take]
            pos += take
            if len(buffer) < HEADER_SIZE + length:
                return
            frame = bytes(buffer)
            buffer.clear()
            self._receive_frame(frame[HEADER_SIZE], memoryview(frame)[HEADER_SIZE + 1 :])
        # Whole frames straight from ``view``: no copy into the buffer.
        while self._state not in _FINISHED and end - pos >= HEADER_SIZE:
            length = _LENGTH.unpack_from(view, pos)[0]
            if not self._length_ok(length):
                return
            if end - pos < HEADER_SIZE + length:
                break
            body = pos + HEADER_SIZE
            self._receive_frame(view[body], view[body + 1 : body + length])
            pos = body + length
        if self._state not in _FINISHED and pos < end:
            buffer += view[pos:]

    def _length_ok(self, length: int) -> bool:
        if length == 0:
            self._fail(RemoteProtocolError(ErrorCode.BAD_FRAME, "empty frame: no type byte"))
            return False
        limit = self.receive_limit
        if length > limit:
            self._fail(
                RemoteProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame of {length} bytes exceeds the limit of {limit}",
                )
            )
            return False
        return True

    def _receive_frame(self, frame_type: int, payload: memoryview) -> None:
        peer = self._peer
        try:
            if frame_type in _FRAME_TYPES and frame_type not in self._peer_sends:
                name = FrameType(frame_type).name
                raise RemoteProtocolError(
                    ErrorCode.BAD_FRAME, f"a {peer.value} does not send {name}"
                )
            message = decode_frame(frame_type, payload)
            try:
                rule = self._check(peer, message)
            except _Illegal as exc:
                raise RemoteProtocolError(exc.code, exc.text) from None
        except RemoteProtocolError as exc:
            if exc.request is None and frame_type in _FRAME_TYPES:
                exc.request = FrameType(frame_type)
            self._fail(exc)
            return
        self._commit(peer, rule, message)
        self._events.append(message)

    def _receive_eof(self) -> None:
        if self._buffer:
            self._fail(
                RemoteProtocolError(
                    ErrorCode.BAD_FRAME,
                    f"connection closed inside a frame ({len(self._buffer)} bytes of it received)",
                )
            )
            return
        self._end(_EOF)
        self._events.append(ConnectionClosed())

    def _fail(self, error: RemoteProtocolError) -> None:
        self.error = error
        self._end(_VIOLATION)
        self._events.append(ProtocolViolation(error.code, error.message))

    def _end(self, ending: _Ending) -> None:
        """Apply the table's rule for the peer's ``ending``. Its phases are
        the open ones, the only ones in which receive_data reads anything."""
        rule = self._peer_rules[(ending, False)]
        if self._state in rule.phases:
            self._commit(self._peer, rule, None)

    # -- events -------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None when more data is needed."""
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[Event]:
        """Take every pending event, oldest first."""
        while self._events:
            yield self._events.popleft()
