"""AudioGate: each listener's view of the room's stream stays well formed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.audio.opus import OpusSettings, silence_packet
from hub.audio.testing import well_formed
from hub.core.events import AudioFrame
from hub.core.publication import Publication
from hub.core.rooms import Admit, AudioGate
from hub.errors import Unauthenticated, Unavailable
from hub.proto import comms_pb2
from hub.rpc.devices import DeviceAudio, encode_packet

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
    """What is queued, as the device would get it: (is_start, is_end) of each packet."""
    out: list[tuple[bool, bool]] = []
    for pub in queue.drain():
        message = comms_pb2.AudioPacket.FromString(pub.encoded(encode_packet))
        assert message.data == DATA
        out.append((message.is_start, message.is_end))
    return out


def test_device_audio_needs_room_for_a_whole_stream() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        DeviceAudio("room:x:audio", silence=DATA, maxlen=2)


def test_device_audio_skips_ahead_over_plain_packets() -> None:
    skipped: list[int] = []
    queue = DeviceAudio("room:x:audio", silence=DATA, maxlen=5, on_skip=skipped.append)
    queue.deliver(publication(packet(1, 0, start=True)))
    for seq in range(1, 20):
        queue.deliver(publication(packet(1, seq)))
    queue.deliver(publication(packet(1, -1, end=True)))
    assert len(queue) == 5
    flags = drain(queue)
    assert flags[0] == (True, False) and flags[-1] == (False, True)
    assert len(flags) == 5 and queue.dropped == 16
    assert skipped == [1] * 16  # the metric hears of every packet skipped


def test_device_audio_drops_a_whole_short_stream_when_only_marks_are_queued() -> None:
    skipped: list[int] = []
    queue = DeviceAudio("room:x:audio", silence=DATA, maxlen=4, on_skip=skipped.append)
    for stream in (1, 2):
        queue.deliver(publication(packet(stream, 0, start=True)))
        queue.deliver(publication(packet(stream, -1, end=True)))
    queue.deliver(publication(packet(3, 0, start=True)))  # full: stream 1 goes, whole
    assert [pub.event.stream_id for pub in queue.drain()] == [2, 2, 3]
    assert skipped == [2] and queue.dropped == 2 and not queue.closed


def test_device_audio_under_a_storm_of_streams_stays_bounded_and_well_formed() -> None:
    queue = DeviceAudio("room:x:audio", silence=DATA, maxlen=6)
    queue.deliver(publication(packet(1, 7)))  # joined mid-stream
    queue.deliver(publication(packet(1, -1, end=True)))
    for stream in range(2, 40):
        queue.deliver(publication(packet(stream, 0, start=True)))
        if stream % 3:
            queue.deliver(publication(packet(stream, 1)))
        queue.deliver(publication(packet(stream, -1, end=True)))
        queue.deliver(publication(packet(1000 + stream, -1, end=True)))  # never started: skipped
        assert len(queue) <= 6
    queue.deliver(publication(packet(99, 0, start=True)))
    flags = drain(queue)
    assert well_formed(flags)
    assert flags[0] == (True, False)  # the late joiner's first packet opens its file
    assert flags[-1] == (True, False)  # the newest stream, under way
    assert not queue.closed


def test_device_audio_stays_bounded_when_streams_take_over_without_their_ends() -> None:
    """Across hubs a new stream's start may come before the old one's end, which
    the gate then skips: a queue of starts alone must still make room, and never
    cut the device."""
    queue = DeviceAudio("room:x:audio", silence=DATA, maxlen=3)
    for stream in range(1, 20):
        queue.deliver(publication(packet(stream, 0, start=True)))
        queue.deliver(publication(packet(stream - 1, -1, end=True)))  # late: skipped
        assert len(queue) <= 3
    assert not queue.closed
    assert [pub.event.stream_id for pub in queue.drain()] == [17, 18, 19]
    assert queue.dropped == 16


def test_late_joiners_share_one_opening_packet() -> None:
    first = DeviceAudio("room:x:audio", silence=DATA, maxlen=5)
    second = DeviceAudio("room:x:audio", silence=DATA, maxlen=5)
    mid_stream = publication(packet(1, 40))
    first.deliver(mid_stream)
    second.deliver(mid_stream)
    (opened,), (opened_too,) = first.drain(), second.drain()
    assert opened is opened_too  # serialized once for every late joiner
    assert comms_pb2.AudioPacket.FromString(opened.encoded(encode_packet)).is_start
    assert not mid_stream.event.is_start  # the room's own packet is untouched
    assert opened.time == mid_stream.time  # its latency is the packet's


@pytest.mark.asyncio
async def test_device_audio_hands_out_what_is_queued_then_ends() -> None:
    queue = DeviceAudio("room:x:audio", silence=DATA, maxlen=5)
    queue.deliver(publication(packet(1, 0, start=True)))
    queue.close()
    queue.deliver(publication(packet(1, 1)))  # after close: not taken
    assert [pub.event.is_start async for pub in queue] == [True]


@pytest.mark.asyncio
async def test_device_audio_closed_with_an_error_discards_its_queue_and_raises() -> None:
    queue = DeviceAudio("room:x:audio", silence=DATA, maxlen=5)
    queue.deliver(publication(packet(1, 0, start=True)))
    queue.close(Unauthenticated("session ended"))
    assert len(queue) == 0
    with pytest.raises(Unauthenticated):
        await anext(queue)


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=6), st.integers(min_value=-1, max_value=8)),
        max_size=30,
    ),
    st.integers(min_value=3, max_value=8),
)
def test_device_audio_never_grows_nor_cuts_nor_breaks_a_stream(
    streams: list[tuple[int, int]], maxlen: int
) -> None:
    """Streams of ``plain`` packets each, the device catching up with all that
    is queued after packet ``read`` of a stream (-1: not during it): however
    far it falls behind, it is never cut and what it hears is well formed."""
    queue = DeviceAudio("room:x:audio", silence=DATA, maxlen=maxlen)
    heard: list[tuple[bool, bool]] = []
    for stream, (plain, read) in enumerate(streams, start=1):
        frames = [packet(stream, 0, start=True)]
        frames += [packet(stream, seq) for seq in range(1, plain + 1)]
        frames.append(packet(stream, -1, end=True))
        for index, frame in enumerate(frames):
            queue.deliver(publication(frame))
            assert len(queue) <= maxlen and not queue.closed
            if index == read:
                heard += drain(queue)
    heard += drain(queue)
    assert well_formed(heard)
    assert heard.count((True, False)) == heard.count((False, True))


def test_after_a_loss_the_stream_that_was_open_opens_again_and_ends_once() -> None:
    gate = AudioGate()
    assert gate.admit(packet(1, 0, start=True)) is Admit.SEND
    assert gate.lost() == 1  # the listener's end of it is the caller's to send
    assert gate.lost() is None  # nothing open any more
    assert gate.admit(packet(1, 5)) is Admit.SEND_AS_START  # it plays on
    assert gate.admit(packet(1, -1, end=True)) is Admit.SEND
    assert gate.admit(packet(1, -1, end=True)) is Admit.SKIP  # an end sent twice


def test_a_loss_mid_stream_hands_the_device_an_end_after_what_is_queued() -> None:
    queue = DeviceAudio("room:x:audio", silence=DATA, maxlen=3)
    for seq in range(4):
        queue.deliver(publication(packet(1, seq, start=seq == 0)))
    queue.lost(Unavailable("events were lost"))
    flags = drain(queue)
    assert well_formed(flags) and flags[-1] == (False, True) and len(flags) == 3
    assert not queue.closed
