"""DeviceService: the stock device client's three RPCs onto a device room.

Traps of the stock client that shape this adapter (docs/devices.md):
- it sends nothing on StatusStream until asked, so the room's frame goes out
  the moment the stream opens, and every ``set`` carries the full frame;
- it waits for exactly one response per event, so every event is acked once,
  even one the room ignores (ack=false for what it cannot understand);
- it decodes every AudioPacket.data as one Opus packet, dies of an is_end it
  had no is_start for, and goes deaf if ServerAudioStream ever ends: the
  AudioGate shapes each device's view, and the audio stream stays open for
  as long as the device does.

What the stock client never does ends a stream with a status, never leaves
it half-alive:
- a request that does not parse ends its stream with ``INVALID_ARGUMENT``
  (and a rate-limited warning, hub.rpc.methods). On StatusStream the device's
  answers are read by a task beside the writer; a malformed answer ends the
  whole stream, not just the reader, so a stream that is open is always one
  whose LED-failure reports are read and logged;
- with ``--device-token``, the three streams belong to the token's session:
  Logout or expiry ends each with ``UNAUTHENTICATED`` (hub.rpc.sessionbound),
  and a press read after it is neither applied nor acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from hub.clock import Clock, SystemClock
from hub.core import leds
from hub.core.events import AudioFrame, LedFrame, StreamEnd
from hub.core.hub import Hub
from hub.core.publication import Publication
from hub.core.rooms import Admit, AudioGate, Room, SkipAhead, check_room_id
from hub.core.roomstate import Input
from hub.core.sessions import Session
from hub.core.subscription import Overflow, Subscription
from hub.errors import HubError, ShuttingDown
from hub.logs import set_context
from hub.metrics import DEVICES, Metrics
from hub.proto import comms_pb2
from hub.rpc.chat import TOKEN_HEADER, token_session
from hub.rpc.methods import Methods, Responses, consume
from hub.rpc.sessionbound import Interruptible, bound_to
from hub.rpc.status import metadata_value

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
# (see SkipAhead for the marks). Status: only the newest LED frame matters,
# so a short queue that drops old frames suffices.
AUDIO_QUEUE = 25
STATUS_QUEUE = 8
SKIP_AHEAD = SkipAhead()


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


class DeviceFrames(Subscription):
    """A device's view of its room's status channel: LED frames only.

    The channel also carries notices, for people watching the room. They are
    not droppable, so in a busy room (ten devices pressing at once) they
    would fill this short queue and cut the device's StatusStream as a slow
    consumer, freezing its LEDs for good. LED frames all are droppable: the
    queue drops the oldest and the newest always gets through.
    """

    def __init__(
        self, channel: str, *, maxlen: int, frame: Callable[[], Publication], label: str = ""
    ) -> None:
        super().__init__(channel, maxlen=maxlen, overflow=Overflow.DROP_OLDEST, label=label)
        self._frame = frame  # the room's frame as this hub knows it now

    def deliver(self, pub: Publication) -> None:
        if isinstance(pub.event, LedFrame):
            super().deliver(pub)

    def lost(self, error: HubError) -> None:
        """Frames were lost: stay open (a StatusStream that ends freezes the
        device's LEDs), and show the room's frame as this hub has it; the
        room's own read after the loss publishes any change (``Room._follow``)."""
        self.deliver(self._frame())


def opening(pub: Publication) -> Publication:
    """``pub`` as a late joiner's first packet of its stream: it opens the stream."""
    frame: AudioFrame = pub.event
    return Publication(
        pub.channel, dataclasses.replace(frame, is_start=True), pub.time, position=pub.position
    )


class DeviceAudio(Subscription):
    """One device's ServerAudioStream queue: gated as it fills, bounded, never cut.

    The AudioGate runs as each packet is delivered, so the queue holds exactly
    what the device will be sent, each packet flagged for it. A full queue
    skips ahead (``SkipAhead``: plain packets, then whole streams) and never
    disconnects the device: ending ServerAudioStream would leave the stock
    client deaf until Connect is pressed twice.
    """

    def __init__(
        self,
        channel: str,
        *,
        maxlen: int,
        silence: bytes,
        clock: Clock | None = None,
        label: str = "",
        on_skip: Callable[[int], None] | None = None,
    ) -> None:
        if maxlen < SkipAhead.MIN_QUEUE:
            raise ValueError(f"maxlen must be at least {SkipAhead.MIN_QUEUE}")
        super().__init__(channel, maxlen=maxlen, overflow=SKIP_AHEAD, label=label, on_skip=on_skip)
        self._gate = AudioGate()
        self._silence = silence  # one valid Opus packet, for an end of our own
        self._clock = clock or SystemClock()

    def deliver(self, pub: Publication) -> None:
        admit = self._gate.admit(pub.event)
        if admit is Admit.SEND:
            super().deliver(pub)
        elif admit is Admit.SEND_AS_START:
            # Cached on ``pub`` like an encoding: every late joiner shares it,
            # and so its serialized bytes.
            super().deliver(pub.encoded(opening))

    def lost(self, error: HubError) -> None:
        """Packets were lost: end the open stream now, and stay open.

        The device plays what it has (its ``is_end`` carries a packet of
        silence, as every end does), nothing queued is thrown away, and
        whatever the room plays next opens a stream properly (AudioGate.lost).
        """
        stream_id = self._gate.lost()
        if stream_id is not None:
            end = AudioFrame(stream_id, -1, self._silence, is_end=True, end_reason=StreamEnd.CLOSED)
            super().deliver(Publication(self.channel, end, self._clock.wall()))


class DeviceService:
    def __init__(self, hub: Hub, metrics: Metrics | None = None) -> None:
        self._hub = hub
        self._metrics = metrics or Metrics()

    async def _room(self, context: grpc.aio.ServicerContext) -> tuple[Room, Session | None]:
        """The device's room, and the session of its token if the room requires one."""
        try:
            return await self._admit(context)
        except HubError as error:
            self._metrics.refused(DEVICES, error)
            raise

    async def _admit(self, context: grpc.aio.ServicerContext) -> tuple[Room, Session | None]:
        room_id = check_room_id(metadata_value(context, DEVICE_ID_HEADER))
        set_context(room=room_id, peer=context.peer())
        policy = self._hub.settings.devices
        session = None
        if policy.requires_token(room_id):
            missing = f"room {room_id} requires an {TOKEN_HEADER} token"
            session = await token_session(self._hub, context, missing)
            log.info("%s: device access to room %s", session.id, room_id)
        if self._hub.closing:
            raise ShuttingDown()
        return await self._hub.rooms.open(room_id), session

    # A HubError raised by a handler is its call's status (hub.rpc.methods).

    async def status_stream(
        self,
        responses: AsyncIterator[comms_pb2.DeviceStatusResponse],
        context: grpc.aio.ServicerContext,
    ) -> Responses:
        room, session = await self._room(context)
        peer = context.peer()
        updates = DeviceFrames(
            room.status_channel,
            maxlen=STATUS_QUEUE,
            frame=functools.partial(self._frame, room),
            label=f"device {room.id} {peer}",
        )

        async def report(response: comms_pb2.DeviceStatusResponse) -> None:
            if response.WhichOneof("response") == "status" and response.status != "success":
                # %r: the device's text must not forge log lines or drive a terminal.
                log.warning("device %s in %s: %r", peer, room.id, response.status[:200])

        # The reader ends the stream (through ``updates``) if a response is refused.
        reader = asyncio.create_task(consume(responses, report, updates, updates.label))
        self._metrics.stream_opened(DEVICES)
        try:
            async with self._hub.rooms.join(room.id, "a device"), self._hub.attach(updates):
                with bound_to(self._hub.sessions, session, updates):
                    # The device says nothing until asked: open with the room's
                    # frame, then flash its state LED to show it has connected.
                    yield encode_frame(room.frame)
                    yield encode_frame(leds.flashed(room.frame))
                    restore = self._hub.clock.call_later(
                        leds.FLASH_SECONDS, functools.partial(self._restore, room, updates)
                    )
                    try:
                        async for pub in updates:
                            if isinstance(pub.event, LedFrame):
                                yield pub.encoded(encode_status)
                    finally:
                        restore.cancel()
        finally:
            reader.cancel()
            self._metrics.stream_closed(DEVICES)

    def _frame(self, room: Room) -> Publication:
        """The room's LED frame as this hub has it now, for one device's queue."""
        return Publication(
            room.status_channel, LedFrame(room.frame), self._hub.clock.wall(), droppable=True
        )

    def _restore(self, room: Room, updates: DeviceFrames) -> None:
        updates.deliver(self._frame(room))

    async def event_stream(
        self, events: AsyncIterator[comms_pb2.DeviceEvent], context: grpc.aio.ServicerContext
    ) -> Responses:
        room, session = await self._room(context)
        ack = comms_pb2.DeviceEventResponse(ack=True).SerializeToString()
        nack = comms_pb2.DeviceEventResponse(ack=False).SerializeToString()
        # With a token the stream waits on the device, not on a subscription:
        # the session's end must wake that wait, and no press read after it
        # may reach the room.
        guarded = Interruptible(events)
        with bound_to(self._hub.sessions, session, guarded), self._metrics.stream_open(DEVICES):
            async for event in guarded if session is not None else events:
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
    ) -> Responses:
        room, session = await self._room(context)
        metrics = self._metrics
        packets = DeviceAudio(
            room.audio_channel,
            maxlen=AUDIO_QUEUE,
            silence=self._hub.rooms.silence,
            clock=self._hub.clock,
            label=f"audio {room.id} {context.peer()}",
            on_skip=functools.partial(metrics.audio_skipped, DEVICES),
        )
        latency = metrics.write_latency(DEVICES)
        async with self._hub.attach(packets):
            with bound_to(self._hub.sessions, session, packets), metrics.stream_open(DEVICES):
                async for pub in packets:
                    yield pub.encoded(encode_packet)
                    latency.written(pub.time)

    def handler(self) -> grpc.GenericRpcHandler:
        methods = Methods("com.opalcamera.test.DeviceService", self._hub.clock)
        methods.stream_stream("StatusStream", self.status_stream, comms_pb2.DeviceStatusResponse)
        methods.stream_stream("EventStream", self.event_stream, comms_pb2.DeviceEvent)
        methods.unary_stream(
            "ServerAudioStream", self.server_audio_stream, comms_pb2.AudioStreamRequest
        )
        return methods.handler()
