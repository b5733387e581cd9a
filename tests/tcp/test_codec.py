"""The TCP codec, bytes against docs/protocol.md: layouts, the state table, the
parser's promises (any split, bounded buffer, no stray exceptions)."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.tcp import codec
from hub.tcp.codec import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MAX_ERROR_TEXT_BYTES,
    MAX_NAME_BYTES,
    MAX_TITLE_BYTES,
    MAX_TOKEN_BYTES,
    MIN_MAX_FRAME_SIZE,
    OPUS_FRAME_DURATIONS_US,
    PROTOCOL_VERSION,
    Audio,
    Connection,
    ConnectionClosed,
    Error,
    ErrorCode,
    Event,
    FrameType,
    Hello,
    Join,
    Joined,
    Leave,
    Left,
    ListResult,
    ListTracks,
    LocalProtocolError,
    Message,
    Ping,
    Play,
    Pong,
    ProtocolViolation,
    PublishEnd,
    PublishStart,
    RemoteProtocolError,
    Role,
    State,
    Stop,
    StreamEnd,
    StreamEndReason,
    StreamStart,
    TrackInfo,
    Welcome,
    decode_frame,
    encode,
    fit_text,
    list_result_pages,
    prepare,
)

# Hypothesis: enough examples to find the edge cases, few enough to stay fast.
FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SILENCE = bytes.fromhex("f8fffe")  # one 20 ms Opus packet of silence


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# ---------------------------------------------------------------------------
# A fake link between two Connections (h11's tests/helpers.py)
# ---------------------------------------------------------------------------


@dataclass
class Link:
    client: Connection = field(default_factory=lambda: Connection(Role.CLIENT))
    server: Connection = field(default_factory=lambda: Connection(Role.SERVER))
    wire: list[tuple[Role, bytes]] = field(default_factory=list)

    def _pass(self, sender: Connection, receiver: Connection, *messages: Message) -> list[Event]:
        for message in messages:
            data = sender.send(message)
            self.wire.append((sender.role, data))
            receiver.receive_data(data)
        return list(receiver.events())

    def c2s(self, *messages: Message) -> list[Event]:
        """Send from the client; what the server gets."""
        return self._pass(self.client, self.server, *messages)

    def s2c(self, *messages: Message) -> list[Event]:
        """Send from the server; what the client gets."""
        return self._pass(self.server, self.client, *messages)

    def handshake(self) -> Link:
        assert self.c2s(Hello(1, "demo")) == [Hello(1, "demo")]
        assert self.s2c(Welcome(1, "hub", "c7")) == [Welcome(1, "hub", "c7")]
        assert self.client.state is self.server.state is State.READY
        return self


def ready(role: Role, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> Connection:
    """A connection of ``role`` past the handshake."""
    link = Link(
        Connection(Role.CLIENT, max_frame_size=max_frame_size),
        Connection(Role.SERVER, max_frame_size=max_frame_size),
    )
    link.c2s(Hello(1, "t"))
    link.s2c(Welcome(1, "hub", "s", None, max_frame_size))
    return link.client if role is Role.CLIENT else link.server


def feed(conn: Connection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return list(conn.events())


def violation(conn: Connection, data: bytes) -> ProtocolViolation:
    events = feed(conn, data)
    assert isinstance(events[-1], ProtocolViolation), events
    assert conn.state is State.ERROR
    assert conn.error is not None and conn.error.code is events[-1].code
    return events[-1]


# ---------------------------------------------------------------------------
# Byte layouts: the same bytes as the doc's tables and section 9
# ---------------------------------------------------------------------------

LAYOUTS: list[tuple[Message, str]] = [
    (Hello(1, "demo"), "0000000b 01 0001 0004 64656d6f 0000"),
    (Hello(1, "demo", "abc"), "0000000e 01 0001 0004 64656d6f 0003 616263"),
    (
        Welcome(1, "hub", "c7"),
        "00000016 02 0001 00010000 0000ea60 0003 687562 0002 6337 0000",
    ),
    (
        Welcome(1, "hub", "c7", "alice", 8192, 30_000),
        "0000001b 02 0001 00002000 00007530 0003 687562 0002 6337 0005 616c696365",
    ),
    (
        Error(ErrorCode.NOT_FOUND, "no track 7", False, FrameType.PLAY),
        "00000010 03 12 00 12 000a 6e6f20747261636b2037",
    ),
    (Error(ErrorCode.SHUTDOWN, "", True), "00000006 03 22 01 00 0000"),
    (Ping(1), "00000009 04 0000000000000001"),
    (Pong(2**64 - 1), "00000009 05 ffffffffffffffff"),
    (ListTracks(), "00000001 10"),
    (
        ListResult((TrackInfo(1, "Rain", 183_000), TrackInfo(2, "Live set"))),
        "00000024 11 00 0002"
        " 00000001 0002cad8 0004 5261696e"
        " 00000002 ffffffff 0008 4c69766520736574",
    ),
    (ListResult((), more=True), "00000004 11 01 0000"),
    (Play(2), "00000005 12 00000002"),
    (Stop(), "00000001 13"),
    (
        StreamStart(9, 2, "Live set"),
        "00000020 20 00000009 00000002 ffffffff 0000bb80 01 00004e20 0008 4c69766520736574",
    ),
    (
        StreamStart(10, None, "", 183_000, 60_000),
        "00000018 20 0000000a ffffffff 0002cad8 0000bb80 01 0000ea60 0000",
    ),
    (Audio(9, 0, SILENCE), "0000000c 21 00000009 00000000 f8fffe"),
    (Audio(2**32 - 1, 2**32 - 1, b"\x00"), "0000000a 21 ffffffff ffffffff 00"),
    (StreamEnd(9, StreamEndReason.SWITCHED), "00000006 22 00000009 02"),
    (StreamEnd(10, StreamEndReason.ERROR), "00000006 22 0000000a 03"),
    (Join("kitchen"), "0000000a 30 0007 6b69746368656e"),
    (Leave(), "00000001 31"),
    (Joined("kitchen"), "0000000a 32 0007 6b69746368656e"),
    (Left("kitchen"), "0000000a 33 0007 6b69746368656e"),
    (
        PublishStart(1, "kitchen", "mic"),
        "0000001c 40 00000001 0000bb80 01 00004e20 0007 6b69746368656e 0003 6d6963",
    ),
    (PublishEnd(1), "00000005 41 00000001"),
]


@pytest.mark.parametrize(("message", "hexes"), LAYOUTS, ids=lambda v: type(v).__name__)
def test_layout(message: Message, hexes: str) -> None:
    frame = h(hexes)
    assert encode(message) == frame
    assert decode_frame(frame[HEADER_SIZE], frame[HEADER_SIZE + 1 :]) == message
    assert int.from_bytes(frame[:HEADER_SIZE]) == len(frame) - HEADER_SIZE


def test_every_frame_type_has_a_layout_test() -> None:
    assert {m.TYPE for m, _ in LAYOUTS} == set(FrameType)


def test_worked_example_of_the_doc() -> None:
    """Section 9: the whole exchange, frame for frame."""
    link = Link()
    link.c2s(Hello(1, "demo"))
    link.s2c(Welcome(1, "hub", "c7"))
    link.c2s(ListTracks())
    link.s2c(ListResult((TrackInfo(1, "Rain", 183_000), TrackInfo(2, "Live set"))))
    link.c2s(Play(2))
    link.s2c(StreamStart(9, 2, "Live set"), Audio(9, 0, SILENCE))
    link.c2s(Play(1))
    link.s2c(StreamEnd(9, StreamEndReason.SWITCHED), StreamStart(10, 1, "Rain", 183_000))
    link.s2c(Audio(10, 0, SILENCE))
    link.c2s(Stop())
    link.s2c(StreamEnd(10, StreamEndReason.STOPPED))
    assert link.wire == [
        (Role.CLIENT, h("0000000b 01 0001 0004 64656d6f 0000")),
        (Role.SERVER, h("00000016 02 0001 00010000 0000ea60 0003 687562 0002 6337 0000")),
        (Role.CLIENT, h("00000001 10")),
        (
            Role.SERVER,
            h(
                "00000024 11 00 0002 00000001 0002cad8 0004 5261696e"
                " 00000002 ffffffff 0008 4c69766520736574"
            ),
        ),
        (Role.CLIENT, h("00000005 12 00000002")),
        (
            Role.SERVER,
            h("00000020 20 00000009 00000002 ffffffff 0000bb80 01 00004e20 0008 4c69766520736574"),
        ),
        (Role.SERVER, h("0000000c 21 00000009 00000000 f8fffe")),
        (Role.CLIENT, h("00000005 12 00000001")),
        (Role.SERVER, h("00000006 22 00000009 02")),
        (
            Role.SERVER,
            h("0000001c 20 0000000a 00000001 0002cad8 0000bb80 01 00004e20 0004 5261696e"),
        ),
        (Role.SERVER, h("0000000c 21 0000000a 00000000 f8fffe")),
        (Role.CLIENT, h("00000001 13")),
        (Role.SERVER, h("00000006 22 0000000a 01")),
    ]


def test_version_mismatch_gets_the_docs_error_frame() -> None:
    server = Connection(Role.SERVER)
    event = violation(server, h("0000000b 01 0002 0004 64656d6f 0000"))
    assert event.code is ErrorCode.UNSUPPORTED_VERSION
    assert server.error_frame() == h(
        "0000002f 03 03 01 01 0029"
        "76657273696f6e2032206e6f7420737570706f7274656420"
        "2873657276657220737065616b73203129"
    )


def test_hello_of_any_later_version_is_refused_before_its_layout_is_read() -> None:
    # A version 9 HELLO may lay out its fields anew: only the version is read.
    event = violation(Connection(Role.SERVER), h("00000004 01 0009 ff"))
    assert event.code is ErrorCode.UNSUPPORTED_VERSION


# ---------------------------------------------------------------------------
# Field rules: a message that exists can be encoded; the peer's bad values are
# bad_frame
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: Hello(2**16, "x"),
        lambda: Hello(1, "x" * (MAX_NAME_BYTES + 1)),
        lambda: Hello(1, "x", ""),  # no token is None, not ""
        lambda: Hello(1, "x", "t" * (MAX_TOKEN_BYTES + 1)),
        lambda: Hello(1, "\ud800"),  # a lone surrogate is not UTF-8
        lambda: Welcome(1, "hub", ""),
        lambda: Welcome(1, "hub", "s", max_frame_size=MIN_MAX_FRAME_SIZE - 1),
        lambda: Welcome(1, "hub", "s", idle_timeout_ms=0),
        lambda: Error(ErrorCode.BAD_FRAME, "", fatal=False),
        lambda: Error(ErrorCode.SLOW, "", fatal=False),
        lambda: Error(ErrorCode.INTERNAL, "x" * (MAX_ERROR_TEXT_BYTES + 1), True),
        lambda: Ping(-1),
        lambda: Ping(2**64),
        lambda: TrackInfo(2**32 - 1, "none is not an id"),
        lambda: TrackInfo(1, "é" * (MAX_TITLE_BYTES // 2 + 1)),
        lambda: Play(2**32 - 1),
        lambda: StreamStart(1, None, "", sample_rate=44_100),
        lambda: StreamStart(1, None, "", channels=2),
        lambda: StreamStart(1, None, "", frame_duration_us=15_000),
        lambda: StreamStart(2**32, None, ""),
        lambda: Audio(1, 0, b""),
        lambda: Audio(1, 2**32, SILENCE),
        lambda: Join(""),
        lambda: Join("r" * (MAX_NAME_BYTES + 1)),
        lambda: PublishStart(1, ""),
        lambda: PublishStart(1, "r", frame_duration_us=0),
    ],
)
def test_constructor_refuses_values_the_wire_cannot_carry(build: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()
    assert info.value.code is ErrorCode.BAD_FRAME


def test_error_codes_and_fatality() -> None:
    fatal = {c for c in ErrorCode if c.always_fatal}
    assert {c.label for c in fatal} == {
        "bad_frame",
        "frame_too_large",
        "unsupported_version",
        "bad_state",
        "slow",
        "timeout",
        "shutdown",
    }
    assert Error(ErrorCode.UNAUTHENTICATED, "", fatal=True).fatal  # either is fine
    assert not Error(ErrorCode.UNAUTHENTICATED, "", fatal=False).fatal


@pytest.mark.parametrize(
    ("role", "frame", "code"),
    [
        # framing
        (Role.SERVER, "00000000", ErrorCode.BAD_FRAME),
        (Role.SERVER, "00010001", ErrorCode.FRAME_TOO_LARGE),
        (Role.SERVER, "ffffffff", ErrorCode.FRAME_TOO_LARGE),
        (Role.SERVER, "00000001 7f", ErrorCode.BAD_FRAME),  # unknown type
        (Role.SERVER, "00000001 00", ErrorCode.BAD_FRAME),
        # payload too short, too long, bad text
        (Role.SERVER, "00000002 12 00", ErrorCode.BAD_FRAME),
        (Role.SERVER, "00000006 12 00000001 00", ErrorCode.BAD_FRAME),
        (Role.SERVER, "00000002 10 00", ErrorCode.BAD_FRAME),
        (Role.SERVER, "00000005 30 0002 c328", ErrorCode.BAD_FRAME),  # invalid UTF-8
        (Role.SERVER, "00000005 30 0003 6162", ErrorCode.BAD_FRAME),  # string past the end
        (Role.SERVER, "00000003 30 0000", ErrorCode.BAD_FRAME),  # empty room
        (Role.SERVER, "00000005 12 ffffffff", ErrorCode.BAD_FRAME),  # none is not a track id
        # values out of range
        (Role.SERVER, "00000006 03 99 01 00 0000", ErrorCode.BAD_FRAME),  # unknown code
        (Role.SERVER, "00000006 03 01 00 00 0000", ErrorCode.BAD_FRAME),  # always fatal
        (Role.SERVER, "00000006 03 12 02 00 0000", ErrorCode.BAD_FRAME),  # flag 2
        (Role.SERVER, "00000006 03 12 00 7f 0000", ErrorCode.BAD_FRAME),  # unknown request
        (Role.CLIENT, "00000006 22 00000001 04", ErrorCode.BAD_FRAME),  # unknown reason
        # direction
        (Role.SERVER, "00000006 22 00000001 00", ErrorCode.BAD_FRAME),  # STREAM_END to a server
        (Role.CLIENT, "00000005 12 00000001", ErrorCode.BAD_FRAME),  # PLAY to a client
        (Role.SERVER, "00000003 32 0001 72", ErrorCode.BAD_FRAME),  # JOINED to a server
        # state
        (Role.SERVER, "00000009 21 00000001 00000000", ErrorCode.BAD_FRAME),  # empty packet
        (Role.SERVER, "0000000a 21 00000001 00000000 f8", ErrorCode.BAD_STATE),  # no publish
        (Role.CLIENT, "0000000a 21 00000001 00000000 f8", ErrorCode.BAD_STATE),  # no stream
        (Role.CLIENT, "00000006 22 00000001 00", ErrorCode.BAD_STATE),
        (Role.SERVER, "00000005 41 00000001", ErrorCode.BAD_STATE),
        (Role.SERVER, "0000000b 01 0001 0004 64656d6f 0000", ErrorCode.BAD_STATE),  # 2nd HELLO
    ],
)
def test_peer_violations_in_ready(role: Role, frame: str, code: ErrorCode) -> None:
    conn = ready(role)
    event = violation(conn, h(frame))
    assert event.code is code
    # The report is a fatal ERROR the peer can decode, with no more than the rule.
    report = conn.error_frame()
    assert decode_frame(report[4], report[5:]) == Error(
        code, event.text, fatal=True, request=conn.error.request if conn.error else None
    )
    # Nothing after a violation is read or buffered.
    assert feed(conn, encode(Ping(1))) == []
    assert conn.buffered == 0


def test_error_report_names_the_offending_frame_type() -> None:
    conn = ready(Role.SERVER)
    violation(conn, encode(PublishEnd(3)))
    assert conn.error is not None and conn.error.request is FrameType.PUBLISH_END
    frame = conn.error_frame()
    assert frame[7] == FrameType.PUBLISH_END


@pytest.mark.parametrize(
    "message",
    [Play(1), ListTracks(), Ping(1), Join("r"), Error(ErrorCode.INTERNAL, "", False)],
    ids=lambda m: type(m).__name__,
)
def test_server_wants_hello_first(message: Message) -> None:
    assert violation(Connection(Role.SERVER), encode(message)).code is ErrorCode.BAD_STATE


def test_client_may_not_send_before_welcome() -> None:
    link = Link()
    link.c2s(Hello(1, "demo"))
    with pytest.raises(LocalProtocolError):
        link.client.send(Play(1))
    # ... and a server that got it anyway calls it bad_state.
    assert violation(link.server, encode(Play(1))).code is ErrorCode.BAD_STATE


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    conn = Connection(Role.SERVER, max_frame_size=MIN_MAX_FRAME_SIZE)
    assert feed(conn, b"\x00\x00") == []
    assert conn.buffered == 2
    event = violation(conn, (MIN_MAX_FRAME_SIZE + 1).to_bytes(4)[2:])
    assert event.code is ErrorCode.FRAME_TOO_LARGE
    assert conn.buffered == 0


@pytest.mark.parametrize("after_hello", [False, True])
def test_before_welcome_a_server_takes_at_most_8192_bytes(after_hello: bool) -> None:
    """Section 2: until WELCOME the limit is 8,192 bytes, whatever the server
    will announce, and a longer length is refused from its header alone."""
    conn = Connection(Role.SERVER)  # will announce 64 KiB
    if after_hello:
        assert feed(conn, encode(Hello(1, "t"))) == [Hello(1, "t")]
    assert conn.receive_limit == MIN_MAX_FRAME_SIZE
    event = violation(conn, (MIN_MAX_FRAME_SIZE + 1).to_bytes(4))
    assert event.code is ErrorCode.FRAME_TOO_LARGE
    assert conn.error is not None and conn.error.request is None
    assert conn.buffered == 0


def test_the_announced_limit_applies_from_welcome_on() -> None:
    conn = Connection(Role.SERVER)
    assert feed(conn, MIN_MAX_FRAME_SIZE.to_bytes(4)) == []  # 8,192: waits for its body
    conn = ready(Role.SERVER)
    assert conn.receive_limit == DEFAULT_MAX_FRAME_SIZE
    assert feed(conn, (MIN_MAX_FRAME_SIZE + 1).to_bytes(4)) == []  # waits for its body
    assert conn.buffered == HEADER_SIZE
    client = Connection(Role.CLIENT)  # servers may send up to 64 KiB from the start
    assert client.receive_limit == DEFAULT_MAX_FRAME_SIZE


def test_largest_frame_is_accepted_byte_by_byte() -> None:
    conn = ready(Role.SERVER, max_frame_size=MIN_MAX_FRAME_SIZE)
    frames = encode(PublishStart(5, "r")) + encode(Audio(5, 1, b"\xaa" * (MIN_MAX_FRAME_SIZE - 9)))
    events: list[Event] = []
    for i in range(len(frames)):
        events += feed(conn, frames[i : i + 1])
        assert conn.buffered <= HEADER_SIZE + MIN_MAX_FRAME_SIZE
    assert events == [PublishStart(5, "r"), Audio(5, 1, b"\xaa" * (MIN_MAX_FRAME_SIZE - 9))]
    assert conn.buffered == 0


def test_eof_between_frames_closes() -> None:
    conn = ready(Role.CLIENT)
    assert feed(conn, b"") == [ConnectionClosed()]
    assert conn.state is State.CLOSED
    assert feed(conn, encode(Ping(1))) == []  # nothing is read after EOF
    with pytest.raises(LocalProtocolError):
        conn.send(Ping(1))


def test_eof_inside_a_frame_is_a_violation() -> None:
    conn = ready(Role.CLIENT)
    assert feed(conn, encode(Ping(1))[:-1]) == []
    event = violation(conn, b"")
    assert event.code is ErrorCode.BAD_FRAME
    assert "inside a frame" in event.text


def test_only_the_table_moves_the_state() -> None:
    """The codec's rule, held: every change of a connection's state, EOF and
    violations included, is applied from the table by ``_commit``; no other
    method assigns the state (``__init__`` sets where it starts)."""
    tree = ast.parse(Path(codec.__file__).read_text(encoding="utf-8"))
    (connection,) = (
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Connection"
    )
    assigning = {
        method.name
        for method in connection.body
        if isinstance(method, ast.FunctionDef)
        for node in ast.walk(method)
        if isinstance(node, ast.Attribute | ast.Name)
        and isinstance(node.ctx, ast.Store)
        and getattr(node, "attr", getattr(node, "id", None)) == "_state"
    }
    assert assigning == {"__init__", "_commit"}


def test_frames_before_a_violation_are_still_delivered() -> None:
    conn = ready(Role.SERVER)
    events = feed(conn, encode(Ping(1)) + encode(Stop()) + h("00000001 7f") + encode(Ping(2)))
    assert events[:2] == [Ping(1), Stop()]
    assert isinstance(events[2], ProtocolViolation)
    assert len(events) == 3


# ---------------------------------------------------------------------------
# A whole session through the fake link
# ---------------------------------------------------------------------------


def test_full_session() -> None:
    link = Link().handshake()
    c2s, s2c = link.c2s, link.s2c
    tracks = (TrackInfo(1, "Rain", 183_000), TrackInfo(2, "Live set"))
    assert c2s(ListTracks()) == [ListTracks()]
    assert s2c(*list_result_pages(tracks)) == [ListResult(tracks)]

    # Play, switch, stop; the downlink follows the server's frames on both ends.
    assert c2s(Play(2)) == [Play(2)]
    s2c(StreamStart(9, 2, "Live set"), Audio(9, 0, SILENCE), Audio(9, 5, SILENCE))  # a gap
    assert link.client.downlink_stream == link.server.downlink_stream == 9
    c2s(Play(1))
    assert s2c(StreamEnd(9, StreamEndReason.SWITCHED), StreamStart(10, 1, "Rain")) == [
        StreamEnd(9, StreamEndReason.SWITCHED),
        StreamStart(10, 1, "Rain"),
    ]
    with pytest.raises(LocalProtocolError):  # stale audio of the old stream
        link.server.send(Audio(9, 6, SILENCE))
    c2s(Stop())
    s2c(StreamEnd(10, StreamEndReason.STOPPED))
    assert link.client.downlink_stream is None

    # A refusal is an event; nothing else changes.
    c2s(Play(7))
    assert s2c(Error(ErrorCode.NOT_FOUND, "no track 7", False, FrameType.PLAY)) == [
        Error(ErrorCode.NOT_FOUND, "no track 7", False, FrameType.PLAY)
    ]
    assert link.client.state is State.READY

    # A room, joined mid-stream: the first seq is the room's.
    c2s(Join("kitchen"))
    s2c(Joined("kitchen"), StreamStart(3, None, "radio"), Audio(3, 1234, SILENCE))
    # Publishing at the same time: the uplink is independent of the downlink.
    assert c2s(PublishStart(1, "kitchen", "mic"), Audio(1, 0, SILENCE)) == [
        PublishStart(1, "kitchen", "mic"),
        Audio(1, 0, SILENCE),
    ]
    assert link.server.uplink_stream == link.client.uplink_stream == 1
    c2s(PublishEnd(1), Leave())
    s2c(StreamEnd(3, StreamEndReason.STOPPED), Left("kitchen"))

    # Keepalive both ways.
    assert c2s(Ping(42)) == [Ping(42)]
    assert s2c(Pong(42), Ping(43)) == [Pong(42), Ping(43)]
    assert c2s(Pong(43)) == [Pong(43)]

    # The server ends it.
    assert s2c(Error(ErrorCode.SHUTDOWN, "bye", True)) == [Error(ErrorCode.SHUTDOWN, "bye", True)]
    assert link.server.state is link.client.state is State.CLOSED


def test_unauthenticated_hello_is_refused_with_a_fatal_error() -> None:
    link = Link()
    assert link.c2s(Hello(1, "demo", "bad.jwt")) == [Hello(1, "demo", "bad.jwt")]
    refusal = Error(ErrorCode.UNAUTHENTICATED, "invalid token", True, FrameType.HELLO)
    assert link.s2c(refusal) == [refusal]
    assert link.client.state is link.server.state is State.CLOSED


def test_welcome_sets_the_clients_send_limit() -> None:
    link = Link(server=Connection(Role.SERVER, max_frame_size=MIN_MAX_FRAME_SIZE))
    link.c2s(Hello(1, "demo"))
    with pytest.raises(LocalProtocolError):  # it must announce what it enforces
        link.server.send(Welcome(1, "hub", "s"))
    link.s2c(Welcome(1, "hub", "s", None, MIN_MAX_FRAME_SIZE))
    assert link.client.peer_max_frame_size == MIN_MAX_FRAME_SIZE
    link.c2s(PublishStart(1, "r"))
    with pytest.raises(LocalProtocolError) as info:
        link.client.send(Audio(1, 0, bytes(MIN_MAX_FRAME_SIZE)))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert link.client.uplink_stream == 1  # a refused send changes nothing


def test_prepared_frame_is_encoded_once_and_shared() -> None:
    listeners = [ready(Role.SERVER) for _ in range(3)]
    for conn in listeners:
        conn.send(StreamStart(4, None, "room"))
    prepared = prepare(Audio(4, 0, SILENCE))
    sent = [conn.send(prepared) for conn in listeners]
    assert all(data is prepared.data for data in sent)
    late = ready(Role.SERVER)  # never got STREAM_START: the check still applies
    with pytest.raises(LocalProtocolError):
        late.send(prepared)


# ---------------------------------------------------------------------------
# Local protocol errors: illegal sends raise and change nothing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "message"),
    [
        (Role.CLIENT, Play(1)),  # before HELLO
        (Role.CLIENT, Ping(1)),
        (Role.SERVER, Welcome(1, "hub", "s")),  # before HELLO arrived
        (Role.SERVER, StreamStart(1, None, "")),
        (Role.SERVER, Error(ErrorCode.NOT_FOUND, "", False)),  # non-fatal before READY
        (Role.CLIENT, Hello(2, "future")),  # this codec speaks 1
    ],
)
def test_illegal_sends_before_the_handshake(role: Role, message: Message) -> None:
    conn = Connection(role)
    with pytest.raises(LocalProtocolError):
        conn.send(message)
    assert conn.state is State.AWAITING_HELLO


@pytest.mark.parametrize(
    ("role", "message"),
    [
        (Role.CLIENT, StreamStart(1, None, "")),  # wrong direction
        (Role.CLIENT, Joined("r")),
        (Role.SERVER, Play(1)),
        (Role.SERVER, PublishStart(1, "r")),
        (Role.CLIENT, Hello(1, "again")),
        (Role.SERVER, Welcome(1, "hub", "again")),
        (Role.SERVER, Audio(1, 0, SILENCE)),  # no stream open
        (Role.SERVER, StreamEnd(1, StreamEndReason.FINISHED)),
        (Role.CLIENT, Audio(1, 0, SILENCE)),  # no publication open
        (Role.CLIENT, PublishEnd(1)),
    ],
)
def test_illegal_sends_when_ready(role: Role, message: Message) -> None:
    conn = ready(role)
    with pytest.raises(LocalProtocolError):
        conn.send(message)
    assert conn.state is State.READY
    assert conn.downlink_stream is None and conn.uplink_stream is None


def test_one_stream_at_a_time_and_only_its_own_audio() -> None:
    server = ready(Role.SERVER)
    server.send(StreamStart(1, None, ""))
    for message in (
        StreamStart(2, None, ""),
        Audio(2, 0, SILENCE),
        StreamEnd(2, StreamEndReason.FINISHED),
    ):
        with pytest.raises(LocalProtocolError) as info:
            server.send(message)
        assert info.value.code is ErrorCode.BAD_STATE
    assert server.downlink_stream == 1


def test_nothing_is_sent_after_a_fatal_error() -> None:
    conn = ready(Role.SERVER)
    conn.send(Error(ErrorCode.TIMEOUT, "idle", True))
    assert conn.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.send(Ping(1))
    with pytest.raises(LocalProtocolError):
        conn.error_frame()  # there was no violation to report


def test_invalid_max_frame_size() -> None:
    with pytest.raises(ValueError):
        Connection(Role.SERVER, max_frame_size=MIN_MAX_FRAME_SIZE - 1)


# ---------------------------------------------------------------------------
# Helpers for the server
# ---------------------------------------------------------------------------


def test_list_result_pages_fit_the_frame_size() -> None:
    tracks = [TrackInfo(i, f"track {i:05} " + "x" * 200, i * 1000) for i in range(300)]
    pages = list_result_pages(tracks, MIN_MAX_FRAME_SIZE)
    assert len(pages) > 1
    assert [t for page in pages for t in page.tracks] == tracks
    assert [p.more for p in pages] == [True] * (len(pages) - 1) + [False]
    assert all(len(encode(p)) - HEADER_SIZE <= MIN_MAX_FRAME_SIZE for p in pages)
    assert list_result_pages([]) == [ListResult(())]


def test_fit_text() -> None:
    assert fit_text("abc", 10) == "abc"
    assert fit_text("ééé", 5) == "éé"  # never half a character
    assert fit_text("a\udcff", 10) == "a\ufffd"  # an undecodable file name byte
    assert len(fit_text("x" * 1000, MAX_TITLE_BYTES).encode()) == MAX_TITLE_BYTES


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


def text(max_bytes: int, min_size: int = 0) -> st.SearchStrategy[str]:
    # <= 4 UTF-8 bytes a character; capped so examples stay quick.
    return st.text(
        st.characters(codec="utf-8"), min_size=min_size, max_size=min(max_bytes // 4, 24)
    )


u32 = st.integers(0, 2**32 - 1)
ids = st.integers(0, 2**32 - 2)
opt_ids = st.none() | ids
durations = st.sampled_from(sorted(OPUS_FRAME_DURATIONS_US))
packets = st.binary(min_size=1, max_size=300)
rooms = text(MAX_NAME_BYTES, 1)

errors = st.sampled_from(list(ErrorCode)).flatmap(
    lambda code: st.builds(
        Error,
        st.just(code),
        text(MAX_ERROR_TEXT_BYTES),
        st.just(True) if code.always_fatal else st.booleans(),
        st.none() | st.sampled_from(list(FrameType)),
    )
)
tracks = st.builds(TrackInfo, ids, text(MAX_TITLE_BYTES), opt_ids)

MESSAGES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(Hello, st.just(1), text(MAX_NAME_BYTES), st.none() | text(99, 1)),
    Welcome: st.builds(
        Welcome,
        st.just(1),
        text(MAX_NAME_BYTES),
        text(MAX_NAME_BYTES, 1),
        st.none() | text(MAX_NAME_BYTES, 1),
        st.just(DEFAULT_MAX_FRAME_SIZE) | st.integers(MIN_MAX_FRAME_SIZE, 2**32 - 1),
        st.integers(1, 2**32 - 1),
    ),
    Error: errors,
    Ping: st.builds(Ping, st.integers(0, 2**64 - 1)),
    Pong: st.builds(Pong, st.integers(0, 2**64 - 1)),
    ListTracks: st.just(ListTracks()),
    ListResult: st.builds(ListResult, st.lists(tracks, max_size=5).map(tuple), st.booleans()),
    Play: st.builds(Play, ids),
    Stop: st.just(Stop()),
    StreamStart: st.builds(StreamStart, u32, opt_ids, text(MAX_TITLE_BYTES), opt_ids, durations),
    Audio: st.builds(Audio, u32, u32, packets),
    StreamEnd: st.builds(StreamEnd, u32, st.sampled_from(list(StreamEndReason))),
    Join: st.builds(Join, rooms),
    Leave: st.just(Leave()),
    Joined: st.builds(Joined, rooms),
    Left: st.builds(Left, rooms),
    PublishStart: st.builds(PublishStart, u32, rooms, text(MAX_TITLE_BYTES), durations),
    PublishEnd: st.builds(PublishEnd, u32),
}
messages = st.one_of(*MESSAGES.values())


def test_strategies_cover_every_message() -> None:
    assert {cls.TYPE for cls in MESSAGES} == set(FrameType)


@FAST
@given(messages)
def test_encode_decode_round_trip(message: Message) -> None:
    frame = encode(message)
    assert int.from_bytes(frame[:HEADER_SIZE]) == len(frame) - HEADER_SIZE
    assert frame[HEADER_SIZE] == message.TYPE
    decoded = decode_frame(frame[HEADER_SIZE], memoryview(frame)[HEADER_SIZE + 1 :])
    assert decoded == message
    assert encode(decoded) == frame


# In READY, a stream of server -> client or client -> server messages: the
# sender's send() decides which are legal, and the receiver must accept
# exactly those, however the bytes are cut.
SERVER_SENDS = st.one_of(
    *(MESSAGES[c] for c in (ListResult, Joined, Left, Ping, Pong, StreamEnd, Error)),
    st.builds(StreamStart, st.integers(0, 3), opt_ids, text(50)),
    st.builds(Audio, st.integers(0, 3), u32, packets),
    st.builds(StreamEnd, st.integers(0, 3), st.sampled_from(list(StreamEndReason))),
)
CLIENT_SENDS = st.one_of(
    *(MESSAGES[c] for c in (ListTracks, Play, Stop, Join, Leave, Ping, Pong, Error)),
    st.builds(PublishStart, st.integers(0, 3), rooms),
    st.builds(Audio, st.integers(0, 3), u32, packets),
    st.builds(PublishEnd, st.integers(0, 3)),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given points (modulo its length); no empty pieces,
    since an empty one would mean EOF."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [piece for piece in pieces if piece]


@FAST
@given(
    st.sampled_from([Role.CLIENT, Role.SERVER]),
    st.data(),
    st.lists(st.integers(0, 10**6), max_size=30),
)
def test_any_legal_sequence_at_any_split(role: Role, data: st.DataObject, cuts: list[int]) -> None:
    sender, receiver = ready(role.peer), ready(role)
    candidates = data.draw(st.lists(SERVER_SENDS if role is Role.CLIENT else CLIENT_SENDS))
    sent: list[Message] = []
    wire = bytearray()
    for message in candidates:
        before = (sender.state, sender.downlink_stream, sender.uplink_stream)
        try:
            wire += sender.send(message)
        except LocalProtocolError:
            # Refused: nothing sent, nothing changed.
            assert (sender.state, sender.downlink_stream, sender.uplink_stream) == before
            continue
        sent.append(message)
    received: list[Event] = []
    for chunk in split(bytes(wire), cuts):
        receiver.receive_data(chunk)
        received += receiver.events()
        assert receiver.buffered <= HEADER_SIZE + receiver.max_frame_size
    assert received == sent
    assert receiver.buffered == 0
    assert receiver.state is sender.state
    assert (receiver.downlink_stream, receiver.uplink_stream) == (
        sender.downlink_stream,
        sender.uplink_stream,
    )


@FAST
@given(
    st.sampled_from([Role.CLIENT, Role.SERVER]),
    st.booleans(),
    st.binary(max_size=3000),
    st.lists(st.integers(0, 10**6), max_size=20),
    st.booleans(),
)
def test_garbage_never_escapes_and_never_piles_up(
    role: Role, handshaken: bool, garbage: bytes, cuts: list[int], eof: bool
) -> None:
    if handshaken:
        conn = ready(role, max_frame_size=MIN_MAX_FRAME_SIZE)
    else:
        conn = Connection(role, max_frame_size=MIN_MAX_FRAME_SIZE)
    chunks = split(garbage, cuts) + ([b""] if eof else [])
    events: list[Event] = []
    for chunk in chunks:
        conn.receive_data(chunk)  # must not raise
        assert conn.buffered <= HEADER_SIZE + MIN_MAX_FRAME_SIZE
        events += conn.events()
    violations = [e for e in events if isinstance(e, ProtocolViolation)]
    assert len(violations) <= 1
    if violations:
        assert events[-1] is violations[0]
        assert conn.state is State.ERROR
        assert isinstance(conn.error, RemoteProtocolError)
        frame = conn.error_frame()
        assert decode_frame(frame[4], frame[5:]) == Error(
            violations[0].code, violations[0].text, True, conn.error.request
        )
    else:
        assert conn.error is None
    if eof:
        assert conn.state in (State.CLOSED, State.ERROR)


@FAST
@given(st.data())
def test_garbage_after_valid_frames(data: st.DataObject) -> None:
    """Valid frames, then bytes flipped at random: a violation or valid events."""
    server = ready(Role.SERVER)
    frames = bytearray(b"".join(encode(m) for m in data.draw(st.lists(CLIENT_SENDS, max_size=8))))
    for index in data.draw(st.lists(st.integers(0, max(len(frames) - 1, 0)), max_size=4)):
        if frames:
            frames[index] ^= data.draw(st.integers(1, 255))
    server.receive_data(bytes(frames))
    list(server.events())
    assert server.buffered <= HEADER_SIZE + server.max_frame_size


@FAST
@given(
    st.sampled_from([Role.CLIENT, Role.SERVER]),
    st.sampled_from(["fresh", "hello", "ready"]),
    st.lists(messages, max_size=12),
)
def test_sends_are_legal_or_refused_without_a_trace(
    role: Role, start: str, batch: list[Message]
) -> None:
    """Whatever send() accepts, the peer accepts; whatever it refuses changes nothing."""
    link = Link()
    if start != "fresh":
        link.c2s(Hello(1, "x"))
    if start == "ready":
        link.s2c(Welcome(1, "hub", "s"))
    me, peer = (link.client, link.server) if role is Role.CLIENT else (link.server, link.client)
    for message in batch:
        before = repr(me)
        try:
            data = me.send(message)
        except LocalProtocolError:
            assert repr(me) == before
            continue
        events = feed(peer, data)
        assert events == [message], (message, events)


def _load_fuzz_target() -> ModuleType:
    path = Path(__file__).parents[2] / "fuzzing" / "fuzz_tcp_codec.py"
    spec = importlib.util.spec_from_file_location("fuzz_tcp_codec", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ = _load_fuzz_target()


@FAST
@given(st.binary(max_size=2000))
def test_fuzz_target_under_hypothesis(data: bytes) -> None:
    FUZZ.TestOneInput(data)


@FAST
@given(st.integers(0, 15), st.integers(0, 255), st.lists(messages, max_size=6))
def test_fuzz_target_on_valid_frames(flags: int, chunk: int, batch: list[Message]) -> None:
    """Seeds the fuzz target with well-formed frames, to reach the deep paths."""
    FUZZ.TestOneInput(bytes((flags, chunk)) + b"".join(encode(m) for m in batch))


def test_protocol_version_is_1() -> None:
    assert PROTOCOL_VERSION == 1
