"""The device side of comms.proto, without I/O: no gRPC calls, no Qt, no threads.

Two state machines live here, each with every transition in one place:

- ``DeviceModel``: the LED frame and how the device answers the server's
  ``DeviceStatusRequest`` on StatusStream.
- ``AudioStreamTracker``: turns the ``AudioPacket`` flags into start / data /
  end events and flags every packet sequence the stock device client would
  choke on (docs/devices.md, "Audio"), so a server developer sees the bug
  here instead of a dead device.

``connection.py`` feeds them what arrives from the network and sends what they
return.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import cast

from hub.proto import comms_pb2

LED_COUNT = 6
# LED 0 belongs to the device: it lights it on Connect and ignores the
# server's led_0. The stock client's colour is not part of the contract; green
# is this simulator's choice. Full intensity (alpha 0xFF).
DEVICE_LED_ON = 0x00FF00FF
LED_OFF = 0x00000000
_LED_FIELDS = tuple(f"led_{i}" for i in range(LED_COUNT))


class Button(enum.IntEnum):
    """The device buttons that reach the server, valued as ``ButtonEvent.ButtonId``."""

    MODE = comms_pb2.ButtonEvent.BUTTON_2
    STOP = comms_pb2.ButtonEvent.BUTTON_3
    PLAY = comms_pb2.ButtonEvent.BUTTON_4


def press_event(button: Button) -> comms_pb2.DeviceEvent:
    """The message the stock client sends for a click: one PRESS, no RELEASE."""
    # Button's values are the ButtonId numbers; the cast only tells mypy so.
    button_id = cast("comms_pb2.ButtonEvent.ButtonId", int(button))
    return comms_pb2.DeviceEvent(
        button_event=comms_pb2.ButtonEvent(button_id=button_id, event=comms_pb2.ButtonEvent.PRESS)
    )


def rgb_of(rgba: int) -> int:
    """The colour the stock client paints: alpha (intensity) dropped."""
    return (rgba >> 8) & 0xFFFFFF


def intensity_of(rgba: int) -> int:
    return rgba & 0xFF


_NAMED_COLOURS = {
    0xFF0000: "red",
    0x00FF00: "green",
    0x0000FF: "blue",
    0xFFFF00: "yellow",
    0x00FFFF: "cyan",
    0xFF00FF: "magenta",
    0xFFFFFF: "white",
    0xFFA500: "orange",
    0x800080: "purple",
    # The hub's palette (hub/core/leds.py), by the names docs/leds.md uses.
    0x3050FF: "blue",
    0x00FF40: "green",
    0xFF2020: "red",
    0xFFA000: "amber",
    0x00E0FF: "cyan",
    0xFF40C0: "magenta",
    0xA0FF00: "lime",
    0x8040FF: "violet",
}


def describe_rgba(rgba: int) -> str:
    """A short, exact label for one LED: a colour name or #RRGGBB, plus intensity if dimmed."""
    rgb = rgb_of(rgba)
    if rgb == 0:
        return "off"
    name = _NAMED_COLOURS.get(rgb, f"#{rgb:06x}")
    alpha = intensity_of(rgba)
    return name if alpha == 0xFF else f"{name}@{alpha * 100 // 255}%"


def describe_frame(leds: tuple[int, ...]) -> str:
    return " ".join(describe_rgba(rgba) for rgba in leds)


@dataclass(frozen=True)
class StatusReply:
    """What the device does with one ``DeviceStatusRequest``."""

    response: comms_pb2.DeviceStatusResponse
    leds_changed: bool
    warnings: tuple[str, ...] = ()


class DeviceModel:
    """The device's LEDs and its answers on StatusStream.

    The wire behaviour matches the stock client so the server is tested
    against what real devices do: ``get`` answers the six LEDs, ``set`` paints
    LEDs 1-5 (an LED missing from the message is painted black, as the stock
    client does) and answers ``status="success"``. Where the stock client
    would silently do something surprising the reply carries a warning.
    """

    def __init__(self) -> None:
        self._leds = [LED_OFF] * LED_COUNT
        # Battery is not simulated; a full battery is the honest default.
        self.battery_level = 1.0

    @property
    def leds(self) -> tuple[int, ...]:
        return tuple(self._leds)

    def power_on(self) -> None:
        """Connect pressed: the device lights its own LED 0."""
        self._leds[0] = DEVICE_LED_ON

    def power_off(self) -> None:
        """Disconnected: nothing drives the LEDs any more, so all go dark."""
        self._leds = [LED_OFF] * LED_COUNT

    def status(self) -> comms_pb2.DeviceStatus:
        leds = {
            name: comms_pb2.RGBAColor(rgba=rgba)
            for name, rgba in zip(_LED_FIELDS, self._leds, strict=True)
        }
        # A click is a PRESS immediately followed by a release; no button is
        # ever held down between requests, so all report RELEASED.
        released = comms_pb2.DeviceStatus.RELEASED
        return comms_pb2.DeviceStatus(
            **leds,
            button_1=released,
            button_2=released,
            button_3=released,
            button_4=released,
            battery_level=self.battery_level,
        )

    def handle(self, request: comms_pb2.DeviceStatusRequest) -> StatusReply:
        kind = request.WhichOneof("request")
        if kind == "get":
            return StatusReply(comms_pb2.DeviceStatusResponse(state=self.status()), False)
        if kind == "set":
            return self._apply_set(request.set)
        # The stock client takes anything that is not `get` as a `set` and
        # blacks out LEDs 1-5; answering an error is more useful to a server
        # developer, and the warning says what a real device would have done.
        return StatusReply(
            comms_pb2.DeviceStatusResponse(status="error: empty DeviceStatusRequest"),
            False,
            ("empty DeviceStatusRequest: the stock client would black out LEDs 1-5",),
        )

    def _apply_set(self, frame: comms_pb2.DeviceStatusSet) -> StatusReply:
        missing = [name for name in _LED_FIELDS[1:] if not frame.HasField(name)]
        new = [self._leds[0]]  # led_0 is ours; the server's value is ignored
        new += [getattr(frame, name).rgba for name in _LED_FIELDS[1:]]
        changed = new != self._leds
        self._leds = new
        warnings: tuple[str, ...] = ()
        if missing:
            warnings = (
                f"set without {', '.join(missing)}: painted black, as the stock client does",
            )
        return StatusReply(comms_pb2.DeviceStatusResponse(status="success"), changed, warnings)


# Events out of the audio tracker, in the order the player must see them.
@dataclass(frozen=True)
class AudioStart:
    pass


@dataclass(frozen=True)
class AudioData:
    opus: bytes


@dataclass(frozen=True)
class AudioEnd:
    pass


@dataclass(frozen=True)
class ProtocolWarning:
    text: str


AudioEvent = AudioStart | AudioData | AudioEnd | ProtocolWarning


# Packet sequences the stock client cannot take, and what it does with them.
_STOCK_CLIENT_FAULTS = {
    "restart": "is_start inside an open stream: the stock client drops the unfinished one unplayed",
    "orphan-end": "is_end without is_start: the stock client's audio thread dies on this",
    "no-start": "audio packet before any is_start: the stock client has no file open for it",
    "empty": "empty AudioPacket.data: the stock client plays it as 120 ms of noise",
}


class AudioStreamTracker:
    """Which audio stream a packet belongs to, from the ``is_start``/``is_end`` flags.

    This simulator keeps playing where the stock client would break, but it
    warns (once per kind of fault per connection, since a broken server
    repeats the same fault at 50 packets a second):

    - a packet with no open stream (a device that joined late, or an
      ``is_end`` without its start) implicitly opens one;
    - a second ``is_start`` ends the open stream first;
    - an empty ``data`` is skipped, not decoded as 120 ms of concealment noise.
    """

    def __init__(self) -> None:
        self.in_stream = False
        self._warned: set[str] = set()

    def packet(self, is_start: bool, is_end: bool, data: bytes) -> list[AudioEvent]:
        events: list[AudioEvent] = []
        if is_start:
            if self.in_stream:
                self._warn(events, "restart")
                events.append(AudioEnd())
            events.append(AudioStart())
            self.in_stream = True
        elif not self.in_stream:
            self._warn(events, "orphan-end" if is_end else "no-start")
            events.append(AudioStart())
            self.in_stream = True
        if data:
            events.append(AudioData(data))
        else:
            self._warn(events, "empty")
        if is_end:
            events.append(AudioEnd())
            self.in_stream = False
        return events

    def abort(self) -> list[AudioEvent]:
        """The connection ended; close a stream left open so its recording is finished."""
        if not self.in_stream:
            return []
        self.in_stream = False
        return [AudioEnd()]

    def _warn(self, events: list[AudioEvent], fault: str) -> None:
        if fault not in self._warned:
            self._warned.add(fault)
            events.append(ProtocolWarning(_STOCK_CLIENT_FAULTS[fault]))
