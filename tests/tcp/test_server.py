"""The TCP streaming server over real loopback sockets, held to docs/protocol.md.

Clients are ``RawClient``s (the reference codec as their protocol engine, so
every frame the server sends is checked against the state table); devices are
``StockDevice``s. Waits are on frames, with timeouts that are only sanity
bounds; the server's internals (clients, subscribers, tasks) are polled only
where no frame tells.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from chat_helpers import eventually
from cli_helpers import HUB, Proc
from fake_clock import FakeClock
from raw_client import RawClient, contiguous, publish_paced, refused
from tcp_helpers import (
    ALPHA,
    BRAVO,
    CHARLIE,
    DELTA,
    TRACKS,
    Connect,
    NewDevice,
    Serve,
    Served,
    connection_of,
    list_tracks,
    music_tone,
    noise_sound,
    write_tone,
)
from waiting import scaled

from hub.audio.library import SoundLibrary
from hub.audio.opus import OpusSettings, encode_blocks
from hub.audio.sources import FileSound
from hub.audio.testing import best_correlation, decode_packets, read_all
from hub.core.broker import MemoryBroker
from hub.core.events import LeaveReason
from hub.core.rooms import audio_channel
from hub.core.roomstate import Input
from hub.settings import DeviceSettings, StreamSettings
from hub.tcp.codec import (
    PROTOCOL_VERSION,
    Audio,
    Error,
    ErrorCode,
    FrameType,
    Hello,
    Join,
    Joined,
    Leave,
    Left,
    ListResult,
    ListTracks,
    Ping,
    Play,
    Pong,
    PublishEnd,
    PublishStart,
    State,
    Stop,
    StreamEnd,
    StreamEndReason,
    StreamStart,
    encode,
)
from hub.tcp.server import ClientConnection

pytestmark = pytest.mark.asyncio


# -- handshake -----------------------------------------------------------------


async def test_hello_gets_welcome_with_session_and_limits(serve: Serve, connect: Connect) -> None:
    served = await serve(StreamSettings(idle_timeout=42.0))
    client = await connect(served.address, hello=False)
    welcome = await client.hello()
    assert welcome.version == PROTOCOL_VERSION
    assert welcome.session_id
    assert welcome.user is None
    assert welcome.max_frame_size >= 8192
    assert welcome.idle_timeout_ms == 42_000
    other = await connect(served.address)
    assert other.welcome is not None and other.welcome.session_id != welcome.session_id


async def test_unsupported_version_is_refused_and_closed(serve: Serve, connect: Connect) -> None:
    served = await serve()
    client = await connect(served.address, hello=False)
    # The codec will not send another version: these are the doc's section 9 bytes.
    client.send_raw(bytes.fromhex("0000000b 01 0002 0004 64656d6f 0000"))
    error = await client.fatal_error()
    assert error.code is ErrorCode.UNSUPPORTED_VERSION
    assert error.request is FrameType.HELLO
    assert error.text == "version 2 not supported (server speaks 1)"
    assert client.eof


async def test_required_token(serve: Serve, connect: Connect) -> None:
    served = await serve(StreamSettings(require_token=True))
    _, token = await served.hub.sessions.create("alice")

    anonymous = await connect(served.address, hello=False)
    anonymous.send(Hello(PROTOCOL_VERSION, "anon"))
    error = await anonymous.fatal_error()
    assert error.code is ErrorCode.UNAUTHENTICATED
    assert anonymous.eof

    forged = await connect(served.address, hello=False)
    forged.send(Hello(PROTOCOL_VERSION, "forger", token[:-4] + "AAAA"))
    assert (await forged.fatal_error()).code is ErrorCode.UNAUTHENTICATED

    alice = await connect(served.address, token=token)
    assert alice.welcome is not None and alice.welcome.user == "alice"
    alice.send(Ping(7))
    assert (await alice.next(Pong)).nonce == 7


async def test_bad_token_is_refused_even_when_optional(serve: Serve, connect: Connect) -> None:
    served = await serve()
    client = await connect(served.address, hello=False)
    client.send(Hello(PROTOCOL_VERSION, "x", "not-a-jwt"))
    assert (await client.fatal_error()).code is ErrorCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("reason", "text"), [(LeaveReason.LOGOUT, "logged out"), (LeaveReason.EXPIRED, "token expired")]
)
async def test_the_sessions_end_ends_the_connection(
    serve: Serve, connect: Connect, reason: LeaveReason, text: str
) -> None:
    """Logout, or expiry (ended as its timer ends it, without waiting a lifetime)."""
    served = await serve(StreamSettings(require_token=True))
    session, token = await served.hub.sessions.create("alice")
    alice = await connect(served.address, token=token)
    bystander = await connect(served.address, token=(await served.hub.sessions.create("bob"))[1])
    alice.send(Play(ALPHA))
    await alice.next(StreamStart)
    if reason is LeaveReason.LOGOUT:
        await served.hub.sessions.revoke(token)  # what Logout does
    else:
        await served.hub.sessions.end(session.id, reason)  # what the expiry timer does
    error = await alice.fatal_error()
    assert (error.code, error.text) == (ErrorCode.UNAUTHENTICATED, text)
    assert alice.eof
    await eventually(lambda: not session.streams, "the session has no stream left")
    bystander.send(Ping(1))
    assert (await bystander.next(Pong)).nonce == 1


async def test_play_works_before_any_list(serve: Serve, connect: Connect) -> None:
    """Ids outlive connections: a client may PLAY one before anybody LISTs."""
    served = await serve()
    client = await connect(served.address)
    client.send(Play(BRAVO))
    start = await client.next(StreamStart)
    assert start.track_id == BRAVO


async def test_a_full_server_refuses_hello(serve: Serve, connect: Connect) -> None:
    served = await serve(StreamSettings(max_connections=2))
    await connect(served.address)
    await connect(served.address)
    third = await connect(served.address, hello=False)
    third.send(Hello(PROTOCOL_VERSION, "third"))
    assert (await third.fatal_error()).code is ErrorCode.UNAVAILABLE


async def test_join_refusals_are_not_fatal(serve: Serve, connect: Connect) -> None:
    served = await serve(devices=DeviceSettings(require_token=True, token_rooms=frozenset({"vip"})))
    client = await connect(served.address)
    client.send(Join("no spaces allowed"))
    assert refused(await client.next(Error), ErrorCode.INVALID_ARGUMENT, FrameType.JOIN)
    client.send(Join("vip"))
    assert refused(await client.next(Error), ErrorCode.UNAUTHENTICATED, FrameType.JOIN)
    client.send(PublishStart(1, "vip"))
    assert refused(await client.next(Error), ErrorCode.UNAUTHENTICATED, FrameType.PUBLISH_START)
    client.send(Audio(1, 0, b"\xf8\xff\xfe"))  # crossed the refusal: discarded
    client.send(PublishEnd(1))
    client.send(Join("hall"))
    assert (await client.next(Joined)).room == "hall"
    _, token = await served.hub.sessions.create("alice")
    alice = await connect(served.address, token=token)
    alice.send(Join("vip"))
    assert (await alice.next(Joined)).room == "vip"


# -- the music folder ------------------------------------------------------------


def expected_listing() -> list[tuple[int, str, int]]:
    return [(i + 1, t.title, round(t.seconds * 1000)) for i, t in enumerate(TRACKS)]


async def test_list_reads_every_sound_file_with_stable_ids(
    serve: Serve, connect: Connect, music: Path
) -> None:
    served = await serve()
    client = await connect(served.address)
    assert await list_tracks(client) == expected_listing()  # notes.txt skipped
    assert await list_tracks(client) == expected_listing()  # unchanged: same ids

    # A new file (sorting first) gets the next id; the others keep theirs.
    write_tone(music / "00 - Zulu.wav", 880.0, 0.5)
    listing = await list_tracks(client)
    assert listing == [(5, "Zulu", 500), *expected_listing()]

    # LIST rescans every time: a rewritten file keeps its id, with its new length;
    # a removed file's id is retired, and never handed out again.
    write_tone(music / TRACKS[1].name, 660.0, 0.5)
    (music / TRACKS[2].name).unlink()
    listing = await list_tracks(client)
    assert (BRAVO, "Bravo", 500) in listing
    assert CHARLIE not in [track_id for track_id, _, _ in listing]
    write_tone(music / TRACKS[2].name, 550.0, 1.0, "VORBIS")
    assert (6, "Charlie", 1000) in await list_tracks(client)

    # Another connection sees the same ids.
    other = await connect(served.address)
    assert await list_tracks(other) == await list_tracks(client)


async def test_concurrent_lists_agree_on_ids(serve: Serve, connect: Connect, music: Path) -> None:
    served = await serve()
    clients = [await connect(served.address) for _ in range(8)]
    for round_ in range(3):
        write_tone(music / f"new-{round_}.wav", 500.0 + round_, 0.2)
        listings = await asyncio.gather(*(list_tracks(c) for c in clients))
        assert all(listing == listings[0] for listing in listings), listings
    ids = [track_id for track_id, _, _ in listings[0]]
    assert len(ids) == len(set(ids)) == len(TRACKS) + 3


# -- playing tracks --------------------------------------------------------------


async def play_to_the_end(client: RawClient, track_id: int) -> tuple[StreamStart, list[Audio]]:
    sent = time.monotonic()
    client.send(Play(track_id))
    start = await client.next(StreamStart)
    first = await client.next(Audio)
    print(f"track {track_id}: first AUDIO {1000 * (time.monotonic() - sent):.1f} ms after PLAY")
    assert time.monotonic() - sent < scaled(1.0)
    end = await client.skip_to(StreamEnd, timeout=10.0)
    assert end.stream_id == start.stream_id
    assert end.reason is StreamEndReason.FINISHED
    packets = client.audio(start.stream_id)
    assert packets[0] == first
    return start, packets


async def test_play_streams_each_format_paced_in_real_time(
    serve: Serve, connect: Connect, music: Path
) -> None:
    served = await serve()
    chosen = (BRAVO, CHARLIE, DELTA)  # flac, ogg/vorbis, mp3
    clients = [await connect(served.address) for _ in chosen]
    await list_tracks(clients[0])
    plays = (play_to_the_end(c, t) for c, t in zip(clients, chosen, strict=True))
    results = await asyncio.gather(*plays)
    for client, track_id, (start, packets) in zip(clients, chosen, results, strict=True):
        track = TRACKS[track_id - 1]
        assert start.track_id == track_id
        assert start.title == track.title
        assert start.duration_ms == round(track.seconds * 1000)
        assert start.frame_duration_us == 20_000
        assert contiguous(packets)
        assert len(packets) == round(track.seconds / 0.02)
        # Paced: packet n never comes before n frames after the stream began,
        # less the pacer's 60 ms lead (and some scheduling slack); the whole
        # track takes about as long as it plays.
        began = next(r.time for r in client.received if isinstance(r.event, StreamStart))
        times = [r.time for r in client.received if isinstance(r.event, Audio)]
        early = [n for n, t in enumerate(times) if t - began < n * 0.02 - 0.06 - 0.05]
        assert not early, f"packets {early} came ahead of real time"
        assert times[-1] - began >= track.seconds - 0.02 - 0.06 - 0.05
        source = read_all(FileSound(music / track.name))
        decoded = decode_packets(p.packet for p in packets)
        assert best_correlation(decoded, source) > 0.9


async def test_play_unknown_track_is_refused_and_the_stream_goes_on(
    serve: Serve, connect: Connect
) -> None:
    served = await serve()
    client = await connect(served.address)
    await list_tracks(client)
    client.send(Play(BRAVO))
    start = await client.next(StreamStart)
    client.send(Play(77))
    error = await client.skip_to(Error)
    assert refused(error, ErrorCode.NOT_FOUND, FrameType.PLAY), error
    end = await client.skip_to(StreamEnd, timeout=5.0)
    assert (end.stream_id, end.reason) == (start.stream_id, StreamEndReason.FINISHED)
    assert contiguous(client.audio(start.stream_id))
    client.send(Ping(3))
    assert (await client.next(Pong)).nonce == 3


def player_tasks(client_id: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(f"tcp {client_id} track")]


async def test_switch_and_stop(serve: Serve, connect: Connect) -> None:
    served = await serve()
    client = await connect(served.address)
    assert client.welcome is not None
    session_id = client.welcome.session_id
    await list_tracks(client)
    client.send(Play(ALPHA))
    a = await client.next(StreamStart)
    await client.wait_for(lambda: len(client.audio(a.stream_id)) >= 10, what="10 packets of A")
    client.send(Play(BRAVO))
    end_a = await client.skip_to(StreamEnd)
    assert (end_a.stream_id, end_a.reason) == (a.stream_id, StreamEndReason.SWITCHED)
    b = await client.next(StreamStart)  # right after A's end: no stale AUDIO of A between
    assert b.track_id == BRAVO and b.stream_id != a.stream_id
    await client.wait_for(lambda: len(client.audio(b.stream_id)) >= 5, what="5 packets of B")
    client.send(Stop())
    end_b = await client.skip_to(StreamEnd)
    assert (end_b.stream_id, end_b.reason) == (b.stream_id, StreamEndReason.STOPPED)
    stopped_at = len(client.received)
    await eventually(lambda: not player_tasks(session_id), "the player gone")
    client.send(Ping(9))
    await client.skip_to(Pong)
    assert not [e for e in client.events[stopped_at:] if isinstance(e, Audio)]
    assert contiguous(client.audio(a.stream_id)) and contiguous(client.audio(b.stream_id))
    # STOP with nothing playing is harmless and answered by nothing.
    client.send(Stop())
    client.send(Ping(10))
    assert (await client.next(Pong)).nonce == 10


# -- limits: request rate, idle timeout ------------------------------------------


async def test_requests_beyond_the_rate_are_refused_not_fatal(
    serve: Serve, connect: Connect
) -> None:
    served = await serve(StreamSettings(request_rate=1.0, request_burst=5.0))
    client = await connect(served.address)
    for _ in range(20):
        client.send(ListTracks())
    client.send(Ping(1))
    await client.skip_to(Pong)
    refusals = client.errors(ErrorCode.RATE_LIMITED)
    answers = client.of(ListResult)
    assert len(refusals) + len(answers) == 20
    assert 5 <= len(answers) <= 7, len(answers)
    assert all(refused(e, ErrorCode.RATE_LIMITED, FrameType.LIST) for e in refusals)
    assert not client.closed


# -- broken clients ----------------------------------------------------------------


async def test_garbage_closes_only_its_sender(serve: Serve, connect: Connect) -> None:
    served = await serve()
    steady = [await connect(served.address) for _ in range(3)]
    for client in steady:
        client.send(Play(BRAVO))
    starts = [await client.next(StreamStart) for client in steady]
    rng = np.random.default_rng(7)
    random_bytes = bytes([0, 0, 0, 40]) + rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    cases: list[tuple[bytes, set[ErrorCode], bool]] = [
        # (bytes sent after HELLO, acceptable codes, half-close after)
        (random_bytes, {ErrorCode.BAD_FRAME, ErrorCode.BAD_STATE}, False),
        (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), set(ErrorCode), False),
        (bytes.fromhex("ffffffff 10"), {ErrorCode.FRAME_TOO_LARGE}, False),
        (bytes.fromhex("00010001") + b"x" * 100, {ErrorCode.FRAME_TOO_LARGE}, False),
        (bytes.fromhex("00000001 7f"), {ErrorCode.BAD_FRAME}, False),
        (bytes.fromhex("00000000"), {ErrorCode.BAD_FRAME}, False),
        (bytes.fromhex("0000000a 05 0000000000000001 00"), {ErrorCode.BAD_FRAME}, False),
        (encode(StreamEnd(1, StreamEndReason.STOPPED)), {ErrorCode.BAD_FRAME}, False),
        (encode(Audio(5, 0, b"\xf8\xff\xfe")), {ErrorCode.BAD_STATE}, False),
        (encode(Play(ALPHA))[:6], {ErrorCode.BAD_FRAME}, True),  # EOF mid-frame
    ]
    broken = []
    for data, _, half_close in cases:
        client = await connect(served.address)
        client.send_raw(data)
        if half_close:
            client.write_eof()
        broken.append(client)
    early = await connect(served.address, hello=False)
    early.send_raw(encode(Play(ALPHA)))  # before HELLO
    for client, (_, codes, _) in zip(broken, cases, strict=True):
        error = await client.fatal_error()
        assert error.code in codes, (error, codes)
        assert error.code.always_fatal and "Traceback" not in error.text
    assert (await early.fatal_error()).code is ErrorCode.BAD_STATE
    for client, start in zip(steady, starts, strict=True):
        end = await client.skip_to(StreamEnd, timeout=10.0)
        assert end.reason is StreamEndReason.FINISHED
        assert contiguous(client.audio(start.stream_id))
        assert len(client.audio(start.stream_id)) == 50
    await eventually(lambda: len(served.server.clients) == 3, "only the steady clients left")


# -- server shutdown -----------------------------------------------------------------


async def test_shutdown_tells_every_client(serve: Serve, connect: Connect) -> None:
    served = await serve()
    idle = await connect(served.address)
    playing = await connect(served.address)
    playing.send(Play(ALPHA))
    await playing.next(StreamStart)
    await playing.next(Audio)
    listening = await connect(served.address)
    listening.send(Join("kitchen"))
    await listening.next(Joined)
    await served.hub.rooms.get("kitchen").press(Input.PLAY)
    await listening.next(StreamStart)
    before_hello = await connect(served.address, hello=False)
    await served.server.close()
    for client in (idle, playing, listening, before_hello):
        error = await client.fatal_error()
        assert error.code is ErrorCode.SHUTDOWN, client
        assert client.eof
    await eventually(lambda: not served.server.clients, "no client left")
    with pytest.raises(OSError):
        await RawClient.connect(served.address)


class GatedBroker(MemoryBroker):
    """A broker whose ``subscribe`` to one channel waits, as one over a network does."""

    def __init__(self, channel: str) -> None:
        super().__init__()
        self.gated = channel
        self.waiting = asyncio.Event()
        self.gate = asyncio.Event()

    async def subscribe(self, channel: str) -> None:
        if channel == self.gated:
            self.waiting.set()
            await self.gate.wait()
        await super().subscribe(channel)


async def test_a_listener_gone_halfway_through_joining_leaves_the_room(
    serve: Serve, connect: Connect
) -> None:
    """Present in the room, then cut while its audio subscription is still on
    its way: the presence is undone too, or the room would count a ghost and
    never be let go."""
    broker = GatedBroker(audio_channel("kitchen"))
    served = await serve(broker=broker)
    listener = await connect(served.address)
    listener.send(Join("kitchen"))
    await asyncio.wait_for(broker.waiting.wait(), scaled(5))
    room = served.hub.rooms.get("kitchen")
    assert room.members == 1
    listener.close()
    await eventually(lambda: not served.server.clients, "the client is cleaned up")
    assert room.members == 0
    assert served.hub.subscriber_count(audio_channel("kitchen")) == 0


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_the_hub_process_streams_on_either_event_loop(music: Path, loop: str) -> None:
    """The ``hub`` command as users run it (uvloop by default), not the
    in-process server the other tests use: uvloop's transports are not
    asyncio's classes, and the door must not care."""
    server = Proc(
        [*HUB, "-s", "-p", "x", "-h", "127.0.0.1:0", "--device-address", "none",
         "--stream-address", "127.0.0.1:0", "--music", str(music), "--loop", loop, "-v"]
    )  # fmt: skip
    try:
        address = server.expect(r".* streaming on (127\.0\.0\.1:\d+)", 20).group(1)
        client = await RawClient.connect(address)
        await client.hello()
        client.send(Play(ALPHA))
        await client.next(StreamStart)
        await client.next(Audio)
        client.send(Join("kitchen"))  # switches: the track ends, the room is joined
        assert (await client.skip_to(Joined)).room == "kitchen"
        client.close()
        client.check()
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
        assert not any("Traceback" in line for line in server.lines), server.lines
    finally:
        server.stop()


# -- many clients coming and going -------------------------------------------------


def client_tasks() -> list[asyncio.Task[object]]:
    """Live tasks of the server's clients: handlers, players."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("tcp ")]


async def test_disconnect_while_switching_leaves_no_task(serve: Serve, connect: Connect) -> None:
    """PLAY, PLAY and a RST in one burst: the handler is cancelled while it waits
    for the first player to stop; it must not carry on and start the second."""
    served = await serve()
    lister = await connect(served.address)
    await list_tracks(lister)
    lister.close()
    await lister.wait_closed()
    await eventually(lambda: not served.server.clients, "the lister gone")
    baseline = asyncio.all_tasks()
    for _ in range(10):
        client = await connect(served.address)
        client.send_raw(encode(Play(ALPHA)) + encode(Play(BRAVO)))
        client.reset()
    await eventually(lambda: not served.server.clients, "every client gone")
    await eventually(lambda: not client_tasks(), "no task of a client left")
    await eventually(lambda: asyncio.all_tasks() <= baseline, "the tasks before")


async def churn(
    served: Served, connect: Connect, rng: random.Random, room: str, number: int
) -> None:
    """One short-lived client: connects at a random moment, does something,
    and goes away in one of the ways a client can."""
    await asyncio.sleep(rng.uniform(0.0, 2.0))  # the scenario's schedule
    client = await connect(served.address, name=f"churn-{number}", hello=rng.random() < 0.9)
    action = rng.choice(("play", "play", "join", "list", "nothing", "switch"))
    if client.welcome is not None and action == "switch":
        # Gone while the server switches tracks (see the test above).
        client.send_raw(encode(Play(ALPHA)) + encode(Play(BRAVO)))
        client.reset()
        await client.wait_closed()
        return
    if client.welcome is not None:
        if action == "play":
            client.send(Play(rng.choice((ALPHA, BRAVO, CHARLIE, DELTA))))
        elif action == "join":
            client.send(Join(room))
        elif action == "list":
            client.send(ListTracks())
    await asyncio.sleep(rng.uniform(0.0, 0.6))
    how = rng.choice(("close", "reset", "half-close", "mid-frame", "mid-frame-reset"))
    if how == "close":
        client.close()
    elif how == "reset":
        client.reset()
    elif how == "half-close":
        client.write_eof()  # the server closes too, flushing what it had
    elif how.startswith("mid-frame"):
        client.send_raw(encode(Play(ALPHA))[:7])
        client.reset() if how == "mid-frame-reset" else client.write_eof()
    await client.wait_closed()


async def test_clients_come_and_go_while_others_stream(serve: Serve, connect: Connect) -> None:
    served = await serve()
    hub, server = served.hub, served.server
    room = "lounge"
    baseline = asyncio.all_tasks()
    steady = [await connect(served.address, name=f"steady-{i}") for i in range(5)]
    await list_tracks(steady[0])
    listeners = [await connect(served.address, name=f"listener-{i}") for i in range(2)]
    for listener in listeners:
        listener.send(Join(room))
        await listener.next(Joined)
    await hub.rooms.get(room).press(Input.PLAY)
    for client in steady:
        client.send(Play(ALPHA))
    rng = random.Random(20240611)
    await asyncio.gather(*(churn(served, connect, rng, room, n) for n in range(50)))

    for client in steady:
        start = client.starts()[0]
        end = await client.skip_to(StreamEnd, timeout=10.0)
        assert (end.stream_id, end.reason) == (start.stream_id, StreamEndReason.FINISHED)
        assert len(client.audio(start.stream_id)) == 150
        assert contiguous(client.audio(start.stream_id)), client
    for listener in listeners:
        start = await listener.skip_to(StreamStart)
        end = await listener.skip_to(StreamEnd, timeout=10.0)
        assert (end.stream_id, end.reason) == (start.stream_id, StreamEndReason.FINISHED)
        assert contiguous(listener.audio(start.stream_id)), listener
        assert len(listener.audio(start.stream_id)) == 100

    assert len(server.clients) == len(steady) + len(listeners)
    for client in steady + listeners:
        client.close()
    await eventually(lambda: not server.clients, "no client left")
    await eventually(lambda: hub.subscriber_count(audio_channel(room)) == 0, "no listener left")
    await eventually(lambda: hub.rooms.get(room).members == 0, "nobody in the room")
    await eventually(lambda: not client_tasks(), "no task of a client left")
    await eventually(lambda: asyncio.all_tasks() <= baseline, "no task but the ones before")


# -- slow clients -------------------------------------------------------------------


def record_peak_buffer(connection: ClientConnection) -> Callable[[], int]:
    """Wrap the server's transport for ``connection``: the most bytes its write
    buffer ever held right after a write."""
    transport = connection.transport
    assert transport is not None
    write = transport.write
    peak = 0

    def recording_write(data: bytes | bytearray | memoryview) -> None:
        nonlocal peak
        write(data)
        peak = max(peak, transport.get_write_buffer_size())

    transport.write = recording_write  # type: ignore[method-assign]
    return lambda: peak


async def test_a_client_that_stops_reading_skips_audio_and_holds_nobody_back(
    serve: Serve, connect: Connect
) -> None:
    stream = StreamSettings(send_high_water=16 * 1024, send_buffer_max=64 * 1024)
    served = await serve(
        stream,
        # Noise at the highest bitrate: ~32 KB/s fills the kernel buffers in seconds.
        devices=DeviceSettings(opus=OpusSettings(bitrate=510_000)),
        library=SoundLibrary({0: noise_sound(20.0)}),
    )
    normal = await connect(served.address, name="normal")
    slow = await connect(served.address, name="slow", receive_buffer=4096)
    for client in (normal, slow):
        client.send(Join("R"))
        await client.next(Joined)
    connection = connection_of(served.server, slow)
    peak = record_peak_buffer(connection)
    slow.pause()
    room = served.hub.rooms.get("R")
    began = time.monotonic()
    await room.press(Input.PLAY)
    start = await normal.next(StreamStart)
    await eventually(lambda: connection.skipped > 0, "the slow client skipping audio", 20.0)
    print(f"slow client skipping after {time.monotonic() - began:.1f} s")
    await room.press(Input.STOP)
    end = await normal.skip_to(StreamEnd)
    assert (end.stream_id, end.reason) == (start.stream_id, StreamEndReason.STOPPED)
    heard = normal.audio(start.stream_id)
    assert contiguous(heard)

    # Nothing queued but a bounded backlog; start and end are never skipped.
    largest = max(len(encode(a)) for a in heard)
    assert peak() <= stream.send_high_water + largest
    slow.resume()
    assert (await slow.skip_to(StreamStart)).stream_id == start.stream_id
    slow_end = await slow.skip_to(StreamEnd, timeout=20.0)
    assert slow_end == end
    got = [a.seq for a in slow.audio(start.stream_id)]
    assert got == sorted(set(got)) and got[0] == 0
    assert len(got) + connection.skipped == len(heard)
    assert not slow.closed


async def test_a_hopelessly_slow_client_is_closed_as_slow(serve: Serve, connect: Connect) -> None:
    """PONGs may not be skipped: a client that floods PINGs and never reads
    the answers fills its queue with frames that must not be dropped."""
    stream = StreamSettings(send_high_water=4096, send_buffer_max=16 * 1024, idle_timeout=2.0)
    served = await serve(stream)
    bystander = await connect(served.address, name="bystander")
    bystander.send(Play(BRAVO))
    start = await bystander.next(StreamStart)
    flooders = [await connect(served.address, receive_buffer=4096) for _ in range(2)]
    connections = [connection_of(served.server, client) for client in flooders]
    peaks = [record_peak_buffer(connection) for connection in connections]
    flood = b"".join(encode(Ping(n)) for n in range(20_000))
    for client in flooders:
        client.pause()
        client.send_raw(flood)
    await eventually(
        lambda: all(c.codec.state is State.CLOSED for c in connections), "both closed as slow"
    )
    # Nobody else noticed.
    end = await bystander.skip_to(StreamEnd)
    assert end.reason is StreamEndReason.FINISHED
    assert contiguous(bystander.audio(start.stream_id))
    # The bound: past send_buffer_max nothing more is queued but the ERROR.
    last_words = len(encode(Error(ErrorCode.SLOW, "x" * 100, fatal=True)))
    for peak in peaks:
        assert stream.send_buffer_max < peak() <= stream.send_buffer_max + 13 + last_words

    # One reads again: it gets the PONGs it was owed, the ERROR, the end.
    reader = flooders[0]
    reader.resume()
    error = await reader.fatal_error(timeout=10.0)
    assert error.code is ErrorCode.SLOW
    assert reader.eof
    pongs = [p.nonce for p in reader.of(Pong)]
    assert pongs == list(range(len(pongs)))
    # The other never reads again: the server does not wait for it for ever.
    await eventually(lambda: connections[1] not in served.server.clients, "the stubborn one gone")


# -- device rooms ---------------------------------------------------------------------


async def test_room_listeners_hear_what_the_devices_hear(
    serve: Serve, connect: Connect, new_device: NewDevice, room_library: SoundLibrary
) -> None:
    served = await serve(grpc=True)
    assert served.grpc_address is not None
    device = await new_device(served.grpc_address, "R")
    first = await connect(served.address, name="first")
    first.send(Join("R"))
    assert (await first.next(Joined)).room == "R"
    room = served.hub.rooms.get("R")

    await room.press(Input.PLAY)
    start = await first.next(StreamStart)
    assert start.stream_id == room.stream_id
    assert start.track_id is None
    assert start.title == room_library[0].title
    assert start.duration_ms == 2000
    await first.wait_for(lambda: len(first.audio(start.stream_id)) >= 20, what="20 packets")

    # Joining mid-stream: STREAM_START first, then the room's numbering.
    late = await connect(served.address, name="late")
    late.send(Join("R"))
    await late.next(Joined)
    late_start = await late.next(StreamStart)
    assert late_start.stream_id == start.stream_id
    assert (await late.next(Audio)).seq > 0

    await first.wait_for(lambda: len(first.audio(start.stream_id)) >= 40, what="40 packets")
    await room.press(Input.STOP)
    for client in (first, late):
        end = await client.skip_to(StreamEnd)
        assert (end.stream_id, end.reason) == (start.stream_id, StreamEndReason.STOPPED)
    await device.wait_for(lambda: len(device.streams) == 1, what="the device's stream")

    heard = first.audio(start.stream_id)
    assert contiguous(heard)
    played = [p.data for p in device.streams[0].packets if not p.is_end]
    assert [a.packet for a in heard] == played  # the same bytes
    late_heard = late.audio(start.stream_id)
    assert [a.packet for a in late_heard] == played[late_heard[0].seq :]
    assert [a.seq for a in late_heard] == list(range(late_heard[0].seq, len(played)))
    decoded = decode_packets(a.packet for a in heard)
    assert best_correlation(decoded, read_all(room_library[0])) > 0.9

    # The device's buttons act on the room; LEAVE ends the stream, then LEFT.
    assert await device.play()
    second = await first.next(StreamStart)
    await late.next(StreamStart)
    await late.next(Audio)
    late.send(Leave())
    left_end = await late.skip_to(StreamEnd)
    assert (left_end.stream_id, left_end.reason) == (second.stream_id, StreamEndReason.STOPPED)
    assert (await late.next(Left)).room == "R"
    assert await device.stop()
    end = await first.skip_to(StreamEnd)
    assert (end.stream_id, end.reason) == (second.stream_id, StreamEndReason.STOPPED)
    assert served.hub.subscriber_count(audio_channel("R")) == 2  # the device and first
    late.send(Leave())  # outside a room: nothing
    late.send(Ping(5))
    assert (await late.next(Pong)).nonce == 5


async def test_publish_into_a_room(serve: Serve, connect: Connect, new_device: NewDevice) -> None:
    served = await serve(grpc=True)
    assert served.grpc_address is not None
    device = await new_device(served.grpc_address, "R")
    listener = await connect(served.address, name="listener")
    listener.send(Join("R"))
    await listener.next(Joined)
    publisher = await connect(served.address, name="publisher")
    sound = music_tone(500.0, 1.0)
    packets = list(encode_blocks([sound], OpusSettings()))

    publisher.send(PublishStart(7, "R", "mic"))
    await publish_paced(publisher, 7, packets)
    publisher.send(PublishEnd(7))
    start = await listener.next(StreamStart)
    assert (start.track_id, start.duration_ms, start.title) == (None, None, "mic")
    end = await listener.skip_to(StreamEnd)
    assert (end.stream_id, end.reason) == (start.stream_id, StreamEndReason.FINISHED)
    heard = listener.audio(start.stream_id)
    assert contiguous(heard)
    assert [a.packet for a in heard] == packets
    assert best_correlation(decode_packets(a.packet for a in heard), sound) > 0.9
    await device.wait_for(lambda: len(device.streams) == 1, what="the device's stream")
    played = device.streams[0]
    assert [p.data for p in played.packets if not p.is_end] == packets
    assert best_correlation(played.pcm, sound) > 0.9
    assert not publisher.errors()

    # Faster than real time: a second's burst passes, the rest is dropped.
    publisher.send(PublishStart(8, "R"))
    for seq in range(150):
        publisher.send(Audio(8, seq, packets[seq % len(packets)]))
    publisher.send(PublishEnd(8))
    publisher.send(Ping(1))
    await publisher.skip_to(Pong)
    (error,) = publisher.errors()
    assert refused(error, ErrorCode.RATE_LIMITED, FrameType.AUDIO), error
    start = await listener.next(StreamStart)
    end = await listener.skip_to(StreamEnd)
    assert end.reason is StreamEndReason.FINISHED
    relayed = len(listener.audio(start.stream_id))
    assert 50 <= relayed <= 65, relayed  # the burst, and what trickled in meanwhile
    assert contiguous(listener.audio(start.stream_id))
    await device.wait_for(lambda: len(device.streams) == 2, what="the device's second stream")


async def test_a_publisher_is_warned_of_excess_once_a_second_of_the_hubs_clock(
    serve: Serve, connect: Connect
) -> None:
    clock = FakeClock(0.0, auto_advance=False)  # time moves only when the test says
    served = await serve(clock=clock)
    publisher = await connect(served.address)
    packets = list(encode_blocks([music_tone(500.0, 1.0)], OpusSettings()))
    publisher.send(PublishStart(9, "R"))
    seq = 0

    async def flood(count: int) -> None:
        nonlocal seq
        for _ in range(count):
            publisher.send(Audio(9, seq, packets[seq % len(packets)]))
            seq += 1
        publisher.send(Ping(seq))
        await publisher.skip_to(Pong)

    await flood(120)  # the second's burst passes, the rest is dropped: one warning
    assert len(publisher.errors(ErrorCode.RATE_LIMITED)) == 1
    clock.advance(0.5)
    await flood(120)  # within the second: dropped without a word
    assert len(publisher.errors(ErrorCode.RATE_LIMITED)) == 1
    clock.advance(0.5)
    await flood(120)  # a second on: warned again
    warnings = publisher.errors(ErrorCode.RATE_LIMITED)
    assert len(warnings) == 2
    assert all(refused(e, ErrorCode.RATE_LIMITED, FrameType.AUDIO) for e in warnings)


async def test_idle_and_handshake_deadlines_run_on_the_hubs_clock(
    serve: Serve, connect: Connect
) -> None:
    clock = FakeClock(0.0, auto_advance=False)  # no real second passes here
    settings = StreamSettings(idle_timeout=30.0, handshake_timeout=10.0)
    served = await serve(settings, clock=clock)
    silent = await connect(served.address)
    before_hello = await connect(served.address, hello=False)
    pinging = await connect(served.address)
    welcome = pinging.welcome
    assert welcome is not None and welcome.idle_timeout_ms == 30_000
    for nonce in range(7):  # a PING every 5 s of the clock, past the idle timeout
        pinging.send(Ping(nonce))
        # The answer comes after anything the server wrote before it, so a
        # client dropped too early would show it by now: not before its time.
        assert (await pinging.next(Pong)).nonce == nonce
        now = clock.monotonic()
        assert before_hello.errors(ErrorCode.TIMEOUT) == [] or now >= 10.0, now
        assert silent.errors(ErrorCode.TIMEOUT) == [] or now >= 30.0, now
        clock.advance(5.0)
    # 35 s on: the stranger went at 10 s, the silent client at 30 s.
    assert (await before_hello.fatal_error()).code is ErrorCode.TIMEOUT
    assert (await silent.fatal_error()).code is ErrorCode.TIMEOUT
    assert not pinging.closed
