"""A device stream is served or ended with a status, never half-alive.

- A malformed ``DeviceStatusResponse`` ends the StatusStream with
  ``INVALID_ARGUMENT``; until then the device's LED-failure reports are logged.
- With ``--device-token`` a device's three streams belong to the token's
  session: Logout and expiry end each of them, and a Mode press after the
  Logout is neither acknowledged nor applied.

Through real gRPC: the stock device client, and raw calls for bytes it would
never send.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from chat_helpers import PASSWORD, eventually, login, logout, timeout
from device_helpers import IDLE, NewDevice, StartHub, device_hub_settings, frame
from fake_clock import clock_from_now
from stock_device import StockDevice

from hub.proto import comms_pb2
from hub.rpc.devices import DEVICE_ID_HEADER
from hub.settings import ChatSettings, DeviceSettings, Settings

pytestmark = pytest.mark.asyncio

Code = grpc.StatusCode
ROOM = "kitchen"
STREAMS = {"StatusStream", "EventStream", "ServerAudioStream"}
STATUS_STREAM = "/com.opalcamera.test.DeviceService/StatusStream"


async def test_a_malformed_status_answer_ends_the_status_stream(
    start_hub: StartHub, caplog: pytest.LogCaptureFixture
) -> None:
    served = await start_hub()
    async with grpc.aio.insecure_channel(served.address) as channel:
        call = channel.stream_stream(STATUS_STREAM)(
            metadata=((DEVICE_ID_HEADER, ROOM),), timeout=timeout(10)
        )
        opening = comms_pb2.DeviceStatusRequest.FromString(await call.read())
        assert opening.WhichOneof("request") == "set"
        await eventually(lambda: served.room(ROOM).members == 1, "the device in its room")

        # Served: a failure report is read and logged.
        report = comms_pb2.DeviceStatusResponse(status="LED 3 did not light")
        await call.write(report.SerializeToString())
        await eventually(
            lambda: any("LED 3 did not light" in r.getMessage() for r in caplog.records),
            "the failure report in the log",
        )

        # A length that runs past the end: the stream ends, with a status.
        await call.write(b"\x12\x40LED")
        try:
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError:
            pass
        assert await call.code() is Code.INVALID_ARGUMENT
        assert await call.details() == "malformed com.opalcamera.test.DeviceStatusResponse"
    await eventually(lambda: served.room(ROOM).members == 0, "the device gone from its room")
    assert not [r for r in caplog.records if r.exc_info is not None]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("malformed com.opalcamera.test.DeviceStatusResponse" in m for m in warned)


async def ended(device: StockDevice, details: str) -> None:
    """Until all three streams of ``device`` have failed UNAUTHENTICATED ``details``."""
    await device.wait_for(lambda: set(device.failures) == STREAMS, what="three ended streams")
    for failure in device.failures.values():
        assert (failure.code, failure.details) == (Code.UNAUTHENTICATED, details), failure


async def test_logout_ends_every_stream_of_a_device_with_the_token(
    start_hub: StartHub, new_device: NewDevice
) -> None:
    served = await start_hub(device_hub_settings(require_token=True))
    async with grpc.aio.insecure_channel(served.address) as channel:
        token = await login(channel, "alice")
        other = await login(channel, "bob")
        device = await new_device(served.address, ROOM, token=token, check=False)
        bystander = await new_device(served.address, ROOM, token=other)
        await served.ready([device, bystander])
        assert await device.mode() is True
        await eventually(lambda: served.room(ROOM).mode == 1, "mode 2")

        await logout(channel, token)
        await ended(device, "logged out")
        # A press after the Logout is neither acknowledged nor applied.
        with pytest.raises((grpc.aio.AioRpcError, asyncio.InvalidStateError)):
            await device.mode()
        assert device.acks == [True]
        assert served.room(ROOM).mode == 1
        await eventually(lambda: served.room(ROOM).members == 1, "only the bystander left")
        assert served.listeners(ROOM) == (1, 1)

        # Another session's device goes on.
        assert await bystander.mode() is True
        await bystander.wait_for(lambda: bystander.shows(frame(IDLE, 2)), what="mode 3")


async def test_expiry_ends_every_stream_of_a_device_with_the_token(
    start_hub: StartHub, new_device: NewDevice
) -> None:
    settings = Settings(
        chat=ChatSettings(password=PASSWORD, token_ttl=60.0),
        devices=DeviceSettings(require_token=True),
    )
    clock = clock_from_now(auto_advance=False)
    served = await start_hub(settings, clock=clock)
    async with grpc.aio.insecure_channel(served.address) as channel:
        token = await login(channel, "alice")
    device = await new_device(served.address, ROOM, token=token, check=False)
    await served.ready([device])
    clock.advance(62.0)  # the token's lifetime, rounded up to a whole second
    await ended(device, "token expired")
    await eventually(lambda: served.listeners(ROOM) == (0, 0), "nobody left in the room")
    assert served.room(ROOM).members == 0
