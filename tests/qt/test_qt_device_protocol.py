"""The simulator's sans-I/O device model and audio tracker: messages in, messages out."""

from __future__ import annotations

from clients.qt_device.protocol import (
    DEVICE_LED_ON,
    AudioData,
    AudioEnd,
    AudioStart,
    AudioStreamTracker,
    Button,
    DeviceModel,
    ProtocolWarning,
    describe_frame,
    describe_rgba,
    press_event,
    rgb_of,
)
from clients.qt_device.scheme import HubReading, read_frame
from hub.core import leds
from hub.core.roomstate import RoomState
from hub.proto import comms_pb2


def full_set(*rgba: int) -> comms_pb2.DeviceStatusRequest:
    leds = {f"led_{i}": comms_pb2.RGBAColor(rgba=v) for i, v in enumerate(rgba)}
    return comms_pb2.DeviceStatusRequest(set=comms_pb2.DeviceStatusSet(**leds))


def test_buttons_are_the_stock_ids_as_a_single_press() -> None:
    # DeviceEvent{button_event{button_id=BUTTON_2}}; PRESS is 0, so not on the wire.
    assert press_event(Button.MODE).SerializeToString() == b"\x0a\x02\x08\x01"
    assert press_event(Button.STOP).SerializeToString() == b"\x0a\x02\x08\x02"
    assert press_event(Button.PLAY).SerializeToString() == b"\x0a\x02\x08\x03"
    assert press_event(Button.PLAY).button_event.event == comms_pb2.ButtonEvent.PRESS


def test_get_answers_all_six_leds_and_released_buttons() -> None:
    model = DeviceModel()
    model.power_on()
    model.handle(full_set(0, 0xFF0000FF, 0x00FF0080, 0, 0, 0x0000FFFF))

    reply = model.handle(comms_pb2.DeviceStatusRequest(get=True))

    state = reply.response.state
    assert reply.response.WhichOneof("response") == "state"
    leds = [getattr(state, f"led_{i}").rgba for i in range(6)]
    assert leds == [DEVICE_LED_ON, 0xFF0000FF, 0x00FF0080, 0, 0, 0x0000FFFF]
    assert {state.button_1, state.button_2, state.button_3, state.button_4} == {
        comms_pb2.DeviceStatus.RELEASED
    }
    assert not reply.leds_changed


def test_get_false_is_still_a_get() -> None:
    # proto3 oneofs keep presence: `get=False` is set, and the stock client answers it.
    reply = DeviceModel().handle(comms_pb2.DeviceStatusRequest(get=False))
    assert reply.response.WhichOneof("response") == "state"


def test_set_paints_leds_1_to_5_and_never_led_0() -> None:
    model = DeviceModel()
    model.power_on()

    reply = model.handle(full_set(0x12345678, 1, 2, 3, 4, 5))

    assert reply.response.status == "success"
    assert reply.leds_changed
    assert reply.warnings == ()
    assert model.leds == (DEVICE_LED_ON, 1, 2, 3, 4, 5)
    assert not model.handle(full_set(0x12345678, 1, 2, 3, 4, 5)).leds_changed


def test_set_with_a_missing_led_paints_it_black_and_says_so() -> None:
    model = DeviceModel()
    model.handle(full_set(0, 1, 2, 3, 4, 5))
    partial = comms_pb2.DeviceStatusRequest(
        set=comms_pb2.DeviceStatusSet(led_1=comms_pb2.RGBAColor(rgba=9))
    )

    reply = model.handle(partial)

    assert reply.response.status == "success"
    assert model.leds == (0, 9, 0, 0, 0, 0)
    assert reply.warnings == (
        "set without led_2, led_3, led_4, led_5: painted black, as the stock client does",
    )


def test_an_empty_request_is_answered_with_an_error() -> None:
    model = DeviceModel()
    model.handle(full_set(0, 1, 2, 3, 4, 5))

    reply = model.handle(comms_pb2.DeviceStatusRequest())

    assert reply.response.status.startswith("error")
    assert model.leds == (0, 1, 2, 3, 4, 5)
    assert len(reply.warnings) == 1


def test_power_off_darkens_everything() -> None:
    model = DeviceModel()
    model.power_on()
    model.handle(full_set(0, 1, 2, 3, 4, 5))
    model.power_off()
    assert model.leds == (0,) * 6


def test_led_descriptions() -> None:
    assert rgb_of(0x11223344) == 0x112233
    assert describe_rgba(0xFF0000FF) == "red"
    assert describe_rgba(0x000000FF) == "off"
    assert describe_rgba(0x12345678) == "#123456@47%"
    assert describe_rgba(0x0000FF80) == "blue@50%"
    assert describe_frame((0xFF0000FF, 0)) == "red off"


def test_tracker_passes_a_well_formed_stream() -> None:
    tracker = AudioStreamTracker()
    assert tracker.packet(True, False, b"a") == [AudioStart(), AudioData(b"a")]
    assert tracker.packet(False, False, b"b") == [AudioData(b"b")]
    assert tracker.packet(False, True, b"c") == [AudioData(b"c"), AudioEnd()]
    assert tracker.packet(True, True, b"d") == [AudioStart(), AudioData(b"d"), AudioEnd()]
    assert not tracker.in_stream


def test_tracker_repairs_what_would_kill_the_stock_client_and_warns_once() -> None:
    tracker = AudioStreamTracker()

    orphan_end = tracker.packet(False, True, b"x")
    assert isinstance(orphan_end[0], ProtocolWarning)
    assert "is_end without is_start" in orphan_end[0].text
    assert orphan_end[1:] == [AudioStart(), AudioData(b"x"), AudioEnd()]
    assert tracker.packet(False, True, b"y") == [AudioStart(), AudioData(b"y"), AudioEnd()]

    joined_late = tracker.packet(False, False, b"z")
    assert isinstance(joined_late[0], ProtocolWarning)
    assert joined_late[1:] == [AudioStart(), AudioData(b"z")]

    restart = tracker.packet(True, False, b"s")
    assert isinstance(restart[0], ProtocolWarning)
    assert restart[1:] == [AudioEnd(), AudioStart(), AudioData(b"s")]

    empty = tracker.packet(False, False, b"")
    assert len(empty) == 1 and isinstance(empty[0], ProtocolWarning)
    assert tracker.packet(False, False, b"") == []


def test_tracker_abort_closes_an_open_stream_only() -> None:
    tracker = AudioStreamTracker()
    assert tracker.abort() == []
    tracker.packet(True, False, b"a")
    assert tracker.abort() == [AudioEnd()]
    assert tracker.abort() == []


def test_every_frame_of_the_hubs_scheme_reads_back() -> None:
    for state in RoomState:
        for mode in range(leds.MAX_MODES):
            frame = leds.frame(state, mode)
            assert read_frame(frame) == HubReading(state.value, mode)
            assert read_frame(leds.flashed(frame)) == HubReading("connect flash", mode)


def test_frames_outside_the_hubs_scheme_read_as_nothing() -> None:
    amber, cyan = leds.MODE_COLOURS[:2]
    idle = leds.STATE_COLOURS[RoomState.IDLE]
    assert read_frame((0, 0xFF0000FF, amber, 0, 0, 0)) is None  # unknown state colour
    assert read_frame((0, idle, 0, 0, 0, 0)) is None  # no mode lit
    assert read_frame((0, idle, amber, cyan, 0, 0)) is None  # mixed colours
    assert read_frame((0, idle, amber, 0, amber, 0)) is None  # not a prefix
    assert read_frame((0, idle, 0xFF0000FF, 0, 0, 0)) is None  # not a mode colour
    assert read_frame((0, idle)) is None
