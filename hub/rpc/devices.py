"""DeviceService: the stock device client's three RPCs onto a device room.

Traps of the stock client that shape this adapter (wire-contracts.md):
- it sends nothing on StatusStream until asked, so the room's frame goes out
  the moment the stream opens, and every ``set`` carries the full frame;
- it waits for exactly one response per event, so every event is acked once,
  even one the room ignores (ack=false for what it cannot understand);
- it decodes every AudioPacket.data as one Opus packet, dies of an is_end it
  had no is_start for, and goes deaf if ServerAudioStream ever ends: the
  AudioGate shapes each device's view, and the audio stream stays open for
  as long as the device does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from hub.core import leds
from hub.core.events import AudioFrame, LedFrame
from hub.core.hub import Hub
from hub.core.publication import Publication
from hub.core.rooms import Admit, AudioGate, Room, check_room_id
from hub.core.roomstate import Input
from hub.core.subscription import Overflow
from hub.errors import HubError, PermissionDenied, Unauthenticated
from hub.proto import comms_pb2
from hub.rpc.chat import TOKEN_HEADER
from hub.rpc.status import abort, metadata_value

log = logging.getLogger(__name__)

DEVICE_ID_HEADER = "device_id"

ButtonId = comms_pb2.ButtonEvent.ButtonId
BUTTONS: dict[int, Input] = {
    ButtonId.BUTTON_2: Input.MODE,
    ButtonId.BUTTON_3: Input.STOP,
    ButtonId.BUTTON_4: Input.PLAY,
}

# Queue bounds per device. Audio: 25 packets of 20 ms is half a second; a
# device further behind than that skips the oldest audio and catches up
# (the start and end marks are never skipped). Status: only the newest LED
# frame matters, so a short queue that drops old frames suffices.
AUDIO_QUEUE = 25
STATUS_QUEUE = 8


def encode_frame(leds_: tuple[int, ...]) -> bytes:
    frame = comms_pb2.DeviceStatusSet()
    for index, rgba in enumerate(leds_):
        getattr(frame, f"led_{index}").rgba = rgba
    return comms_pb2.DeviceStatusRequest(set=frame).SerializeToString()


def encode_status(pub: Publication) -> bytes:
    event = pub.event
    assert isinstance(event, LedFrame)
    return encode_frame(event.leds)


def encode_packet(pub: Publication) -> bytes:
    frame: AudioFrame = pub.event
    return comms_pb2.AudioPacket(
        is_start=frame.is_start, is_end=frame.is_end, data=frame.data
    ).SerializeToString()


def encode_packet_as_start(pub: Publication) -> bytes:
    """For a device that joins mid-stream: its first packet opens the stream."""
    frame: AudioFrame = pub.event
    return comms_pb2.AudioPacket(
        is_start=True, is_end=frame.is_end, data=frame.data
    ).SerializeToString()


class DeviceService:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def _room(self, context: grpc.aio.ServicerContext) -> Room:
        room_id = check_room_id(metadata_value(context, DEVICE_ID_HEADER))
        policy = self._hub.settings.devices
        if policy.requires_token(room_id):
            token = metadata_value(context, TOKEN_HEADER)
            if token is None:
                raise Unauthenticated(f"room {room_id} requires an {TOKEN_HEADER} token")
            session = self._hub.sessions.authenticate(token)
            log.info("%s: device access to room %s", session.id, room_id)
        if self._hub.closing:
            raise PermissionDenied("server is shutting down")
        return self._hub.rooms.get(room_id)

    async def status_stream(
        self,
        responses: AsyncIterator[comms_pb2.DeviceStatusResponse],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        try:
            room = self._room(context)
        except HubError as error:
            await abort(context, error)
        peer = context.peer()
        reader = asyncio.create_task(self._read_status(room, peer, responses))
        loop = asyncio.get_running_loop()
        try:
            async with (
                self._hub.rooms.join(room.id, "a device"),
                self._hub.subscribe(
                    room.status_channel,
                    maxlen=STATUS_QUEUE,
                    overflow=Overflow.DROP_OLDEST,
                    label=f"device {room.id} {peer}",
                ) as updates,
            ):
                # The device says nothing until asked: open with the room's
                # frame, then flash its state LED to show it has connected.
                yield encode_frame(room.frame)
                yield encode_frame(leds.flashed(room.frame))
                restore = loop.call_later(leds.FLASH_SECONDS, self._restore, room, updates)
                try:
                    async for pub in updates:
                        if isinstance(pub.event, LedFrame):
                            yield pub.encoded(encode_status)
                finally:
                    restore.cancel()
        finally:
            reader.cancel()

    def _restore(self, room: Room, updates: Any) -> None:
        updates.deliver(
            Publication(
                room.status_channel, LedFrame(room.frame), self._hub.clock.wall(), droppable=True
            )
        )

    async def _read_status(
        self, room: Room, peer: str, responses: AsyncIterator[comms_pb2.DeviceStatusResponse]
    ) -> None:
        try:
            async for response in responses:
                if response.WhichOneof("response") == "status" and response.status != "success":
                    log.warning("device %s in %s: %s", peer, room.id, response.status[:200])
        except (grpc.RpcError, asyncio.CancelledError):
            pass

    async def event_stream(
        self, events: AsyncIterator[comms_pb2.DeviceEvent], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        try:
            room = self._room(context)
        except HubError as error:
            await abort(context, error)
        ack = comms_pb2.DeviceEventResponse(ack=True).SerializeToString()
        nack = comms_pb2.DeviceEventResponse(ack=False).SerializeToString()
        async for event in events:
            # Exactly one response per event: the device blocks until it has it.
            press = event.button_event
            given = BUTTONS.get(press.button_id)
            if event.WhichOneof("event") != "button_event" or given is None:
                yield nack
                continue
            if press.event == comms_pb2.ButtonEvent.PRESS:
                await room.press(given)
            yield ack

    async def server_audio_stream(
        self, request: comms_pb2.AudioStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        try:
            room = self._room(context)
        except HubError as error:
            await abort(context, error)
        gate = AudioGate()
        async with self._hub.subscribe(
            room.audio_channel,
            maxlen=AUDIO_QUEUE,
            overflow=Overflow.DROP_OLDEST,
            label=f"audio {room.id} {context.peer()}",
        ) as packets:
            async for pub in packets:
                admit = gate.admit(pub.event)
                if admit is Admit.SEND:
                    yield pub.encoded(encode_packet)
                elif admit is Admit.SEND_AS_START:
                    yield pub.encoded(encode_packet_as_start)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "com.opalcamera.test.DeviceService",
            {
                "StatusStream": grpc.stream_stream_rpc_method_handler(
                    self.status_stream,
                    request_deserializer=comms_pb2.DeviceStatusResponse.FromString,
                ),
                "EventStream": grpc.stream_stream_rpc_method_handler(
                    self.event_stream, request_deserializer=comms_pb2.DeviceEvent.FromString
                ),
                "ServerAudioStream": grpc.unary_stream_rpc_method_handler(
                    self.server_audio_stream,
                    request_deserializer=comms_pb2.AudioStreamRequest.FromString,
                ),
            },
        )
