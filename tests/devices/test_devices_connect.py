"""DeviceService through real gRPC: connecting, LED frames, acks, refusals."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from chat_helpers import eventually, login
from device_helpers import IDLE, MODES, DeviceHub, NewDevice, StartHub, device_hub_settings, frame
from stock_device import MODE, OWN_LED, PLAY, PRESS, STOP, StockDevice

from hub.core import leds
from hub.core.rooms import ROOM_ID_MAX
from hub.proto import comms_pb2

pytestmark = pytest.mark.asyncio


def shows(device: StockDevice, leds_: leds.Frame) -> Callable[[], bool]:
    return lambda: device.shows(leds_)


ROOM = "kitchen"
Code = grpc.StatusCode
ButtonId = comms_pb2.ButtonEvent.ButtonId
HOLD = comms_pb2.ButtonEvent.HOLD
RELEASE = comms_pb2.ButtonEvent.RELEASE


async def test_status_stream_opens_with_the_full_frame_then_flash_then_frame(
    served: DeviceHub, new_device: NewDevice
) -> None:
    device = await new_device(served.address, ROOM)
    await device.wait_ready()
    idle = frame(IDLE, 0)
    # The device says nothing first: the hub must open with a whole frame,
    # every LED present (led_0 too, which the device ignores).
    assert device.frames[0] == idle
    assert device.frames[1] == leds.flashed(idle)
    assert device.frames[2] == idle
    first = device.frame_times[0] - device.connected_at
    flash = device.frame_times[2] - device.frame_times[1]
    print(f"\nconnect -> first frame {first * 1000:.1f} ms, flash lasted {flash * 1000:.0f} ms")
    assert first < 1.0
    assert leds.FLASH_SECONDS - 0.05 <= flash < 1.0
    assert device.shows(idle)
    assert device.leds[0] == OWN_LED  # its own: nothing the hub sent touched it
    assert device.gets == 0
    assert served.room(ROOM).members == 1


async def test_mode_cycles_through_a_distinct_picture_per_mode(
    served: DeviceHub, new_device: NewDevice
) -> None:
    device = await new_device(served.address, ROOM)
    await device.wait_ready()
    pictures = [tuple(device.leds[1:])]
    for press in range(1, MODES + 1):
        assert await device.mode() is True
        mode = press % MODES
        await device.wait_for(shows(device, frame(IDLE, mode)), what=f"mode {mode}")
        assert device.last_frame == frame(IDLE, mode)
        pictures.append(tuple(device.leds[1:]))
    # Mode pressed MODES times is back at mode 0; every mode looked different.
    assert pictures[-1] == pictures[0]
    assert len(set(pictures[:-1])) == MODES
    amber, blue = 0xFFA000, 0x3050FF
    assert pictures[2] == (blue, amber, amber, amber, 0)  # mode 2: three amber dots
    assert pictures[0] == (blue, amber, 0, 0, 0)
    # Every frame the hub sent was whole (the fixture also checks for traps).
    assert all(None not in f for f in device.frames)


async def test_every_event_gets_exactly_one_response(
    served: DeviceHub, new_device: NewDevice
) -> None:
    device = await new_device(served.address, ROOM)
    await device.wait_ready()
    room = served.room(ROOM)
    assert await device.press(ButtonId.BUTTON_1) is False  # Connect is local: nothing to do
    assert await device.press(MODE, HOLD) is True
    assert await device.press(MODE, RELEASE) is True
    assert await device.press(PLAY, HOLD) is True
    assert await device.press(PLAY, RELEASE) is True
    assert room.mode == 0 and room.state is IDLE  # only PRESS acts
    assert await device.send_event(comms_pb2.DeviceEvent()) is False  # no button_event
    assert await device.press(7) is False  # a button id from a newer device
    assert await device.press(STOP) is True  # Stop when idle: nothing to stop, still acked
    assert await device.press(MODE, 5) is True  # unknown event type: acked, ignored
    assert room.mode == 0
    # A burst: the device blocks on each, so any missing or extra response shows.
    buttons = [ButtonId.BUTTON_1, MODE, STOP, MODE, ButtonId.BUTTON_1] * 10
    acks = [await device.press(button, PRESS) for button in buttons]
    assert acks == [button in (MODE, STOP) for button in buttons]
    assert room.mode == 20 % MODES
    await device.wait_for(lambda: device.shows(frame(IDLE, room.mode)))


@pytest.mark.parametrize(
    ("metadata", "details"),
    [
        ((), "device_id metadata is required"),
        ((("device_id", ""),), "device_id metadata is required"),
        ((("device-id", "kitchen"),), "device_id metadata is required"),
        ((("device_id", "two words"),), "device_id must be printable ASCII without spaces"),
        (
            (("device_id", "x" * (ROOM_ID_MAX + 1)),),
            f"device_id must be at most {ROOM_ID_MAX} characters",
        ),
    ],
    ids=["missing", "empty", "misspelt", "space", "too-long"],
)
async def test_a_bad_device_id_is_refused_on_every_rpc(
    served: DeviceHub, new_device: NewDevice, metadata: tuple[tuple[str, str], ...], details: str
) -> None:
    device = await new_device(served.address, None, metadata=metadata, check=False)
    await device.wait_for(lambda: len(device.failures) == 3, what="three refusals")
    for failure in device.failures.values():
        assert failure.code is Code.INVALID_ARGUMENT, failure
        assert failure.details == details
    assert len(served.hub.rooms) == 0  # nothing was opened for it
    assert device.frames == [] and device.packets == []


# -- tokens ------------------------------------------------------------------------


async def test_rooms_require_a_chat_token_when_configured(
    start_hub: StartHub, new_device: NewDevice
) -> None:
    served = await start_hub(device_hub_settings(require_token=True))
    anonymous = await new_device(served.address, ROOM, check=False)
    forged = await new_device(served.address, ROOM, token="not-a-token", check=False)
    await anonymous.wait_for(lambda: len(anonymous.failures) == 3, what="three refusals")
    await forged.wait_for(lambda: len(forged.failures) == 3, what="three refusals")
    for failure in anonymous.failures.values():
        assert failure.code is Code.UNAUTHENTICATED
        assert failure.details == f"room {ROOM} requires an x-chat-token token"
    for failure in forged.failures.values():
        assert failure.code is Code.UNAUTHENTICATED
        assert failure.details == "invalid token"
    assert len(served.hub.rooms) == 0

    async with grpc.aio.insecure_channel(served.address) as channel:
        token = await login(channel, "alice")
    device = await new_device(served.address, ROOM, token=token)
    await served.ready([device])
    assert device.frames[0] == frame(IDLE, 0)
    assert await device.mode() is True
    await device.wait_for(lambda: device.shows(frame(IDLE, 1)))


async def test_token_rooms_limit_the_token_to_the_rooms_named(
    start_hub: StartHub, new_device: NewDevice
) -> None:
    settings = device_hub_settings(require_token=True, token_rooms=frozenset({"vault"}))
    served = await start_hub(settings)
    guarded = await new_device(served.address, "vault", check=False)
    open_ = await new_device(served.address, "lobby")
    await guarded.wait_for(lambda: len(guarded.failures) == 3, what="three refusals")
    assert {f.code for f in guarded.failures.values()} == {Code.UNAUTHENTICATED}
    await served.ready([open_])
    assert "vault" not in served.hub.rooms

    async with grpc.aio.insecure_channel(served.address) as channel:
        token = await login(channel, "bob")
    allowed = await new_device(served.address, "vault", token=token)
    await served.ready([allowed])
    assert served.room("vault").members == 1


async def test_connect_refused_while_the_hub_shuts_down(
    served: DeviceHub, new_device: NewDevice
) -> None:
    await served.hub.shutdown()
    device = await new_device(served.address, ROOM, check=False)
    await device.wait_for(lambda: len(device.failures) == 3, what="three refusals")
    assert {(f.code, f.details) for f in device.failures.values()} == {
        (Code.UNAVAILABLE, "the server is shutting down")
    }


async def test_a_device_vanishing_before_answering_leaves_nothing_behind(
    served: DeviceHub, new_device: NewDevice
) -> None:
    devices = [await new_device(served.address, ROOM) for _ in range(3)]
    await served.ready(devices)
    started = time.monotonic()
    for device in devices:
        await device.disconnect()
    await eventually(
        lambda: served.listeners(ROOM) == (0, 0) and served.room(ROOM).members == 0,
        "every device gone from the room",
    )
    print(f"\nthree devices gone from the hub in {(time.monotonic() - started) * 1000:.0f} ms")
    assert ROOM in served.hub.rooms  # kept for the linger, with its mode
