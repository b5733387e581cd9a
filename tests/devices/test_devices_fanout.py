"""Several devices in one room: same bytes, same LEDs, joining, vanishing, reconnecting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from chat_helpers import eventually
from device_helpers import (
    IDLE,
    LONG,
    MODES,
    PLAYING,
    TONE_A,
    TONE_B,
    TONE_C,
    DeviceHub,
    NewDevice,
    frame,
    hearing_the_long_sound,
)
from fake_clock import FakeClock
from stock_device import StockDevice, wait_all

from hub.core.roomstate import RoomState

pytestmark = pytest.mark.asyncio

ROOM = "hall"


def heard_at_least(device: StockDevice, count: int) -> Callable[[], bool]:
    return lambda: len(device.packets) >= count


def has_streams(count: int) -> Callable[[StockDevice], bool]:
    return lambda device: len(device.streams) == count


@pytest.mark.parametrize("count", [2, 10])
async def test_devices_in_a_room_hear_identical_bytes_and_share_leds(
    served: DeviceHub, new_device: NewDevice, count: int
) -> None:
    devices = [await new_device(served.address, ROOM) for _ in range(count)]
    await served.ready(devices)
    assert served.room(ROOM).members == count
    # A button on any device acts on the whole room: each presses Mode once.
    for device in devices:
        assert await device.mode() is True
    mode = count % MODES
    assert mode != LONG
    await wait_all(devices, lambda d: d.shows(frame(IDLE, mode)), what=f"mode {mode}")
    assert await devices[-1].play() is True
    await wait_all(devices, lambda d: d.shows(frame(PLAYING, mode)), what="playing LEDs")
    await wait_all(devices, lambda d: len(d.streams) == 1, what="the whole stream")
    expected = served.expected_stream(mode)
    for device in devices:
        assert device.data == expected  # identical bytes, the same for all
        assert [(p.is_start, p.is_end) for p in device.packets] == [
            (p.is_start, p.is_end) for p in devices[0].packets
        ]
    await wait_all(devices, lambda d: d.shows(frame(IDLE, mode)), what="idle LEDs")
    assert len({tuple(d.leds) for d in devices}) == 1
    # Mode from one device, Play from another, Stop from a third: all hear it.
    while served.room(ROOM).mode != LONG:
        assert await devices[1].mode() is True
    assert await devices[0].play() is True
    await wait_all(devices, lambda d: d.current is not None, what="a second stream")
    await wait_all(devices, lambda d: d.shows(frame(PLAYING, LONG)), what="playing LEDs")
    assert await devices[count // 2].stop() is True
    await wait_all(devices, lambda d: len(d.streams) == 2, what="Stop heard by all")
    await wait_all(devices, lambda d: d.shows(frame(IDLE, LONG)), what="idle LEDs")
    for device in devices:
        assert device.data == devices[0].data
        assert device.streams[1].data[-1] == served.hub.rooms.silence


async def test_a_device_joining_mid_stream_gets_a_start_then_the_end(
    served: DeviceHub, new_device: NewDevice
) -> None:
    first = await new_device(served.address, ROOM)
    await served.ready([first])
    assert await first.play() is True  # the long sound
    await first.wait_for(lambda: len(first.packets) >= 20, what="the stream under way")
    late = await new_device(served.address, ROOM)
    await served.ready([first, late])
    await late.wait_for(lambda: len(late.packets) >= 10, what="the late device hearing")
    await late.wait_ready()
    assert late.frames[0] == frame(PLAYING, LONG)  # it sees the room as it is
    assert late.packets[0].is_start  # its first packet opens its file
    assert late.current is not None and late.audio_dead is None
    assert await late.stop() is True
    await wait_all([first, late], lambda d: len(d.streams) == 1, what="the end for both")
    assert late.streams[0].data == first.data[-len(late.data) :]  # the same bytes, joined late
    assert first.packets[-len(late.data)].is_start is False  # flagged for the late one only
    assert late.audio_dead is None
    # Its audio thread is alive: the next stream is heard whole.
    assert await late.mode() is True
    await late.wait_for(lambda: late.shows(frame(IDLE, TONE_A)))
    assert await first.play() is True
    await wait_all([first, late], lambda d: len(d.streams) == 2, what="the next stream")
    assert late.streams[1].data == served.expected_stream(TONE_A)


async def test_devices_joining_around_the_end_never_get_an_end_without_a_start(
    served: DeviceHub, new_device: NewDevice
) -> None:
    first = await new_device(served.address, ROOM)
    await served.ready([first])
    for _ in range(TONE_B):
        assert await first.mode() is True
    await first.wait_for(lambda: first.shows(frame(IDLE, TONE_B)))
    total = len(served.expected_stream(TONE_B))
    assert await first.play() is True
    joiners: list[StockDevice] = []
    # Join as the last packets and the end mark go out, and just after.
    for heard in (total - 8, total - 5, total - 3, total - 2, total - 1, total):
        await first.wait_for(heard_at_least(first, heard))
        joiners.append(await new_device(served.address, ROOM))
    await first.wait_for(lambda: len(first.streams) == 1)
    await served.ready([first, *joiners])
    for joiner in joiners:
        assert joiner.audio_dead is None
        assert all(s.packets[0].is_start and s.packets[-1].is_end for s in joiner.streams)
    partial = sum(1 for joiner in joiners if joiner.streams)
    print(f"\n{partial} of {len(joiners)} joiners heard the end of the first stream")
    # Every joiner's audio thread still works: the next stream is heard whole by all.
    expected = served.expected_stream(TONE_B)
    assert await first.play() is True
    await first.wait_for(lambda: len(first.streams) == 2, what="the next stream")
    await wait_all(
        joiners,
        lambda d: d.current is None and bool(d.streams) and d.streams[-1].data == expected,
        what="the next stream heard whole",
    )


@pytest.mark.parametrize("how", ["relay-reset", "channel-close"])
async def test_a_vanishing_device_disturbs_nobody_and_leaks_nothing(
    served: DeviceHub, new_device: NewDevice, how: str
) -> None:
    stayers = [await new_device(served.address, ROOM) for _ in range(2)]
    leaver = await new_device(served.address, ROOM, relay=how == "relay-reset")
    await served.ready([*stayers, leaver])
    for _ in range(TONE_C):
        assert await stayers[0].mode() is True
    await wait_all([*stayers, leaver], lambda d: d.shows(frame(IDLE, TONE_C)))
    assert await leaver.play() is True
    await leaver.wait_for(lambda: len(leaver.packets) >= 10, what="the stream under way")
    await leaver.vanish()
    await eventually(
        lambda: served.listeners(ROOM) == (2, 2) and served.room(ROOM).members == 2,
        "the vanished device gone from the hub",
    )
    await wait_all(stayers, lambda d: len(d.streams) == 1, what="the whole stream")
    for device in stayers:
        assert device.data == served.expected_stream(TONE_C)  # no gap, nothing lost
    room = served.room(ROOM)
    assert room.state is RoomState.IDLE
    for device in stayers:
        await device.disconnect()
    await eventually(lambda: served.listeners(ROOM) == (0, 0), "no subscribers left")
    assert room.members == 0


async def test_reconnecting_within_the_linger_finds_the_room_as_it_was(
    served: DeviceHub, new_device: NewDevice
) -> None:
    devices = [await new_device(served.address, ROOM) for _ in range(2)]
    await served.ready(devices)
    for device in devices:
        assert await device.mode() is True
    await wait_all(devices, lambda d: d.shows(frame(IDLE, TONE_B)))
    for device in devices:
        await device.disconnect()
        assert device.leds[0] == device.leds[1] == 0  # the device dims them itself
    await eventually(lambda: served.room(ROOM).members == 0, "an empty room")
    for device in devices:
        await device.connect()
    await served.ready(devices)
    for device in devices:
        assert device.frames[0] == frame(IDLE, TONE_B)  # the mode survived
    # One audio stream per connection carries every Play and Stop.
    for cycle in range(8):
        assert await devices[cycle % 2].play() is True
        await wait_all(devices, lambda d: d.current is not None and len(d.current.packets) >= 3)
        assert await devices[(cycle + 1) % 2].stop() is True
        await wait_all(devices, has_streams(cycle + 1))
    assert await devices[0].play() is True  # and a natural end
    await wait_all(devices, lambda d: len(d.streams) == 9)
    for device in devices:
        assert device.deaf is None and device.audio_dead is None
        assert device.streams[-1].data == served.expected_stream(TONE_B)
        assert device.connections == 2


async def test_the_last_device_leaving_stops_the_sound(
    served: DeviceHub, new_device: NewDevice
) -> None:
    device = await hearing_the_long_sound(served, new_device, ROOM, packets=5)
    await device.disconnect()
    await eventually(
        lambda: served.room(ROOM).state is RoomState.IDLE and served.room(ROOM).members == 0,
        "the room stopped",
    )
    await device.connect()
    await served.ready([device])
    assert device.frames[0] == frame(IDLE, LONG)
    assert device.packets == []


@pytest.mark.parametrize("hub_clock", ["fake"], indirect=True)
async def test_an_empty_room_forgets_its_mode_after_the_linger(
    served: DeviceHub, new_device: NewDevice, hub_clock: FakeClock
) -> None:
    linger = served.hub.rooms.linger
    device = await new_device(served.address, ROOM)
    await served.ready([device])
    assert await device.mode() is True
    await device.wait_for(lambda: device.shows(frame(IDLE, TONE_A)))
    await device.disconnect()
    await eventually(lambda: served.room(ROOM).lingering, "the room empty, lingering")
    hub_clock.advance(linger - 1.0)
    assert ROOM in served.hub.rooms  # not before the linger
    hub_clock.advance(1.0)
    await eventually(lambda: ROOM not in served.hub.rooms, "the room forgotten")
    await device.connect()
    await served.ready([device])
    assert device.frames[0] == frame(IDLE, LONG)


async def test_a_crowd_pressing_at_once_neither_cuts_nor_deafens_anyone(
    served: DeviceHub, new_device: NewDevice
) -> None:
    """Ten devices pressing Mode, then Play, as fast as they can, all at once.

    Each press publishes a notice and a frame, each Play an end and a start:
    more than a device's queues hold while it waits on its own writes. Its
    StatusStream must not be cut as a slow consumer, nor its audio stream
    ended (deaf), nor its audio thread killed.
    """
    devices = [await new_device(served.address, ROOM) for _ in range(10)]
    await served.ready(devices)

    async def press(device: StockDevice, button: str, times: int) -> None:
        for _ in range(times):
            assert await getattr(device, button)() is True

    await asyncio.gather(*(press(d, "mode", 9) for d in devices))
    room = served.room(ROOM)
    assert room.mode == 90 % MODES == TONE_B
    await wait_all(devices, lambda d: d.shows(room.frame), what="the room's frame")
    assert room.members == 10 and served.listeners(ROOM) == (10, 10)
    await asyncio.gather(*(press(d, "play", 5) for d in devices))
    assert await devices[0].stop() is True
    await wait_all(devices, lambda d: d.shows(frame(IDLE, TONE_B)), what="idle LEDs")
    assert room.members == 10 and served.listeners(ROOM) == (10, 10)
    # All still hear: one more stream, whole, the same bytes for all.
    expected = served.expected_stream(TONE_B)
    assert await devices[-1].play() is True
    await wait_all(
        devices,
        lambda d: d.current is None and bool(d.streams) and d.streams[-1].data == expected,
        what="a last stream, whole",
    )
    print(f"\nstreams heard per device: {sorted(len(d.streams) for d in devices)}")
    assert room.members == 10 and served.listeners(ROOM) == (10, 10)
    for device in devices:
        device.check()  # no RPC cut, no trap
