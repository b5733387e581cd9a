"""The simulator's window, offscreen: sized to its devices, each device one framed body."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import pytest
from PyQt5.QtCore import QRect
from PyQt5.QtWidgets import QApplication, QPushButton
from qt_helpers import WaitUntil

from clients.qt_device.__main__ import build_window, parse_args
from clients.qt_device.loop import LoopThread
from clients.qt_device.widgets import DevicePanel, MainWindow

pytestmark = pytest.mark.qt


def open_window(loop_thread: LoopThread, count: int) -> MainWindow:
    """The window as `python -m clients.qt_device --count COUNT` opens it."""
    window = build_window(parse_args(["--count", str(count), "--no-audio"]), loop_thread)
    window.show()
    return window


@pytest.fixture
def two_devices(loop_thread: LoopThread, qapp: QApplication) -> Iterator[MainWindow]:
    window = open_window(loop_thread, 2)
    yield window
    window.close()


@pytest.fixture
def one_device(loop_thread: LoopThread, qapp: QApplication) -> Iterator[MainWindow]:
    window = open_window(loop_thread, 1)
    yield window
    window.close()


def wait_for_layout(window: MainWindow, wait_until: WaitUntil) -> None:
    wait_until(lambda: window.isVisible() and window.scroll_area.viewport().width() > 0, "layout")
    QApplication.processEvents()  # the layout requests posted by show()


def in_viewport(window: MainWindow, panel: DevicePanel) -> bool:
    viewport = window.scroll_area.viewport()
    top_left = panel.mapTo(viewport, panel.rect().topLeft())
    return viewport.rect().contains(QRect(top_left, panel.size()))


def caption_fits(button: QPushButton) -> bool:
    # The caption and at least the frame's few pixels a side.
    return button.width() >= button.fontMetrics().horizontalAdvance(button.text()) + 8


def scroll_bars_shown(window: MainWindow) -> list[str]:
    area = window.scroll_area
    bars = {"horizontal": area.horizontalScrollBar(), "vertical": area.verticalScrollBar()}
    return [name for name, bar in bars.items() if bar.isVisible()]


def test_two_devices_fit_without_scroll_bars(
    two_devices: MainWindow, wait_until: WaitUntil
) -> None:
    wait_for_layout(two_devices, wait_until)

    assert scroll_bars_shown(two_devices) == []
    for panel in two_devices.panels:
        assert in_viewport(two_devices, panel), f"{panel.title()} is cut off"
        assert panel.audio_label.isVisible()
    hint = two_devices.sizeHint()
    assert two_devices.width() >= hint.width() and two_devices.height() >= hint.height()


def test_a_device_added_later_grows_the_window(
    one_device: MainWindow, wait_until: WaitUntil
) -> None:
    wait_for_layout(one_device, wait_until)
    width = one_device.width()

    one_device.add_button.click()
    wait_until(lambda: one_device.panels[1].isVisible(), "the new panel")
    wait_for_layout(one_device, wait_until)

    assert one_device.width() > width
    assert scroll_bars_shown(one_device) == []
    assert all(in_viewport(one_device, panel) for panel in one_device.panels)


def test_a_warning_line_grows_the_window(two_devices: MainWindow, wait_until: WaitUntil) -> None:
    wait_for_layout(two_devices, wait_until)
    panel = two_devices.panels[1]
    height = two_devices.height()

    warning = "the server sent an is_end without its is_start; played it as a stream of its own"
    panel.show_view(dataclasses.replace(panel.device.view, warning=warning))
    wait_until(lambda: two_devices.height() > height, "the window to grow")
    QApplication.processEvents()

    assert scroll_bars_shown(two_devices) == []
    assert in_viewport(two_devices, panel)


def test_a_device_is_its_leds_above_its_buttons_in_one_frame(
    two_devices: MainWindow, wait_until: WaitUntil
) -> None:
    wait_for_layout(two_devices, wait_until)
    for panel in two_devices.panels:
        buttons = [panel.connect_button, panel.mode_button, panel.play_button, panel.stop_button]
        assert all(w.parent() is panel.gadget for w in [*panel.leds, *buttons])
        lowest_led = max(led.geometry().bottom() for led in panel.leds)
        assert all(button.geometry().top() > lowest_led for button in buttons)
        lefts_to_rights = [(b.geometry().left(), b.geometry().right()) for b in buttons]
        assert all(a[1] < b[0] for a, b in itertools.pairwise(lefts_to_rights)), "overlap"
        assert panel.gadget.rect().contains(buttons[-1].geometry())
        panel.connect_button.setText("Disconnect")  # its caption while connected
        assert all(caption_fits(button) for button in buttons)
        # State and mode in words, beneath the device.
        assert panel.state_label.geometry().top() > panel.gadget.geometry().bottom()
        assert panel.mode_label.geometry().top() > panel.state_label.geometry().top()
