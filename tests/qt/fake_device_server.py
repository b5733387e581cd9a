"""A small stand-in for the hub's DeviceService, for driving the simulator in tests.

It behaves as the wire contract asks of the real server: rooms keyed by the
``device_id`` metadata, a full LED frame sent as soon as StatusStream opens,
one ``DeviceEventResponse`` per event, and audio pushed on a
ServerAudioStream that stays open. LEDs follow the hub's scheme
(hub/core/leds.py): Mode steps the mode; Play lights the state LED green and
streams a sine as 20 ms Opus packets (``is_start`` first, ``is_end`` last);
Stop ends a playing stream with an ``is_end`` packet.

It runs its own grpc.aio server on its own event loop thread, so a test can
stay synchronous and spin the Qt event loop while the server works.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt
import opuslib
from fake_serving import fed_queue

from clients.qt_device.loop import LoopThread
from hub.core import leds
from hub.core.roomstate import RoomState
from hub.proto import comms_pb2, comms_pb2_grpc

SAMPLE_RATE = 48_000
FRAME = SAMPLE_RATE // 50  # 20 ms
SINE_HZ = 440.0
GARBAGE = b"\xff\xff\xff\xff\x00garbage"  # libopus rejects it: "corrupted stream"

# The hub sends led_0 dark; this fake lights it, to check the device ignores it.
FOREIGN_LED_0 = 0x12345678


def hub_frame(state: RoomState, mode: int) -> tuple[int, ...]:
    return (FOREIGN_LED_0, *leds.frame(state, mode)[1:])


def sine(seconds: float, hz: float = SINE_HZ) -> npt.NDArray[np.int16]:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (np.sin(2 * np.pi * hz * t) * 12_000).astype(np.int16)


def encode(pcm: npt.NDArray[np.int16]) -> list[bytes]:
    encoder = opuslib.Encoder(SAMPLE_RATE, 1, opuslib.APPLICATION_AUDIO)
    return [
        encoder.encode(pcm[i : i + FRAME].tobytes(), FRAME)
        for i in range(0, len(pcm) - FRAME + 1, FRAME)
    ]


def sine_fraction(samples: npt.NDArray[np.int16], hz: float = SINE_HZ) -> float:
    """Share of the signal's energy that is a sine at ``hz`` (1.0: nothing else).

    Fits a sine of free phase and amplitude to each 20 ms block, so neither
    the codec's delay nor a skipped packet's phase jump matters. The first
    block is left out: the decoder ramps in over it.
    """
    fitted = total = 0.0
    t = np.arange(FRAME) / SAMPLE_RATE
    basis = np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t)], axis=1)
    for start in range(FRAME, len(samples) - FRAME + 1, FRAME):
        block = samples[start : start + FRAME].astype(np.float64)
        coefficients = np.linalg.lstsq(basis, block, rcond=None)[0]
        fitted += float(np.sum((basis @ coefficients) ** 2))
        total += float(block @ block)
    return fitted / total if total else 0.0


def set_request(frame: tuple[int, ...]) -> comms_pb2.DeviceStatusRequest:
    leds = {f"led_{i}": comms_pb2.RGBAColor(rgba=rgba) for i, rgba in enumerate(frame)}
    return comms_pb2.DeviceStatusRequest(set=comms_pb2.DeviceStatusSet(**leds))


@dataclass
class Room:
    mode: int = 0
    status: set[asyncio.Queue[comms_pb2.DeviceStatusRequest]] = field(default_factory=set)
    audio: set[asyncio.Queue[comms_pb2.AudioPacket]] = field(default_factory=set)
    player: asyncio.Task[None] | None = None

    @property
    def frame(self) -> tuple[int, ...]:
        playing = self.player is not None and not self.player.done()
        return hub_frame(RoomState.PLAYING if playing else RoomState.IDLE, self.mode)

    def paint(self) -> None:
        for queue in self.status:
            queue.put_nowait(set_request(self.frame))


class FakeDeviceService(comms_pb2_grpc.DeviceServiceServicer):
    def __init__(
        self,
        *,
        packets: list[bytes],
        interval: float = 0.02,
        corrupt: frozenset[int] = frozenset(),
        reject: frozenset[str] = frozenset(),
    ) -> None:
        self.packets = packets
        self.interval = interval  # pacing of the audio, as a live server would
        self.corrupt = corrupt  # indices of packets replaced by GARBAGE
        self.reject = reject  # device ids refused with PERMISSION_DENIED
        self.silence = encode(np.zeros(FRAME, np.int16))[0]
        self.rooms: dict[str, Room] = {}
        # Read by the test thread while the server thread appends.
        self._lock = threading.Lock()
        self._events: list[tuple[str, int, int]] = []
        self._answers: list[tuple[str, comms_pb2.DeviceStatusResponse]] = []

    def events(self) -> list[tuple[str, int, int]]:
        """(device_id, button_id, event type) of every DeviceEvent received."""
        with self._lock:
            return list(self._events)

    def answers(self, device_id: str) -> list[comms_pb2.DeviceStatusResponse]:
        with self._lock:
            return [a for d, a in self._answers if d == device_id]

    def audio_listeners(self, device_id: str) -> int:
        return len(self.rooms[device_id].audio) if device_id in self.rooms else 0

    async def _admit(self, context: grpc.aio.ServicerContext) -> tuple[str, Room]:
        metadata = dict(context.invocation_metadata() or ())
        device_id = str(metadata.get("device_id", ""))
        if device_id in self.reject:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"unknown device {device_id}")
        return device_id, self.rooms.setdefault(device_id, Room())

    async def StatusStream(
        self,
        request_iterator: AsyncIterator[comms_pb2.DeviceStatusResponse],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[comms_pb2.DeviceStatusRequest]:
        device_id, room = await self._admit(context)
        async with fed_queue(room.status, self._collect(device_id, request_iterator)) as queue:
            queue.put_nowait(set_request(room.frame))  # the device waits for this
            while True:
                yield await queue.get()

    async def _collect(
        self, device_id: str, answers: AsyncIterator[comms_pb2.DeviceStatusResponse]
    ) -> None:
        async for answer in answers:
            with self._lock:
                self._answers.append((device_id, answer))

    async def EventStream(
        self,
        request_iterator: AsyncIterator[comms_pb2.DeviceEvent],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[comms_pb2.DeviceEventResponse]:
        device_id, room = await self._admit(context)
        async for event in request_iterator:
            button = event.button_event
            with self._lock:
                self._events.append((device_id, button.button_id, button.event))
            self._on_button(room, button.button_id)
            yield comms_pb2.DeviceEventResponse(ack=True)

    def _on_button(self, room: Room, button_id: int) -> None:
        if button_id == comms_pb2.ButtonEvent.BUTTON_2:  # Mode
            room.mode = (room.mode + 1) % leds.MAX_MODES
            room.paint()
        elif button_id == comms_pb2.ButtonEvent.BUTTON_4:  # Play
            if room.player is None or room.player.done():
                room.player = asyncio.create_task(self._play(room))
                room.paint()
        elif button_id == comms_pb2.ButtonEvent.BUTTON_3 and room.player is not None:  # Stop
            room.player.cancel()

    async def _play(self, room: Room) -> None:
        last = len(self.packets) - 1
        try:
            for i, data in enumerate(self.packets):
                packet = comms_pb2.AudioPacket(
                    is_start=i == 0, is_end=i == last, data=GARBAGE if i in self.corrupt else data
                )
                for queue in room.audio:
                    queue.put_nowait(packet)
                await asyncio.sleep(self.interval)
        except asyncio.CancelledError:
            # Stop: the stream still ends properly, with a valid Opus packet.
            for queue in room.audio:
                queue.put_nowait(comms_pb2.AudioPacket(is_end=True, data=self.silence))
            raise
        finally:
            room.player = None
            room.paint()

    async def ServerAudioStream(
        self, request: comms_pb2.AudioStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[comms_pb2.AudioPacket]:
        _, room = await self._admit(context)
        async with fed_queue(room.audio) as queue:
            while True:
                yield await queue.get()

    def send_get(self, device_id: str) -> None:
        """Ask every device of the room for its state (call on the server loop)."""
        for queue in self.rooms[device_id].status:
            queue.put_nowait(comms_pb2.DeviceStatusRequest(get=True))


class FakeServer:
    """The service on 127.0.0.1, an ephemeral port, on a loop thread of its own."""

    def __init__(self, service: FakeDeviceService) -> None:
        self.service = service
        self._loop = LoopThread("fake-device-server")
        self._server: grpc.aio.Server | None = None
        self.port = self._loop.submit(self._start()).result(5)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _start(self) -> int:
        self._server = grpc.aio.server()
        comms_pb2_grpc.add_DeviceServiceServicer_to_server(self.service, self._server)  # type: ignore[no-untyped-call]
        port = int(self._server.add_insecure_port("127.0.0.1:0"))
        await self._server.start()
        return port

    def call_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the server's loop, where the service's state lives."""
        self._loop.call_soon(fn, *args)

    def stop(self) -> None:
        """Stop serving: every open RPC is cancelled, as when the hub goes away."""
        if self._server is not None:
            self._loop.submit(self._server.stop(grace=None)).result(5)
            self._server = None
        self._loop.stop()
