"""Chat meets devices: a chat user watches a device room and presses its buttons.

Through the hub's ``chat.Rooms`` service over real gRPC, driven by the
terminal client's ``RoomControl`` in-process and by the real ``hub`` client
process reading commands from a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys

import grpc
import pytest
from chat_helpers import (
    PASSWORD,
    OpenChannel,
    ServeHub,
    eventually,
    login,
    logout,
    timeout,
    watch_room,
)
from fake_clock import clock_from_now

from clients.py_cli.rooms import RoomControl
from hub.audio.library import SoundLibrary
from hub.audio.sources import long_sound
from hub.core.rooms import status_channel
from hub.core.roomstate import RoomState
from hub.lines import Printer
from hub.proto import chat_pb2, chat_pb2_grpc, comms_pb2_grpc
from hub.settings import ChatSettings, Settings

pytestmark = pytest.mark.asyncio

LIBRARY = SoundLibrary({0: long_sound(0.5), 1: long_sound(1.0)})


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


async def wait_line(stream: io.StringIO, fragment: str) -> str:
    await eventually(lambda: any(fragment in line for line in lines(stream)), repr(fragment))
    return next(line for line in lines(stream) if fragment in line)


async def test_watch_and_press_from_the_chat_client(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    served = await serve_hub(library=LIBRARY)
    channel = open_channel(served.address)
    token = await login(channel, "alice")
    out = io.StringIO()
    rooms = RoomControl(channel, token, Printer(out, color=False))

    await rooms.run("/play")
    await wait_line(out, "/play: watch a room first")

    await rooms.run("/watch kitchen")
    first = await wait_line(out, "<<Room kitchen>>: idle, mode 1")
    assert "0 here" in first

    # A device comes: the watcher reads it.
    device = comms_pb2_grpc.DeviceServiceStub(channel)  # type: ignore[no-untyped-call]
    status = device.StatusStream(metadata=(("device_id", "kitchen"),))
    await asyncio.wait_for(status.read(), timeout())
    await wait_line(out, "a device joined (1 here)")

    await rooms.run("/mode")
    await wait_line(out, "mode 2: ")
    room = served.hub.rooms.get("kitchen")
    assert room.mode == 1

    await rooms.run("/play")
    await wait_line(out, "<<Room kitchen>>: playing")
    assert room.state is RoomState.PLAYING

    await rooms.run("/stop")
    await wait_line(out, "<<Room kitchen>>: stopped")
    assert room.state is RoomState.IDLE

    status.cancel()
    await wait_line(out, "a device left (0 here)")
    await rooms.close()
    # Watching is not presence: the room counts no member for the watcher.
    assert room.members == 0


async def test_rooms_service_needs_a_token(serve_hub: ServeHub, open_channel: OpenChannel) -> None:
    served = await serve_hub(library=LIBRARY)
    stub = chat_pb2_grpc.RoomsStub(open_channel(served.address))  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.aio.AioRpcError) as press:
        await stub.Press(chat_pb2.PressRequest(room="kitchen", button=chat_pb2.PressRequest.PLAY))
    assert press.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as watch:
        await stub.Watch(
            chat_pb2.WatchRequest(room="kitchen"), metadata=(("x-chat-token", "forged"),)
        ).read()
    assert watch.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "kitchen" not in served.hub.rooms  # a refused caller creates nothing


async def test_the_hub_client_presses_buttons_from_a_pipe(serve_hub: ServeHub) -> None:
    served = await serve_hub(library=LIBRARY)
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub",
        "-h", served.address, "-p", PASSWORD, "-n", "alice", "--room", "porch",
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert client.stdin is not None and client.stderr is not None
    seen: list[str] = []

    async def read_until(fragment: str) -> None:
        assert client.stderr is not None
        while not any(fragment in line for line in seen):
            raw = await asyncio.wait_for(client.stderr.readline(), timeout(10))
            assert raw, f"client exited before {fragment!r}: {seen}"
            seen.append(raw.decode())

    await read_until("<<Room porch>>: idle, mode 1")
    client.stdin.write(b"/mode\n/play\n")
    await read_until("<<Room porch>>: playing")
    assert served.hub.rooms.get("porch").mode == 1
    client.stdin.write(b"/stop\n//mode is a message\n")
    await read_until("<<Room porch>>: stopped")
    await read_until("alice: /mode is a message")
    client.stdin.close()
    assert await asyncio.wait_for(client.wait(), timeout(10)) == 0


# -- Watch belongs to the token's session ----------------------------------------


async def watch_ended(call: grpc.aio.UnaryStreamCall) -> tuple[grpc.StatusCode, str]:
    """Read a Watch to its end (gRPC gives the status only after the events)."""

    async def drain() -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            while await call.read() is not grpc.aio.EOF:
                pass

    await asyncio.wait_for(drain(), timeout(10))
    return await call.code(), await call.details()


async def test_logout_ends_the_sessions_watch(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    served = await serve_hub(library=LIBRARY)
    channel = open_channel(served.address)
    token = await login(channel, "alice")
    other = await login(channel, "bob")
    mine, theirs = watch_room(channel, token, "hall"), watch_room(channel, other, "hall")
    for call in (mine, theirs):
        first = await asyncio.wait_for(call.read(), timeout())
        assert "idle, mode 1" in first.text
    await logout(channel, token)
    assert await watch_ended(mine) == (grpc.StatusCode.UNAUTHENTICATED, "logged out")
    # Another session's watch goes on.
    stub = chat_pb2_grpc.RoomsStub(channel)  # type: ignore[no-untyped-call]
    await stub.Press(
        chat_pb2.PressRequest(room="hall", button=chat_pb2.PressRequest.MODE),
        metadata=(("x-chat-token", other),),
    )
    assert "mode 2" in (await asyncio.wait_for(theirs.read(), timeout())).text
    theirs.cancel()


async def test_expiry_ends_the_sessions_watch(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    clock = clock_from_now()
    settings = Settings(chat=ChatSettings(password=PASSWORD, token_ttl=60.0))
    served = await serve_hub(settings, clock=clock, library=LIBRARY)
    channel = open_channel(served.address)
    call = watch_room(channel, await login(channel, "alice"), "hall")
    assert "idle, mode 1" in (await asyncio.wait_for(call.read(), timeout())).text
    clock.advance(62.0)  # the token's lifetime, rounded up to a whole second
    assert await watch_ended(call) == (grpc.StatusCode.UNAUTHENTICATED, "token expired")
    await eventually(
        lambda: served.hub.subscriber_count(status_channel("hall")) == 0, "no watcher left"
    )
