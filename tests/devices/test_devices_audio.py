"""Play, Stop, Mode and Play again, heard through real gRPC by stock devices."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from device_helpers import (
    IDLE,
    LONG,
    PLAYING,
    TONE_A,
    TONE_B,
    TONE_C,
    DeviceHub,
    NewDevice,
    StartHub,
    frame,
    hearing_the_long_sound,
    percentiles,
    prefix_correlation,
)
from stock_device import StockDevice

from hub.audio.library import SoundLibrary
from hub.audio.sources import GeneratedSound, Pcm
from hub.core.roomstate import RoomState

pytestmark = pytest.mark.asyncio

ROOM = "studio"


async def select(device: StockDevice, mode: int) -> None:
    """Press Mode until the room is in ``mode`` (from an idle room)."""
    for _ in range(mode):
        assert await device.mode() is True
    await device.wait_for(lambda: device.shows(frame(IDLE, mode)), what=f"mode {mode}")


def streams_then_open(device: StockDevice, count: int, *, open_: bool = True) -> Callable[[], bool]:
    """``count`` streams played, and (``open_``) another one under way."""
    return lambda: len(device.streams) == count and (device.current is not None or not open_)


def assert_well_formed(device: StockDevice) -> None:
    """Every stream opens with is_start on its first packet and closes with is_end."""
    for played in device.streams:
        flags = [(p.is_start, p.is_end) for p in played.packets]
        assert flags[0][0] and not any(start for start, _ in flags[1:])
        assert flags[-1][1] and not any(end for _, end in flags[:-1])


async def test_play_runs_to_its_natural_end(served: DeviceHub, new_device: NewDevice) -> None:
    device = await new_device(served.address, ROOM)
    await served.ready([device])
    await select(device, TONE_A)
    pressed = time.monotonic()
    assert await device.play() is True
    await device.wait_for(lambda: device.shows(frame(PLAYING, TONE_A)), what="playing LEDs")
    await device.wait_for(lambda: len(device.streams) == 1, what="the whole stream")
    played = device.streams[0]
    assert_well_formed(device)
    # Exactly the sound's packets, in order, nothing skipped, then the end mark.
    assert played.data == served.expected_stream(TONE_A)
    assert device.data == played.data
    correlation = served.correlation(played, TONE_A)
    others = [served.correlation(played, m) for m in (TONE_B, TONE_C)]
    print(f"\nmode {TONE_A} correlation {correlation:.3f}, other modes {others}")
    assert correlation > 0.9
    assert max(others) < 0.5
    # Paced as it plays, not dumped: about the sound's length from start to end.
    sound = served.hub.rooms.library[TONE_A]
    assert sound.duration is not None
    assert played.ended is not None
    span = played.ended - played.started
    print(f"Play -> first packet {(played.started - pressed) * 1000:.1f} ms, stream {span:.2f} s")
    assert sound.duration - 0.2 < span < sound.duration + 1.0
    await device.wait_for(lambda: device.shows(frame(IDLE, TONE_A)), what="idle LEDs again")
    assert served.room(ROOM).state is RoomState.IDLE


async def test_stop_ends_a_long_sound_at_once(served: DeviceHub, new_device: NewDevice) -> None:
    # Mode 0 is two minutes long; 25 packets are half a second of it.
    device = await hearing_the_long_sound(served, new_device, ROOM, packets=25)
    await device.wait_for(lambda: device.shows(frame(PLAYING, LONG)), what="playing LEDs")
    pressed = time.monotonic()
    assert await device.stop() is True
    await device.wait_for(lambda: len(device.streams) == 1, what="the end of the stream")
    played = device.streams[0]
    assert played.ended is not None
    latency = played.ended - pressed
    print(f"\nStop -> is_end {latency * 1000:.1f} ms after {len(played.packets)} packets")
    assert latency < 0.5
    assert_well_formed(device)
    assert played.data[-1] == served.hub.rooms.silence  # the cut ends on a valid packet
    reference = served.reference(LONG)
    assert prefix_correlation(played, reference) > 0.9
    await device.wait_for(lambda: device.shows(frame(IDLE, LONG)), what="idle LEDs")
    assert served.room(ROOM).state is RoomState.IDLE
    # Nothing of the stopped stream follows its end: the next packet opens a new one.
    ended = len(device.packets)
    assert await device.play() is True
    await device.wait_for(lambda: len(device.packets) > ended + 5, what="a new stream")
    assert device.packets[ended].is_start
    assert device.packets[ended - 1].is_end
    assert await device.stop() is True
    await device.wait_for(lambda: len(device.streams) == 2, what="the second end")
    assert_well_formed(device)


async def test_play_during_play_restarts_with_the_new_mode(
    served: DeviceHub, new_device: NewDevice
) -> None:
    """The long mode-1 sound, Mode to mode 2, Play: mode 2's sound from its start."""
    device = await hearing_the_long_sound(served, new_device, ROOM, packets=10)
    first = device.current
    assert first is not None
    assert await device.mode() is True
    await device.wait_for(lambda: device.shows(frame(PLAYING, TONE_A)), what="mode 2, playing")
    heard = len(device.packets)
    await device.wait_for(lambda: len(device.packets) >= heard + 10, what="the sound going on")
    assert device.current is first and not device.streams  # the same stream goes on
    assert await device.play() is True
    await device.wait_for(lambda: len(device.streams) == 2, what="the second stream's end")
    cut, second = device.streams
    assert cut is first
    assert_well_formed(device)
    cut_at = len(cut.packets)
    assert device.packets[cut_at - 1].is_end and device.packets[cut_at].is_start
    assert prefix_correlation(cut, served.reference(LONG)) > 0.9
    assert second.data == served.expected_stream(TONE_A)
    assert served.correlation(second, TONE_A) > 0.9
    assert not device.dropped
    await device.wait_for(lambda: device.shows(frame(IDLE, TONE_A)), what="idle LEDs")


async def test_mode_during_play_changes_leds_and_the_sound_plays_on(
    served: DeviceHub, new_device: NewDevice
) -> None:
    device = await new_device(served.address, ROOM)
    await served.ready([device])
    await select(device, TONE_C)
    assert await device.play() is True
    await device.wait_for(lambda: len(device.packets) >= 5, what="the sound")
    assert await device.mode() is True  # wraps round to mode 0
    await device.wait_for(lambda: device.shows(frame(PLAYING, LONG)), what="new mode, playing")
    assert device.leds[1] == frame(PLAYING, LONG)[1] >> 8  # still the playing colour
    assert not device.streams and device.current is not None
    await device.wait_for(lambda: len(device.streams) == 1, what="the end of the sound")
    # The sound that was playing, whole and uninterrupted.
    assert device.streams[0].data == served.expected_stream(TONE_C)
    assert served.correlation(device.streams[0], TONE_C) > 0.9
    await device.wait_for(lambda: device.shows(frame(IDLE, LONG)), what="idle in the new mode")


async def test_play_and_stop_latencies(served: DeviceHub, new_device: NewDevice) -> None:
    """Measured through real gRPC on loopback; asserted only against sanity bounds."""
    device = await new_device(served.address, ROOM)
    await served.ready([device])
    to_first: list[float] = []
    to_end: list[float] = []
    for cycle in range(12):
        pressed = time.monotonic()
        assert await device.play() is True
        await device.wait_for(streams_then_open(device, cycle))
        assert device.current is not None
        to_first.append(device.current.started - pressed)
        await device.wait_for(
            lambda: device.current is not None and len(device.current.packets) >= 8
        )
        pressed = time.monotonic()
        assert await device.stop() is True
        await device.wait_for(streams_then_open(device, cycle + 1, open_=False))
        ended = device.streams[-1].ended
        assert ended is not None
        to_end.append(ended - pressed)
    print(f"\nPlay -> first packet: {percentiles(to_first)}")
    print(f"Stop -> is_end:       {percentiles(to_end)}")
    assert max(to_first) < 0.5
    assert max(to_end) < 0.5
    assert_well_formed(device)
    assert len(device.streams) == 12


def broken(first: int, count: int) -> Pcm:
    raise OSError("the disk went away")


async def test_a_sound_that_cannot_play_shows_red_and_sends_no_stray_end(
    start_hub: StartHub,
    new_device: NewDevice,
    device_library: SoundLibrary,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = GeneratedSound("broken", key="test:broken", duration=5.0, render=broken)
    library = SoundLibrary({0: bad, 1: device_library[TONE_A]})
    served = await start_hub(library=library)
    device = await new_device(served.address, ROOM)
    await served.ready([device])
    assert await device.play() is True
    await device.wait_for(lambda: device.shows(frame(RoomState.ERROR, 0)), what="the red LED")
    assert served.room(ROOM).state is RoomState.ERROR
    # The room published an end mark for a stream that never sent a packet:
    # the gate must keep it from the device, whose audio thread it would kill.
    assert device.packets == [] and device.audio_dead is None
    assert await device.mode() is True  # Mode leaves the error behind
    await device.wait_for(lambda: device.shows(frame(IDLE, 1)))
    assert await device.play() is True
    await device.wait_for(lambda: len(device.streams) == 1)
    assert device.streams[0].data == served.expected_stream(1)
    assert any("cannot play" in r.getMessage() for r in caplog.records)
    caplog.clear()  # the errors above were the point of the test
