"""The simulator end to end, offscreen: clicks in, a fake DeviceService on loopback."""

from __future__ import annotations

import socket
import wave
from collections.abc import Callable

import numpy as np
import pytest
from fake_device_server import (
    FRAME,
    GARBAGE,
    FakeServer,
    encode,
    hub_frame,
    sine,
    sine_fraction,
)
from PyQt5.QtGui import QColor
from qt_helpers import PLAY_SECONDS, DeviceUnderTest, WaitUntil

from clients.qt_device.__main__ import build_window, parse_args
from clients.qt_device.device import Link
from clients.qt_device.loop import LoopThread
from clients.qt_device.protocol import DEVICE_LED_ON, rgb_of
from clients.qt_device.widgets import DevicePanel, MainWindow
from hub.core.roomstate import RoomState
from hub.proto import comms_pb2

pytestmark = pytest.mark.qt

MODE = comms_pb2.ButtonEvent.BUTTON_2
STOP = comms_pb2.ButtonEvent.BUTTON_3
PLAY = comms_pb2.ButtonEvent.BUTTON_4
PRESS = comms_pb2.ButtonEvent.PRESS
PLAY_SAMPLES = int(PLAY_SECONDS * 50) * FRAME
IDLE = RoomState.IDLE


def panel_for(dut: DeviceUnderTest, server: FakeServer, device_id: str) -> DevicePanel:
    return DevicePanel(dut.device, device_id=device_id, server=server.target)


def colours(panel: DevicePanel) -> list[QColor]:
    return [led.color() for led in panel.leds]


def expected_colours(frame: tuple[int, ...]) -> list[QColor]:
    # LED 0 shows the device's own colour, never the server's led_0.
    return [QColor.fromRgb(rgb_of(DEVICE_LED_ON))] + [QColor.fromRgb(rgb_of(v)) for v in frame[1:]]


def connect(
    panel: DevicePanel, wait_until: WaitUntil, frame: tuple[int, ...] = hub_frame(IDLE, 0)
) -> None:
    panel.connect_button.click()
    wait_until(lambda: colours(panel) == expected_colours(frame), "the first LED frame")


def test_connect_lights_led_0_and_shows_the_servers_frame(
    server: FakeServer, make_device: Callable[..., DeviceUnderTest], wait_until: WaitUntil
) -> None:
    panel = panel_for(make_device(), server, "kitchen")
    assert not panel.mode_button.isEnabled()

    connect(panel, wait_until)

    assert panel.device.view.link is Link.ONLINE
    assert panel.connect_button.text() == "Disconnect"
    assert all(b.isEnabled() for b in (panel.mode_button, panel.play_button, panel.stop_button))
    assert not panel.device_id_edit.isEnabled()
    assert "connected to 127.0.0.1" in panel.state_label.text()
    assert panel.state_label.text().endswith("as kitchen, room idle")
    assert panel.mode_label.text() == "Mode: 1 (LEDs 1-5: blue@37% amber off off off)"
    # Connect is local: nothing reached EventStream, and the set was acknowledged.
    assert server.service.events() == []
    wait_until(lambda: len(server.service.answers("kitchen")) == 1, "the answer to the set")
    assert server.service.answers("kitchen")[0].status == "success"


def test_mode_sends_button_2_and_the_leds_follow_the_server(
    server: FakeServer, make_device: Callable[..., DeviceUnderTest], wait_until: WaitUntil
) -> None:
    panel = panel_for(make_device(), server, "kitchen")
    connect(panel, wait_until)

    panel.mode_button.click()
    wait_until(lambda: colours(panel) == expected_colours(hub_frame(IDLE, 1)), "mode 1")
    panel.mode_button.click()
    wait_until(lambda: colours(panel) == expected_colours(hub_frame(IDLE, 2)), "mode 2")

    assert server.service.events() == [("kitchen", MODE, PRESS)] * 2
    assert panel.leds[1].rgba == 0x3050FF60  # the intensity is kept, not just the colour
    assert panel.mode_label.text() == "Mode: 3 (LEDs 1-5: blue@37% amber amber amber off)"
    wait_until(lambda: panel.device.view.acks == 2, "both acknowledgements")


def test_get_is_answered_with_the_leds_on_screen(
    server: FakeServer, make_device: Callable[..., DeviceUnderTest], wait_until: WaitUntil
) -> None:
    panel = panel_for(make_device(), server, "kitchen")
    connect(panel, wait_until)

    server.call_soon(server.service.send_get, "kitchen")
    wait_until(
        lambda: any(a.HasField("state") for a in server.service.answers("kitchen")),
        "the answer to get",
    )

    [state] = [a.state for a in server.service.answers("kitchen") if a.HasField("state")]
    shown = [led.rgba for led in panel.leds]
    assert [getattr(state, f"led_{i}").rgba for i in range(6)] == shown
    assert shown == [DEVICE_LED_ON, *hub_frame(IDLE, 0)[1:]]


def test_play_is_heard_while_the_stream_arrives_and_recorded(
    server: FakeServer, make_device: Callable[..., DeviceUnderTest], wait_until: WaitUntil
) -> None:
    dut = make_device(record=True)
    panel = panel_for(dut, server, "kitchen")
    connect(panel, wait_until)

    panel.play_button.click()
    # Decoded audio is out before the server has sent the end of the stream.
    player = dut.device.player
    wait_until(lambda: player.current is not None and player.current.samples > 0, "audio")
    assert dut.recording.streams == []
    assert panel.audio_label.text().startswith("Audio: playing")
    wait_until(lambda: "room playing" in panel.state_label.text(), "the playing LED")
    wait_until(lambda: len(dut.recording.streams) == 1, "the end of the stream")

    [samples] = dut.recording.streams
    assert len(samples) == PLAY_SAMPLES
    assert sine_fraction(samples) > 0.95
    assert server.service.events() == [("kitchen", PLAY, PRESS)]
    assert dut.wav is not None
    [path] = dut.wav.files
    with wave.open(str(path), "rb") as recorded:
        np.testing.assert_array_equal(
            np.frombuffer(recorded.readframes(recorded.getnframes()), dtype="<i2"), samples
        )
    assert panel.audio_label.text().startswith(f"Audio: idle (last stream {PLAY_SECONDS:.2f} s)")
    wait_until(lambda: "room idle" in panel.state_label.text(), "the idle LED")


def test_stop_sends_button_3_and_ends_a_long_stream(
    start_server: Callable[..., FakeServer],
    make_device: Callable[..., DeviceUnderTest],
    wait_until: WaitUntil,
) -> None:
    server = start_server(packets=encode(sine(20.0)))
    dut = make_device()
    panel = panel_for(dut, server, "kitchen")
    connect(panel, wait_until)

    panel.play_button.click()
    wait_until(lambda: dut.device.player.playing, "the stream to start")
    panel.stop_button.click()
    wait_until(lambda: len(dut.recording.streams) == 1, "the stream to end")

    assert server.service.events() == [("kitchen", PLAY, PRESS), ("kitchen", STOP, PRESS)]
    assert len(dut.recording.streams[0]) < 5 * 48_000


def test_a_corrupt_packet_is_skipped_and_the_device_stays_connected(
    start_server: Callable[..., FakeServer],
    make_device: Callable[..., DeviceUnderTest],
    wait_until: WaitUntil,
) -> None:
    server = start_server(corrupt=frozenset({3}))
    dut = make_device()
    panel = panel_for(dut, server, "kitchen")
    connect(panel, wait_until)

    panel.play_button.click()
    wait_until(lambda: len(dut.recording.streams) == 1, "the stream to end")

    assert len(dut.recording.streams[0]) == PLAY_SAMPLES - FRAME
    assert "1 bad packets skipped" in panel.audio_label.text()
    assert panel.device.view.link is Link.ONLINE
    assert GARBAGE not in server.service.packets


def test_several_devices_in_their_own_rooms(
    server: FakeServer,
    make_device: Callable[..., DeviceUnderTest],
    wait_until: WaitUntil,
) -> None:
    made: list[DeviceUnderTest] = []

    def factory() -> object:
        made.append(make_device())
        return made[-1].device

    window = MainWindow(factory, server=server.target, device_id="room")  # type: ignore[arg-type]
    for _ in range(2):
        window.add_device()
    window.add_button.click()
    assert [p.device_id_edit.text() for p in window.panels] == ["room", "room-2", "room-3"]

    window.connect_all()
    first = expected_colours(hub_frame(IDLE, 0))
    wait_until(lambda: all(colours(p) == first for p in window.panels), "all three connected")

    window.panels[1].mode_button.click()
    window.panels[2].play_button.click()
    wait_until(lambda: colours(window.panels[1]) == expected_colours(hub_frame(IDLE, 1)), "mode")
    wait_until(lambda: len(made[2].recording.streams) == 1, "room-3's audio")

    assert colours(window.panels[0]) == first
    wait_until(lambda: colours(window.panels[2]) == first, "room-3 back to idle")
    assert made[0].recording.labels == made[1].recording.labels == []
    assert sine_fraction(made[2].recording.streams[0]) > 0.95
    assert sorted(server.service.events()) == [("room-2", MODE, PRESS), ("room-3", PLAY, PRESS)]


def test_devices_sharing_an_id_hear_the_same_stream(
    server: FakeServer,
    make_device: Callable[..., DeviceUnderTest],
    wait_until: WaitUntil,
) -> None:
    duts = [make_device(), make_device()]
    panels = [panel_for(dut, server, "shared") for dut in duts]
    for panel in panels:
        connect(panel, wait_until)
    wait_until(lambda: server.service.audio_listeners("shared") == 2, "both audio streams")

    panels[0].play_button.click()
    wait_until(lambda: all(len(d.recording.streams) == 1 for d in duts), "audio on both")

    np.testing.assert_array_equal(duts[0].recording.streams[0], duts[1].recording.streams[0])
    assert server.service.events() == [("shared", PLAY, PRESS)]


def test_disconnect_darkens_the_device_and_it_can_reconnect(
    server: FakeServer, make_device: Callable[..., DeviceUnderTest], wait_until: WaitUntil
) -> None:
    panel = panel_for(make_device(), server, "kitchen")
    connect(panel, wait_until)
    wait_until(lambda: server.service.audio_listeners("kitchen") == 1, "the audio stream")

    panel.connect_button.click()
    wait_until(lambda: panel.device.view.link is Link.OFFLINE, "the disconnection")

    assert all(led.rgba == 0 for led in panel.leds)
    assert panel.state_label.text() == "State: disconnected"
    assert not panel.play_button.isEnabled()
    wait_until(lambda: server.service.audio_listeners("kitchen") == 0, "the server to notice")
    connect(panel, wait_until)
    assert server.service.events() == []


def test_disconnect_pressed_while_connecting_ends_cleanly(
    server: FakeServer, make_device: Callable[..., DeviceUnderTest], wait_until: WaitUntil
) -> None:
    panel = panel_for(make_device(), server, "kitchen")

    panel.connect_button.click()
    panel.connect_button.click()  # before the loop thread has even started
    wait_until(lambda: panel.device.view.link is Link.OFFLINE, "the disconnection")

    assert panel.device.view.error == ""
    assert all(led.rgba == 0 for led in panel.leds)
    connect(panel, wait_until)


def test_the_server_going_away_is_shown_and_connect_comes_back(
    server: FakeServer, make_device: Callable[..., DeviceUnderTest], wait_until: WaitUntil
) -> None:
    panel = panel_for(make_device(), server, "kitchen")
    connect(panel, wait_until)

    server.stop()
    wait_until(lambda: panel.device.view.link is Link.OFFLINE, "the disconnection")

    assert panel.device.view.error != ""
    assert panel.state_label.text().startswith("State: disconnected: ")
    assert panel.connect_button.isEnabled() and panel.connect_button.text() == "Connect"
    assert not panel.mode_button.isEnabled()
    assert all(led.rgba == 0 for led in panel.leds)


def test_a_refusing_server_is_shown(
    start_server: Callable[..., FakeServer],
    make_device: Callable[..., DeviceUnderTest],
    wait_until: WaitUntil,
) -> None:
    server = start_server(reject=frozenset({"intruder"}))
    panel = panel_for(make_device(), server, "intruder")

    panel.connect_button.click()
    wait_until(lambda: panel.device.view.error != "", "the refusal")

    assert "PERMISSION_DENIED: unknown device intruder" in panel.state_label.text()
    assert panel.connect_button.text() == "Connect"


def test_nobody_listening_is_shown(
    make_device: Callable[..., DeviceUnderTest], wait_until: WaitUntil
) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    panel = DevicePanel(make_device(connect_timeout=0.3).device, server=f"127.0.0.1:{port}")

    panel.connect_button.click()
    wait_until(lambda: panel.device.view.error != "", "the connection to fail")

    assert "cannot reach" in panel.state_label.text()
    assert panel.connect_button.isEnabled()


def test_command_line_opens_count_panels(loop_thread: LoopThread, qapp: object) -> None:
    args = parse_args(["--count", "3", "--device-id", "kitchen", "--no-audio"])
    window = build_window(args, loop_thread)
    try:
        assert [p.device_id_edit.text() for p in window.panels] == [
            "kitchen",
            "kitchen-2",
            "kitchen-3",
        ]
        assert window.panels[0].server_edit.text() == "localhost:50051"
    finally:
        window.shutdown()

    same = build_window(parse_args(["--count", "2", "--same-room", "--no-audio"]), loop_thread)
    try:
        assert [p.device_id_edit.text() for p in same.panels] == ["test_client"] * 2
    finally:
        same.shutdown()
