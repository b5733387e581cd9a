"""A protocol-level stand-in for the stock device client (docs/devices.md).

It behaves as the stock PyQt client does on the wire, traps included, and
records every way a server could hurt the real device instead of hiding it:

- ``StatusStream``: says nothing until the server sends a request; ``get`` is
  answered with ``state`` (its six LED colours); anything else is taken as a
  ``set`` that paints LEDs 1-5, an LED missing from the message painted black
  (the protobuf-sub-message-is-always-truthy trap), and is answered
  ``status="success"``. LED 0 is the device's own: lit on Connect.
- ``EventStream``: each event is one ``DeviceEvent``; the device then blocks
  until it reads exactly one ``DeviceEventResponse``.
- ``ServerAudioStream``: opened once with ``start=True``; the "audio thread"
  decodes each ``data`` on its own as one Opus packet (48 kHz mono). A decode
  error, or an ``is_end`` with no open file, kills the thread for the rest of
  the connection; ``is_start`` opens a "WAV", ``is_end`` closes and "plays"
  it; a second ``is_start`` drops the unfinished one; if the server ends the
  stream, the device is deaf until it reconnects.

Whatever would hurt the real device is appended to ``traps`` (and sets
``audio_dead`` or ``deaf``); tests assert the list stays empty. Every received
message wakes ``wait_for`` waiters: nothing here sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import grpc
import numpy as np
import numpy.typing as npt
import opuslib
from waiting import Changes, scaled

from hub.proto import comms_pb2, comms_pb2_grpc

ButtonId = comms_pb2.ButtonEvent.ButtonId
ButtonEventType = comms_pb2.ButtonEvent.ButtonEventType
MODE = ButtonId.BUTTON_2
STOP = ButtonId.BUTTON_3
PLAY = ButtonId.BUTTON_4
PRESS = comms_pb2.ButtonEvent.PRESS

SAMPLE_RATE = 48_000
# opus_decode's output buffer: the longest packet Opus has (120 ms).
MAX_FRAME_SAMPLES = SAMPLE_RATE * 120 // 1000
# The device's own "connected" light, painted by itself on Connect.
OWN_LED = 0x00FF00
LED_FIELDS = tuple(f"led_{i}" for i in range(6))


@dataclass(slots=True)
class Packet:
    """One ``AudioPacket`` as it arrived."""

    time: float  # time.monotonic() at arrival
    is_start: bool
    is_end: bool
    data: bytes


@dataclass(slots=True)
class Played:
    """One "WAV file": from its ``is_start`` packet to its ``is_end`` packet."""

    started: float  # arrival of its is_start packet
    packets: list[Packet] = field(default_factory=list)
    chunks: list[npt.NDArray[np.int16]] = field(default_factory=list)
    ended: float | None = None  # arrival of its is_end packet

    @property
    def data(self) -> list[bytes]:
        return [p.data for p in self.packets]

    @property
    def pcm(self) -> npt.NDArray[np.float32]:
        """The decoded audio, float32 in [-1, 1)."""
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        out: npt.NDArray[np.float32] = (
            np.concatenate(self.chunks).astype(np.float32) / 32768.0
        ).astype(np.float32)
        return out


@dataclass(frozen=True, slots=True)
class RpcFailure:
    rpc: str
    code: grpc.StatusCode
    details: str


class TcpRelay:
    """A loopback TCP relay, so a device can vanish like a pulled cable.

    ``abort()`` drops every connection with a RST: no HTTP/2 GOAWAY, no
    RST_STREAM, nothing the server could take as a polite goodbye.
    """

    def __init__(self, target: str, *, source_host: str | None = None) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        # Connect to the target from this address (e.g. 127.0.0.2): the
        # target sees another peer.
        self._source = None if source_host is None else (source_host, 0)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.address = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                *self._target, local_addr=self._source
            )
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()

    async def abort(self) -> None:
        """Drop every relayed connection at once, and accept no new ones."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=scaled(5.0))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class StockDevice:
    """One stock device client: ``await connect()``, press buttons, read LEDs."""

    def __init__(
        self,
        address: str,
        device_id: str | None = "test_client",
        *,
        token: str | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
        relay: bool = False,
    ) -> None:
        self.address = address
        self.device_id = device_id
        self.token = token
        self._metadata = metadata
        self._use_relay = relay
        self._relay: TcpRelay | None = None
        self._channel: grpc.aio.Channel | None = None
        self._calls: list[grpc.aio.Call] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._acks: asyncio.Queue[comms_pb2.DeviceEventResponse] = asyncio.Queue()
        self._event_lock = asyncio.Lock()
        self._changes = Changes()
        self._closing = False
        self._decoder: opuslib.Decoder | None = None
        self._events: grpc.aio.StreamStreamCall | None = None
        self._status: grpc.aio.StreamStreamCall | None = None
        # Across connections: anything that would have hurt the real device.
        self.traps: list[str] = []
        self.connections = 0
        self._reset()

    def _reset(self) -> None:
        """Per connection: what this connection has seen so far."""
        self.connected_at = 0.0
        self.leds: list[int] = [0] * 6  # painted colours, rgba >> 8
        self.frames: list[tuple[int | None, ...]] = []  # every set, rgba or None
        self.frame_times: list[float] = []
        self.gets = 0
        self.packets: list[Packet] = []  # every AudioPacket received
        self.streams: list[Played] = []  # "WAV files" played, in order
        self.current: Played | None = None  # the open "WAV file"
        self.dropped: list[Played] = []  # unfinished, replaced by an is_start
        self.audio_dead: str | None = None  # why the audio thread died
        self.deaf: str | None = None  # why ServerAudioStream ended
        self.acks: list[bool] = []
        self.failures: dict[str, RpcFailure] = {}
        self.concealed = 0  # empty packets decoded as concealment noise

    def __repr__(self) -> str:
        return f"StockDevice({self.device_id!r})"

    # -- connecting ------------------------------------------------------

    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        if self._metadata is not None:
            return tuple(self._metadata)
        metadata: list[tuple[str, str]] = []
        if self.device_id is not None:
            metadata.append(("device_id", self.device_id))
        if self.token is not None:
            metadata.append(("x-chat-token", self.token))
        return tuple(metadata)

    async def connect(self) -> None:
        """Connect: dial, light LED 0, open all three RPCs at once."""
        if self._channel is not None:
            raise RuntimeError("already connected")
        self._reset()
        self._closing = False
        self.connections += 1
        target = self.address
        if self._use_relay:
            self._relay = TcpRelay(self.address)
            target = await self._relay.start()
        self._channel = grpc.aio.insecure_channel(target)
        stub = comms_pb2_grpc.DeviceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        metadata = self._call_metadata()
        self._decoder = opuslib.Decoder(SAMPLE_RATE, 1)
        self._acks = asyncio.Queue()
        self.leds[0] = OWN_LED
        self.connected_at = time.monotonic()
        self._status = stub.StatusStream(metadata=metadata)
        self._events = stub.EventStream(metadata=metadata)
        audio = stub.ServerAudioStream(comms_pb2.AudioStreamRequest(start=True), metadata=metadata)
        self._calls = [self._status, self._events, audio]
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run_status(self._status)),
            loop.create_task(self._run_events(self._events)),
            loop.create_task(self._run_audio(audio)),
        ]
        self._notify()

    async def disconnect(self) -> None:
        """Press Connect again: cancel the RPCs, close the channel, dim LEDs 0 and 1."""
        if self._channel is None:
            return
        self._closing = True
        for call in self._calls:
            call.cancel()
        await self._finish()
        self.leds[0] = self.leds[1] = 0

    async def vanish(self) -> None:
        """Disappear without a word: the connection drops (via the relay, a RST)."""
        if self._channel is None:
            return
        self._closing = True
        if self._relay is not None:
            await self._relay.abort()
            # Wait until the client side has noticed, as a dead peer would.
            await asyncio.wait(self._tasks, timeout=scaled(10.0))
        await self._finish()

    async def _finish(self) -> None:
        assert self._channel is not None
        await self._channel.close(grace=None)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._relay is not None:
            await self._relay.abort()
            self._relay = None
        self._channel = None
        self._calls = []
        self._tasks = []
        extra = self._acks.qsize()
        if extra:
            self._trap(f"{extra} DeviceEventResponse(s) nobody asked for")
        self._notify()

    @property
    def connected(self) -> bool:
        return self._channel is not None

    @property
    def unclaimed_acks(self) -> int:
        """DeviceEventResponses received that no press has taken yet."""
        return self._acks.qsize()

    # -- waiting ---------------------------------------------------------

    def _notify(self) -> None:
        self._changes.notify()

    async def wait_for(
        self, predicate: Callable[[], object], timeout: float = 5.0, what: str = ""
    ) -> None:
        """Until ``predicate()`` holds, re-checked on every message received."""
        await self._changes.wait_for(
            predicate, timeout, lambda: f"{self!r}: timed out waiting for {what or predicate!r}"
        )

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Until the opening frame, the flash and the frame after it have come."""
        await self.wait_for(lambda: len(self.frames) >= 3, timeout, "the connect frames")

    # -- status ----------------------------------------------------------

    def _trap(self, what: str) -> None:
        self.traps.append(what)

    def _failed(self, rpc: str, error: grpc.aio.AioRpcError) -> None:
        self.failures[rpc] = RpcFailure(rpc, error.code(), error.details() or "")

    @contextlib.contextmanager
    def _reading(self, rpc: str) -> Iterator[None]:
        """How a reader of ``rpc`` ends: its failure is recorded and its
        cancellation passed on, unless the device is closing (then both are
        expected); waiters are woken either way."""
        try:
            yield
        except grpc.aio.AioRpcError as error:
            if not self._closing:
                self._failed(rpc, error)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            self._notify()

    async def _run_status(self, call: grpc.aio.StreamStreamCall) -> None:
        with self._reading("StatusStream"):
            while True:
                request = await call.read()
                if request is grpc.aio.EOF:
                    break
                assert isinstance(request, comms_pb2.DeviceStatusRequest)
                now = time.monotonic()
                if request.WhichOneof("request") == "get":
                    self.gets += 1
                    state = comms_pb2.DeviceStatus(battery_level=1.0)
                    for index, name in enumerate(LED_FIELDS):
                        getattr(state, name).rgba = (self.leds[index] << 8) | 0xFF
                    await call.write(comms_pb2.DeviceStatusResponse(state=state))
                else:
                    self._paint(request.set, now)
                    await call.write(comms_pb2.DeviceStatusResponse(status="success"))
                self._notify()

    def _paint(self, frame: comms_pb2.DeviceStatusSet, now: float) -> None:
        """Any request that is not ``get`` paints LEDs 1-5, absent ones black."""
        seen = tuple(
            getattr(frame, name).rgba if frame.HasField(name) else None for name in LED_FIELDS
        )
        missing = [name for name in LED_FIELDS[1:] if not frame.HasField(name)]
        if missing:
            self._trap(f"partial LED frame: {', '.join(missing)} painted black")
        for index in range(1, 6):
            rgba = seen[index]
            self.leds[index] = 0 if rgba is None else rgba >> 8
        self.frames.append(seen)
        self.frame_times.append(now)

    def shows(self, frame: Sequence[int]) -> bool:
        """Whether LEDs 1-5 show ``frame`` (six rgba values) as the device paints it."""
        return all(self.leds[i] == frame[i] >> 8 for i in range(1, 6))

    @property
    def last_frame(self) -> tuple[int | None, ...] | None:
        return self.frames[-1] if self.frames else None

    # -- buttons ---------------------------------------------------------

    async def _run_events(self, call: grpc.aio.StreamStreamCall) -> None:
        with self._reading("EventStream"):
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                assert isinstance(response, comms_pb2.DeviceEventResponse)
                self._acks.put_nowait(response)
                self._notify()

    async def send_event(self, event: comms_pb2.DeviceEvent, timeout: float = 5.0) -> bool:
        """Send one event and block until exactly one response comes; its ack."""
        if self._events is None or self._channel is None:
            raise RuntimeError("not connected")
        async with self._event_lock:
            if not self._acks.empty():
                self._trap("a DeviceEventResponse came before its event")
            await self._events.write(event)
            try:
                async with asyncio.timeout(scaled(timeout)):
                    response = await self._acks.get()
            except TimeoutError:
                self._trap("an event got no DeviceEventResponse: the buttons hang")
                raise AssertionError(f"{self!r}: no response to {event}") from None
        self.acks.append(response.ack)
        return bool(response.ack)

    async def press(self, button: int, kind: int = PRESS, timeout: float = 5.0) -> bool:
        # Plain ints: a test may send ids and types no enum value names.
        press = comms_pb2.ButtonEvent(
            button_id=cast("comms_pb2.ButtonEvent.ButtonId", button),
            event=cast("comms_pb2.ButtonEvent.ButtonEventType", kind),
        )
        event = comms_pb2.DeviceEvent(button_event=press)
        return await self.send_event(event, timeout)

    async def mode(self) -> bool:
        return await self.press(MODE)

    async def play(self) -> bool:
        return await self.press(PLAY)

    async def stop(self) -> bool:
        return await self.press(STOP)

    # -- audio -----------------------------------------------------------

    async def _run_audio(self, call: grpc.aio.UnaryStreamCall) -> None:
        with self._reading("ServerAudioStream"):
            try:
                async for packet in call:
                    self._hear(packet, time.monotonic())
                    self._notify()
                if not self._closing:
                    self.deaf = "the server ended ServerAudioStream"
                    self._trap(self.deaf)
            except grpc.aio.AioRpcError as error:
                if not self._closing:
                    self.deaf = f"ServerAudioStream failed: {error.code()} {error.details()}"
                    self._trap(self.deaf)
                raise  # and _reading records the failure

    def _hear(self, message: comms_pb2.AudioPacket, now: float) -> None:
        packet = Packet(now, message.is_start, message.is_end, bytes(message.data))
        self.packets.append(packet)
        if self.audio_dead is not None:
            return  # the audio thread is gone: nothing more is heard
        if packet.is_start:
            if self.current is not None:
                self.dropped.append(self.current)
                self._trap("is_start before the open stream's is_end: a stream dropped unplayed")
            self.current = Played(started=now)
        pcm = self._decode(packet.data)
        if pcm is None:
            return
        if self.current is None:
            if packet.is_end:
                self.audio_dead = "is_end with no open stream"
                self._trap(self.audio_dead)
            else:
                self._trap("an audio packet outside any stream (no is_start before it)")
            return
        self.current.packets.append(packet)
        self.current.chunks.append(pcm)
        if packet.is_end:
            self.current.ended = now
            self.streams.append(self.current)
            self.current = None

    def _decode(self, data: bytes) -> npt.NDArray[np.int16] | None:
        assert self._decoder is not None
        if not data:
            # Not fatal, but the device hears 120 ms of concealment noise.
            self.concealed += 1
            self._trap("empty AudioPacket.data: decoded as concealment noise")
        try:
            pcm = self._decoder.decode(data, MAX_FRAME_SAMPLES)
        except opuslib.OpusError as error:
            self.audio_dead = f"Opus decode error: {error}"
            self._trap(self.audio_dead)
            return None
        return np.frombuffer(pcm, dtype="<i2")

    # -- conveniences for tests ------------------------------------------

    @property
    def data(self) -> list[bytes]:
        """The raw ``data`` of every packet received on this connection."""
        return [p.data for p in self.packets]

    def starts(self) -> list[int]:
        return [i for i, p in enumerate(self.packets) if p.is_start]

    def ends(self) -> list[int]:
        return [i for i, p in enumerate(self.packets) if p.is_end]

    def check(self) -> None:
        """Fail if anything so far would have hurt the real device."""
        assert not self.traps, f"{self!r}: {self.traps}"
        assert self.audio_dead is None, self.audio_dead
        assert self.deaf is None, self.deaf
        assert not self.failures, self.failures


async def wait_all(
    devices: Sequence[StockDevice],
    predicate: Callable[[StockDevice], object],
    timeout: float = 5.0,
    what: str = "",
) -> None:
    """Until ``predicate(device)`` holds for every device."""

    def holds(device: StockDevice) -> Callable[[], object]:
        return lambda: predicate(device)

    async with asyncio.TaskGroup() as group:
        for device in devices:
            group.create_task(device.wait_for(holds(device), timeout, what))
