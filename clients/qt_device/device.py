"""A simulated device: its connection and its audio player, seen as one view.

``SimulatedDevice`` is the only thing a widget talks to. It turns the
connection's signals into a ``DeviceView`` (an immutable snapshot of what the
panel shows) and routes audio to the player; the widget renders views and
forwards clicks, and holds no protocol state of its own.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from PyQt5.QtCore import QObject, pyqtSignal

from clients.qt_device.audio import AudioPlayer, AudioSink
from clients.qt_device.connection import DEFAULT_CONNECT_TIMEOUT, DeviceConnection
from clients.qt_device.loop import LoopThread
from clients.qt_device.protocol import LED_COUNT, LED_OFF, Button, describe_frame
from clients.qt_device.scheme import HubReading, read_frame

log = logging.getLogger(__name__)


class Link(enum.Enum):
    OFFLINE = "disconnected"
    CONNECTING = "connecting"
    ONLINE = "connected"
    CLOSING = "disconnecting"


@dataclass(frozen=True)
class DeviceView:
    link: Link = Link.OFFLINE
    target: str = ""
    device_id: str = ""
    leds: tuple[int, ...] = (LED_OFF,) * LED_COUNT
    audio: str = "idle"
    presses: int = 0  # PRESS events handed to the connection
    acks: int = 0  # DeviceEventResponses received for them
    error: str = ""  # why the last connection ended, if not by the user
    warning: str = ""  # the latest protocol warning

    @property
    def reading(self) -> HubReading | None:
        """The room's state and mode as the LEDs show them in the hub's scheme."""
        return read_frame(self.leds) if self.link is Link.ONLINE else None

    @property
    def mode_text(self) -> str:
        """The mode as the LED frame shows it, and the LEDs 1-5 it is read from."""
        reading = self.reading
        mode = "?" if reading is None else str(reading.mode + 1)
        return f"{mode} (LEDs 1-5: {describe_frame(self.leds[1:])})"

    @property
    def state_text(self) -> str:
        if self.link is Link.ONLINE:
            reading = self.reading
            room = "" if reading is None else f", room {reading.state}"
            return f"connected to {self.target} as {self.device_id}{room}"
        if self.link is Link.CONNECTING:
            return f"connecting to {self.target} as {self.device_id}"
        if self.link is Link.CLOSING:
            return "disconnecting"
        return f"disconnected: {self.error}" if self.error else "disconnected"


class SimulatedDevice(QObject):
    changed = pyqtSignal(object)  # DeviceView

    def __init__(
        self, connection: DeviceConnection, player: AudioPlayer, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.connection = connection
        self.player = player
        self._view = DeviceView()
        connection.connected.connect(self._on_connected)
        connection.disconnected.connect(self._on_disconnected)
        connection.led_frame.connect(lambda leds: self._update(leds=tuple(leds)))
        connection.audio_started.connect(self._on_audio_started)
        connection.audio_packet.connect(self._on_audio_packet)
        connection.audio_ended.connect(self._on_audio_ended)
        connection.event_acked.connect(self._on_acked)
        connection.protocol_warning.connect(lambda text: self._update(warning=text))

    @property
    def view(self) -> DeviceView:
        return self._view

    def toggle(self, target: str, device_id: str) -> None:
        """The Connect button: connect when offline, otherwise disconnect."""
        if self._view.link is Link.OFFLINE:
            # CONNECTING at once, not when the loop thread says so, so that a
            # double click cannot open twice.
            self._update(
                link=Link.CONNECTING,
                target=target.strip(),
                device_id=device_id,
                presses=0,
                acks=0,
                error="",
            )
            self.connection.open(target, device_id)
        elif self._view.link in (Link.CONNECTING, Link.ONLINE):
            self._update(link=Link.CLOSING)
            self.connection.close()

    def press(self, button: Button) -> None:
        if self._view.link is not Link.ONLINE:
            return
        self._update(presses=self._view.presses + 1)
        self.connection.press(button)

    def shutdown(self) -> None:
        self.connection.shutdown()
        self.player.close()

    def _update(self, **changes: object) -> None:
        self._view = replace(self._view, **changes)  # type: ignore[arg-type]
        self.changed.emit(self._view)

    def _on_connected(self) -> None:
        # Not if the user already pressed Disconnect: that wins, and its
        # `disconnected` is on the way.
        if self._view.link is Link.CONNECTING:
            self._update(link=Link.ONLINE, warning="")

    def _on_disconnected(self, reason: str) -> None:
        self._update(link=Link.OFFLINE, error=reason)

    def _on_acked(self, button: int, ack: bool) -> None:
        if not ack:
            log.info(
                "%s: server answered %s with ack=false", self._view.device_id, Button(button).name
            )
        self._update(acks=self._view.acks + 1)

    def _on_audio_started(self) -> None:
        self.player.start_stream(self._view.device_id)
        self._update(audio=self._audio_text())

    def _on_audio_packet(self, opus: bytes) -> None:
        self.player.feed(opus, self._view.device_id)
        self._update(audio=self._audio_text())

    def _on_audio_ended(self) -> None:
        self.player.end_stream()
        self._update(audio=self._audio_text())

    def _audio_text(self) -> str:
        stats = self.player.current
        if stats is not None:
            text = f"playing, {stats.seconds:.2f} s received"
        elif self.player.last is not None:
            stats = self.player.last
            text = f"idle (last stream {stats.seconds:.2f} s)"
        else:
            return "idle"
        if stats.bad_packets:
            text += f", {stats.bad_packets} bad packets skipped"
        return text


def build_device(
    loop: LoopThread,
    sinks: Sequence[AudioSink],
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> SimulatedDevice:
    connection = DeviceConnection(loop, connect_timeout=connect_timeout)
    device = SimulatedDevice(connection, AudioPlayer(sinks))
    connection.setParent(device)
    return device
