"""AudioGate: each listener's view of the room's stream stays well formed."""

from __future__ import annotations

import pytest

from hub.audio.opus import OpusSettings, silence_packet
from hub.audio.testing import well_formed
from hub.core.events import AudioFrame
from hub.core.publication import Publication
from hub.core.rooms import Admit, AudioGate
from hub.proto import comms_pb2
from hub.rpc.devices import DeviceAudio

DATA = silence_packet(OpusSettings())


def packet(stream: int, seq: int, *, start: bool = False, end: bool = False) -> AudioFrame:
    return AudioFrame(stream, seq, DATA, is_start=start, is_end=end)


def test_from_the_start() -> None:
    gate = AudioGate()
    assert gate.admit(packet(1, 0, start=True)) is Admit.SEND
    assert gate.admit(packet(1, 1)) is Admit.SEND
    assert gate.admit(packet(1, -1, end=True)) is Admit.SEND
    assert gate.current is None


def test_joining_mid_stream_opens_on_the_first_packet() -> None:
    gate = AudioGate()
    assert gate.admit(packet(1, 40)) is Admit.SEND_AS_START
    assert gate.admit(packet(1, 41)) is Admit.SEND
    assert gate.admit(packet(1, -1, end=True)) is Admit.SEND


def test_joining_at_the_end_mark_skips_it() -> None:
    gate = AudioGate()
    assert gate.admit(packet(1, -1, end=True)) is Admit.SKIP
    assert gate.admit(packet(2, 0, start=True)) is Admit.SEND


def test_an_end_for_another_stream_is_skipped() -> None:
    gate = AudioGate()
    assert gate.admit(packet(2, 0, start=True)) is Admit.SEND
    assert gate.admit(packet(1, -1, end=True)) is Admit.SKIP  # stale: not ours
    assert gate.admit(packet(2, 1)) is Admit.SEND
    assert gate.admit(packet(2, -1, end=True)) is Admit.SEND


def test_switching_streams() -> None:
    gate = AudioGate()
    assert gate.admit(packet(1, 5)) is Admit.SEND_AS_START
    assert gate.admit(packet(1, -1, end=True)) is Admit.SEND
    assert gate.admit(packet(2, 0, start=True)) is Admit.SEND
    assert gate.admit(packet(2, 1)) is Admit.SEND


def test_late_packets_of_a_stream_already_over_are_skipped() -> None:
    """Across hubs, Stop's end may overtake the player's last packets (another hub)."""
    gate = AudioGate()
    assert gate.admit(packet(1, 0, start=True)) is Admit.SEND
    assert gate.admit(packet(1, -1, end=True)) is Admit.SEND
    assert gate.admit(packet(1, 1)) is Admit.SKIP  # would reopen a stream nobody ends
    assert gate.admit(packet(2, 0, start=True)) is Admit.SEND
    assert gate.admit(packet(1, 2)) is Admit.SKIP
    # A stream left behind without its end (a new one took over) is over too.
    assert gate.admit(packet(3, 0, start=True)) is Admit.SEND
    assert gate.admit(packet(2, 9)) is Admit.SKIP
    assert gate.admit(packet(3, 1)) is Admit.SEND


# -- DeviceAudio: the device's audio queue, gated as it fills ----------------


def publication(frame: AudioFrame) -> Publication:
    return Publication("room:x:audio", frame, 0.0, droppable=not (frame.is_start or frame.is_end))


def drain(queue: DeviceAudio) -> list[tuple[bool, bool]]:
    out: list[tuple[bool, bool]] = []
    while len(queue._queue):
        item = queue._queue.popleft()
        message = comms_pb2.AudioPacket.FromString(item.data)
        assert message.data == DATA
        out.append((message.is_start, message.is_end))
    return out


def test_device_audio_skips_ahead_over_plain_packets() -> None:
    queue = DeviceAudio("room:x:audio", maxlen=5)
    queue.deliver(publication(packet(1, 0, start=True)))
    for seq in range(1, 20):
        queue.deliver(publication(packet(1, seq)))
    queue.deliver(publication(packet(1, -1, end=True)))
    flags = drain(queue)
    assert flags[0] == (True, False) and flags[-1] == (False, True)
    assert len(flags) == 5 and queue.dropped == 16


def test_device_audio_under_a_storm_of_streams_stays_bounded_and_well_formed() -> None:
    queue = DeviceAudio("room:x:audio", maxlen=6)
    queue.deliver(publication(packet(1, 7)))  # joined mid-stream
    queue.deliver(publication(packet(1, -1, end=True)))
    for stream in range(2, 40):
        queue.deliver(publication(packet(stream, 0, start=True)))
        if stream % 3:
            queue.deliver(publication(packet(stream, 1)))
        queue.deliver(publication(packet(stream, -1, end=True)))
        queue.deliver(publication(packet(1000 + stream, -1, end=True)))  # never started: skipped
        assert len(queue._queue) <= 6
    queue.deliver(publication(packet(99, 0, start=True)))
    flags = drain(queue)
    assert well_formed(flags)
    assert flags[0] == (True, False)  # the late joiner's first packet opens its file
    assert flags[-1] == (True, False)  # the newest stream, under way


@pytest.mark.asyncio
async def test_device_audio_hands_out_what_is_queued_then_ends() -> None:
    queue = DeviceAudio("room:x:audio", maxlen=5)
    queue.deliver(publication(packet(1, 0, start=True)))
    queue.close()
    queue.deliver(publication(packet(1, 1)))  # after close: not taken
    assert [comms_pb2.AudioPacket.FromString(d).is_start async for d in queue] == [True]
