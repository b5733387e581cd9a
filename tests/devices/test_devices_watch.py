"""The Rooms service: chat users watching a room and pressing its buttons."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from chat_helpers import eventually, login, rpc_error, timeout
from device_helpers import (
    IDLE,
    LONG,
    PLAYING,
    TONE_A,
    DeviceHub,
    NewDevice,
    frame,
)
from fake_clock import FakeClock
from stock_device import wait_all

from hub.proto import chat_pb2, chat_pb2_grpc
from hub.rpc.chat import TOKEN_HEADER

pytestmark = pytest.mark.asyncio

ROOM = "porch"
Code = grpc.StatusCode
Button = chat_pb2.PressRequest


@pytest_asyncio.fixture
async def channel(served: DeviceHub) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(served.address) as channel:
        yield channel


class Watcher:
    def __init__(self, channel: grpc.aio.Channel, room: str, token: str | None) -> None:
        metadata = () if token is None else ((TOKEN_HEADER, token),)
        stub = chat_pb2_grpc.RoomsStub(channel)  # type: ignore[no-untyped-call]
        self.call = stub.Watch(chat_pb2.WatchRequest(room=room), metadata=metadata)

    async def next(self) -> chat_pb2.RoomEvent:
        event = await asyncio.wait_for(self.call.read(), timeout())
        assert isinstance(event, chat_pb2.RoomEvent), event
        stamp = event.timestamp.ToNanoseconds() / 1e9
        assert abs(stamp - time.time()) < 5
        return event

    async def text(self) -> str:
        return await self.text_of(ROOM)

    async def text_of(self, room: str) -> str:
        event = await self.next()
        assert event.room == room
        return str(event.text)


async def press(channel: grpc.aio.Channel, token: str, button: chat_pb2.PressRequest.Button) -> str:
    stub = chat_pb2_grpc.RoomsStub(channel)  # type: ignore[no-untyped-call]
    response = await asyncio.wait_for(
        stub.Press(
            chat_pb2.PressRequest(room=ROOM, button=button), metadata=((TOKEN_HEADER, token),)
        ),
        timeout(),
    )
    return str(response.state)


async def test_watch_tells_the_story_of_a_room(
    served: DeviceHub, new_device: NewDevice, channel: grpc.aio.Channel
) -> None:
    token = await login(channel, "carol")
    watcher = Watcher(channel, ROOM, token)
    assert await watcher.text() == "idle, mode 1: long, 0 here"
    device = await new_device(served.address, ROOM)
    assert await watcher.text() == "a device joined (1 here)"
    await served.ready([device])
    assert await device.mode() is True
    assert await watcher.text() == "mode 2: tone-a"
    assert await device.play() is True
    assert await watcher.text() == "playing tone-a"
    assert await watcher.text() == "finished"
    assert await device.mode() is True
    assert await device.mode() is True
    assert await device.mode() is True
    assert [await watcher.text() for _ in range(3)] == [
        "mode 3: tone-b",
        "mode 4: tone-c",
        "mode 1: long",
    ]
    assert await device.play() is True
    assert await watcher.text() == "playing long"
    assert await device.play() is True  # Play again: no "stopped", a new start
    assert await watcher.text() == "playing long"
    assert await device.stop() is True
    assert await watcher.text() == "stopped"
    await device.disconnect()
    assert await watcher.text() == "a device left (0 here)"
    # A watcher is not a member: the room stays empty.
    assert served.room(ROOM).members == 0
    watcher.call.cancel()


async def test_press_acts_on_the_room_and_its_devices(
    served: DeviceHub, new_device: NewDevice, channel: grpc.aio.Channel
) -> None:
    token = await login(channel, "dave")
    devices = [await new_device(served.address, ROOM) for _ in range(2)]
    await served.ready(devices)
    assert await press(channel, token, Button.MODE) == "idle, mode 2: tone-a, 2 here"
    await wait_all(devices, lambda d: d.shows(frame(IDLE, TONE_A)))
    assert await press(channel, token, Button.PLAY) == "playing, mode 2: tone-a, 2 here"
    await wait_all(devices, lambda d: len(d.streams) == 1)
    for device in devices:
        assert device.streams[0].data == served.expected_stream(TONE_A)
    assert await press(channel, token, Button.MODE) == "idle, mode 3: tone-b, 2 here"
    assert await press(channel, token, Button.MODE) == "idle, mode 4: tone-c, 2 here"
    assert await press(channel, token, Button.MODE) == "idle, mode 1: long, 2 here"
    assert await press(channel, token, Button.PLAY) == "playing, mode 1: long, 2 here"
    await wait_all(devices, lambda d: d.shows(frame(PLAYING, LONG)) and d.current)
    assert await press(channel, token, Button.STOP) == "idle, mode 1: long, 2 here"
    await wait_all(devices, lambda d: len(d.streams) == 2 and d.shows(frame(IDLE, LONG)))


async def test_rooms_service_refuses_without_a_valid_token(
    served: DeviceHub, channel: grpc.aio.Channel
) -> None:
    stub = chat_pb2_grpc.RoomsStub(channel)  # type: ignore[no-untyped-call]
    for metadata, details in (
        ((), "missing token header"),
        (((TOKEN_HEADER, "x"),), "invalid token"),
    ):
        watch = stub.Watch(chat_pb2.WatchRequest(room=ROOM), metadata=metadata)
        error = await rpc_error(watch.read())
        assert (error.code(), error.details()) == (Code.UNAUTHENTICATED, details)
        error = await rpc_error(
            stub.Press(chat_pb2.PressRequest(room=ROOM, button=Button.PLAY), metadata=metadata)
        )
        assert (error.code(), error.details()) == (Code.UNAUTHENTICATED, details)
    token = await login(channel, "erin")
    bad = [
        (chat_pb2.PressRequest(room=ROOM, button=9), Code.INVALID_ARGUMENT),  # type: ignore[arg-type]
        (chat_pb2.PressRequest(room="", button=Button.PLAY), Code.INVALID_ARGUMENT),
    ]
    for request, code in bad:
        error = await rpc_error(stub.Press(request, metadata=((TOKEN_HEADER, token),)))
        assert error.code() is code
    assert ROOM not in served.hub.rooms or served.room(ROOM).state is IDLE


def room_tasks(room: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(f"room {room} ")]


@pytest.mark.parametrize("hub_clock", ["fake"], indirect=True)
async def test_rooms_opened_by_watchers_are_forgotten_and_stop_playing(
    served: DeviceHub, new_device: NewDevice, channel: grpc.aio.Channel, hub_clock: FakeClock
) -> None:
    """Press and Watch open rooms nobody joins: they must not pile up, nor play on."""
    token = await login(channel, "frank")
    assert await press(channel, token, Button.PLAY) == "playing, mode 1: long, 0 here"
    watcher = Watcher(channel, "elsewhere", token)
    assert await watcher.text_of("elsewhere") == "idle, mode 1: long, 0 here"
    assert room_tasks(ROOM)  # the long sound plays to nobody, for now
    assert served.room(ROOM).lingering and served.room("elsewhere").lingering
    hub_clock.advance(served.hub.rooms.linger)
    await eventually(
        lambda: ROOM not in served.hub.rooms and "elsewhere" not in served.hub.rooms,
        "both rooms forgotten after the linger",
    )
    await eventually(lambda: not room_tasks(ROOM), "the room's player gone")
    assert served.listeners(ROOM) == (0, 0)
    # A device arriving later finds a fresh room, with no stray sound in it.
    device = await new_device(served.address, ROOM)
    await served.ready([device])
    assert device.frames[0] == frame(IDLE, LONG)
    assert await device.mode() is True
    await device.wait_for(lambda: device.shows(frame(IDLE, TONE_A)))
    assert device.packets == []
    watcher.call.cancel()
