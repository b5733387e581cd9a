"""One device's gRPC connection to the hub: the three DeviceService RPCs.

``DeviceConnection`` is a QObject only so that it can emit signals; all its
network work runs on the shared ``LoopThread``. Signals emitted there are
delivered to slots in the Qt thread through Qt's queued connections, in order.

Wire behaviour follows the stock device client: insecure channel, metadata
``("device_id", ID)`` on all three RPCs opened together, StatusStream answered
request by request, one PRESS event at a time on EventStream with exactly one
response awaited before the next, and ServerAudioStream opened once with
``start=True`` and held for the whole connection. Since all three RPCs live as
long as the connection, the end of any one of them ends the connection, with
the reason shown to the user.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc
import grpc.aio
from PyQt5.QtCore import QObject, pyqtSignal

from clients.qt_device.loop import LoopThread
from clients.qt_device.protocol import (
    AudioData,
    AudioEnd,
    AudioEvent,
    AudioStart,
    AudioStreamTracker,
    Button,
    DeviceModel,
    ProtocolWarning,
    press_event,
)
from hub.proto import comms_pb2, comms_pb2_grpc

log = logging.getLogger(__name__)

# How long Connect waits for the server to accept the TCP/HTTP2 connection.
DEFAULT_CONNECT_TIMEOUT = 5.0
# A button press with no DeviceEventResponse after this long is reported: the
# stock client's buttons hang until the answer comes. We keep waiting too.
DEFAULT_ACK_WARNING = 2.0
# Clicks queued while the previous one awaits its acknowledgement. A user
# cannot click faster than a live server answers; past this the server is
# stuck and further clicks are dropped with a warning rather than hoarded.
MAX_QUEUED_PRESSES = 16


class _StreamClosed(Exception):
    """The server ended one of the RPCs the device keeps open."""

    def __init__(self, rpc: str) -> None:
        super().__init__(f"server ended {rpc}")
        self.rpc = rpc


@dataclass
class _Session:
    """One Connect..disconnect cycle. Lives on the loop thread only."""

    target: str
    device_id: str
    presses: asyncio.Queue[Button] = field(
        default_factory=lambda: asyncio.Queue(MAX_QUEUED_PRESSES)
    )
    tracker: AudioStreamTracker = field(default_factory=AudioStreamTracker)
    online: bool = False
    reason: str = ""  # why it ended; stays empty when the user disconnected
    task: asyncio.Task[None] | None = None
    # The press awaiting its DeviceEventResponse.
    pending_ack: asyncio.Future[bool] | None = None


class DeviceConnection(QObject):
    connected = pyqtSignal()
    disconnected = pyqtSignal(str)  # why; "" when the user pressed Connect again
    led_frame = pyqtSignal(list)  # six 0xRRGGBBAA values, led_0 first
    audio_started = pyqtSignal()
    audio_packet = pyqtSignal(bytes)  # one Opus packet
    audio_ended = pyqtSignal()
    event_acked = pyqtSignal(int, bool)  # ButtonEvent.ButtonId, DeviceEventResponse.ack
    protocol_warning = pyqtSignal(str)

    def __init__(
        self,
        loop: LoopThread,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        ack_warning: float = DEFAULT_ACK_WARNING,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._loop = loop
        self._connect_timeout = connect_timeout
        self._ack_warning = ack_warning
        self._model = DeviceModel()
        self._session: _Session | None = None

    # --- called from the Qt thread -------------------------------------------------

    def open(self, target: str, device_id: str) -> None:
        self._loop.call_soon(self._open, target.strip(), device_id)

    def close(self) -> None:
        self._loop.call_soon(self._close)

    def press(self, button: Button) -> None:
        self._loop.call_soon(self._press, button)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Close and wait for the session to end (blocks; for application exit)."""
        if not self._loop.running:
            return
        try:
            self._loop.submit(self._close_and_wait()).result(timeout)
        except TimeoutError:
            # Exiting matters more than a clean goodbye; LoopThread.stop()
            # cancels whatever is left.
            log.warning("connection did not close within %.1f s", timeout)

    # --- on the loop thread --------------------------------------------------------

    def _open(self, target: str, device_id: str) -> None:
        if self._session is not None:
            log.warning("%s: already connected or connecting; Connect ignored", device_id)
            return
        if not target:
            self.disconnected.emit("no server address given")
            return
        session = _Session(target, device_id)
        session.task = asyncio.get_running_loop().create_task(
            self._run(session), name=f"device {device_id}"
        )
        # Cleanup is a done callback, not a `finally` in _run: a task
        # cancelled before its first step never enters its coroutine, and a
        # quick Connect-Disconnect must still end in `disconnected`.
        session.task.add_done_callback(lambda _: self._finish(session))
        self._session = session

    def _close(self) -> None:
        if self._session is not None and self._session.task is not None:
            self._session.task.cancel()

    async def _close_and_wait(self) -> None:
        session = self._session
        if session is not None and session.task is not None:
            session.task.cancel()
            await asyncio.gather(session.task, return_exceptions=True)

    def _press(self, button: Button) -> None:
        session = self._session
        if session is None or not session.online:
            log.info("%s pressed while not connected: nothing sent", button.name)
            return
        try:
            session.presses.put_nowait(button)
        except asyncio.QueueFull:
            self._warn(
                f"{button.name} dropped: {MAX_QUEUED_PRESSES} presses already wait "
                "for the server to acknowledge earlier ones"
            )

    def _warn(self, text: str) -> None:
        log.warning("%s: %s", self._session.device_id if self._session else "-", text)
        self.protocol_warning.emit(text)

    def _emit_leds(self) -> None:
        self.led_frame.emit(list(self._model.leds))

    def _finish(self, session: _Session) -> None:
        self._dispatch_audio(session.tracker.abort())
        self._model.power_off()
        self._emit_leds()
        self._session = None
        log.info("%s: disconnected, %s", session.device_id, session.reason or "by the user")
        self.disconnected.emit(session.reason)

    async def _run(self, session: _Session) -> None:
        metadata = (("device_id", session.device_id),)
        channel = grpc.aio.insecure_channel(session.target)
        try:
            try:
                await asyncio.wait_for(channel.channel_ready(), self._connect_timeout)
            except TimeoutError:
                session.reason = (
                    f"cannot reach {session.target} (no answer within {self._connect_timeout:g} s)"
                )
                return
            self._model.power_on()
            session.online = True
            self._emit_leds()
            self.connected.emit()
            log.info("%s: connected to %s", session.device_id, session.target)
            stub = comms_pb2_grpc.DeviceServiceStub(channel)  # type: ignore[no-untyped-call]
            # Opened together, like the stock client: the server may send its
            # first LED frame before it sees the other two.
            status_call = stub.StatusStream(metadata=metadata)
            event_call = stub.EventStream(metadata=metadata)
            audio_call = stub.ServerAudioStream(
                comms_pb2.AudioStreamRequest(start=True), metadata=metadata
            )
            async with asyncio.TaskGroup() as group:
                group.create_task(self._answer_status(status_call))
                group.create_task(self._read_acks(event_call, session))
                group.create_task(self._send_presses(event_call, session))
                group.create_task(self._receive_audio(audio_call, session.tracker))
        except* grpc.aio.AioRpcError as errors:
            error = errors.exceptions[0]
            assert isinstance(error, grpc.aio.AioRpcError)
            session.reason = f"{error.code().name}: {error.details()}"
        except* _StreamClosed as closed:
            session.reason = session.reason or str(closed.exceptions[0])
        except* Exception as errors:
            # The boundary of the session: a bug here must not take the
            # device's loop down with it, and the user must see it.
            log.exception("%s: connection failed", session.device_id, exc_info=errors)
            session.reason = f"internal error: {errors.exceptions[0]!r}"
        finally:
            await channel.close()

    async def _answer_status(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            request = await call.read()
            if request is grpc.aio.EOF:
                raise _StreamClosed("StatusStream")
            reply = self._model.handle(request)
            for text in reply.warnings:
                self._warn(text)
            if reply.leds_changed:
                self._emit_leds()
            await call.write(reply.response)

    async def _send_presses(self, call: grpc.aio.StreamStreamCall, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            button = await session.presses.get()
            # Registered before the write so that even an instant answer
            # finds the press it belongs to.
            ack = session.pending_ack = loop.create_future()
            try:
                await call.write(press_event(button))
            except asyncio.InvalidStateError:
                raise _StreamClosed("EventStream") from None
            log.debug("%s: sent %s", session.device_id, button.name)
            done, _ = await asyncio.wait({ack}, timeout=self._ack_warning)
            if not done:
                self._warn(
                    f"no DeviceEventResponse to {button.name} after {self._ack_warning:g} s "
                    "(the stock client's buttons hang until it comes)"
                )
            self.event_acked.emit(int(button), await ack)
            session.pending_ack = None

    async def _read_acks(self, call: grpc.aio.StreamStreamCall, session: _Session) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise _StreamClosed("EventStream")
            pending = session.pending_ack
            if pending is None or pending.done():
                self._warn(
                    "DeviceEventResponse without a press: the stock client would "
                    "take it as the answer to its next press"
                )
                continue
            pending.set_result(response.ack)

    async def _receive_audio(
        self, call: grpc.aio.UnaryStreamCall, tracker: AudioStreamTracker
    ) -> None:
        async for packet in call:
            self._dispatch_audio(tracker.packet(packet.is_start, packet.is_end, packet.data))
        raise _StreamClosed("ServerAudioStream")

    def _dispatch_audio(self, events: list[AudioEvent]) -> None:
        for event in events:
            match event:
                case AudioStart():
                    self.audio_started.emit()
                case AudioData(opus=opus):
                    self.audio_packet.emit(opus)
                case AudioEnd():
                    self.audio_ended.emit()
                case ProtocolWarning(text=text):
                    self._warn(text)
