"""Claims of docs/protocol.md that say what happens, each held to the server
over real loopback sockets: the request rate limit's numbers, what a lagging
listener gets on a switch and on STOP, how tracks get their ids and titles,
what stream ids promise, how a room publication ends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from chat_helpers import eventually
from fake_clock import FakeClock
from tcp_helpers import BRAVO, Connect, Serve, connection_of, list_tracks, write_tone

from hub.audio.opus import OpusSettings
from hub.audio.sources import SAMPLE_RATE
from hub.settings import DeviceSettings, StreamSettings
from hub.tcp.codec import (
    Audio,
    ErrorCode,
    FrameType,
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
    Stop,
    StreamEnd,
    StreamEndReason,
    StreamStart,
    encode,
)
from hub.tcp.server import ClientConnection

pytestmark = pytest.mark.asyncio

NOISE = 5  # "99 - noise.wav" sorts after the fixture's four tracks


def count_written_audio(connection: ClientConnection) -> dict[int, int]:
    """Wrap the server's transport: AUDIO frames handed to it, by stream id."""
    transport = connection.transport
    assert transport is not None
    write = transport.write
    written: dict[int, int] = {}

    def counting_write(data: bytes | bytearray | memoryview) -> None:
        raw = bytes(data)
        if len(raw) > 9 and raw[4] == FrameType.AUDIO:
            stream = int.from_bytes(raw[5:9])
            written[stream] = written.get(stream, 0) + 1
        write(data)

    transport.write = counting_write  # type: ignore[method-assign]
    return written


@pytest.mark.parametrize("how", ["switch", "stop"])
async def test_a_lagging_listener_gets_what_was_queued_before_the_end(
    serve: Serve, connect: Connect, music: Path, how: str
) -> None:
    """Section 7: audio skipped while a listener lagged is never sent; audio
    already queued for it is delivered, in order, before STREAM_END; nothing
    of the stream comes after its end."""
    rng = np.random.default_rng(3)
    sf.write(music / "99 - noise.wav", 0.3 * rng.standard_normal(20 * SAMPLE_RATE), SAMPLE_RATE)
    served = await serve(
        StreamSettings(send_high_water=16 * 1024),
        # Noise at the highest bitrate: ~64 KB/s fills the kernel buffers in seconds.
        devices=DeviceSettings(opus=OpusSettings(bitrate=510_000)),
    )
    slow = await connect(served.address, receive_buffer=4096)
    connection = connection_of(served.server, slow)
    written = count_written_audio(connection)
    slow.pause()
    slow.send(Play(NOISE))
    await eventually(lambda: connection.skipped > 0, "the listener skipping audio", 20.0)
    noise = connection.codec.downlink_stream
    assert noise is not None
    slow.send(Play(BRAVO) if how == "switch" else Stop())
    await eventually(lambda: connection.codec.downlink_stream != noise, "the noise ended")
    queued = written[noise]
    slow.resume()

    end = await slow.skip_to(StreamEnd, timeout=20.0)
    reason = StreamEndReason.SWITCHED if how == "switch" else StreamEndReason.STOPPED
    assert (end.stream_id, end.reason) == (noise, reason)
    heard = slow.audio(noise)
    assert len(heard) == queued  # every queued frame, none of the skipped ones
    seqs = [a.seq for a in heard]
    assert seqs == sorted(set(seqs))  # gaps where audio was skipped, never backwards
    if how == "switch":
        start = await slow.next(StreamStart)  # right behind the end
        assert start.track_id == BRAVO
        await slow.skip_to(StreamEnd, timeout=10.0)
    slow.send(Ping(1))
    await slow.skip_to(Pong, timeout=10.0)
    events = slow.events
    after_end = events[events.index(end) + 1 :]
    assert not [e for e in after_end if isinstance(e, Audio) and e.stream_id == noise]


async def test_the_request_rate_is_20_a_second_with_bursts_of_40(
    serve: Serve, connect: Connect
) -> None:
    """Section 7's numbers, on the server's defaults and a clock that stands
    still: 40 requests at once, then one per 50 ms; PING is not counted, and
    a refused request changes nothing."""
    clock = FakeClock(0.0, auto_advance=False)
    served = await serve(clock=clock)
    client = await connect(served.address)

    def refusals() -> list[FrameType | None]:
        return [e.request for e in client.errors(ErrorCode.RATE_LIMITED) if not e.fatal]

    async def burst(*requests: bytes) -> None:
        """Send in one write, then wait for the answer to a PING behind them."""
        nonce = 1_000_000 + len(client.events)
        client.send_raw(b"".join(requests) + encode(Ping(nonce)))
        await client.wait_for(lambda: Pong(nonce) in client.of(Pong), what=f"PONG {nonce}")

    await burst(*(encode(Ping(n)) for n in range(100)))  # not requests
    await burst(*(encode(Stop()) for _ in range(45)))
    assert refusals() == [FrameType.STOP] * 5
    clock.advance(0.05)  # one more request's worth
    await burst(encode(Stop()), encode(Stop()))
    assert refusals() == [FrameType.STOP] * 6
    # A long pause (200 requests' worth, inside the idle timeout, which runs
    # on the same clock) refills the burst, and no more than it.
    clock.advance(10.0)
    await burst(*(encode(ListTracks()) for _ in range(41)))
    assert refusals() == [FrameType.STOP] * 6 + [FrameType.LIST]
    assert len(client.of(ListResult)) == 40
    assert not client.closed


async def test_track_ids_follow_path_order_and_titles_come_from_file_names(
    serve: Serve, connect: Connect, tmp_path: Path
) -> None:
    """Section 5.6: ids in path order at the first scan; a title is the file
    name less its extension and leading track number, with the subfolder."""
    folder = tmp_path / "library"
    (folder / "Live").mkdir(parents=True)
    for name in ("07 - Intro.wav", "Live/1-chord.wav", "b-side.flac", ".hidden.wav", "03.wav"):
        write_tone(folder / name, 440.0, 0.2)
    (folder / "cover.jpg").write_bytes(b"\xff\xd8 not a sound")
    served = await serve(folder=folder)
    client = await connect(served.address)
    assert await list_tracks(client) == [
        (1, "03", 200),
        (2, "Intro", 200),
        (3, "Live/chord", 200),
        (4, "b-side", 200),
    ]


async def test_a_room_publication_ends_finished_and_stream_ids_are_only_distinct(
    serve: Serve, connect: Connect
) -> None:
    """Section 5.11: a publication ended by PUBLISH_END, or by its publisher
    hanging up, ends in the room with ``finished``. Section 6: the ids of the
    streams one connection sees are distinct, and that is all."""
    served = await serve()
    listener = await connect(served.address, name="listener")
    listener.send(Join("R"))
    await listener.next(Joined)
    packet = b"\xf8\xff\xfe"  # 20 ms of silence
    for hangs_up in (False, True):
        publisher = await connect(served.address, name="publisher")
        publisher.send(PublishStart(1, "R", "mic"))
        for seq in range(3):
            publisher.send(Audio(1, seq, packet))
        start = await listener.next(StreamStart)
        assert start.title == "mic"
        for _ in range(3):
            assert (await listener.next(Audio)).stream_id == start.stream_id
        if hangs_up:
            publisher.close()
        else:
            publisher.send(PublishEnd(1))
        end = await listener.skip_to(StreamEnd)
        assert (end.stream_id, end.reason) == (start.stream_id, StreamEndReason.FINISHED)
    listener.send(Leave())
    await listener.skip_to(Left)
    for track in (BRAVO, BRAVO):
        listener.send(Play(track))
        await listener.next(StreamStart)
        listener.send(Stop())
        await listener.skip_to(StreamEnd)
    ids = [s.stream_id for s in listener.starts()]
    assert len(ids) == 4 and len(set(ids)) == 4, ids
