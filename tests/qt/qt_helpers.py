"""Fixtures for the device simulator's tests: offscreen Qt, a fake DeviceService."""

from __future__ import annotations

import os

# Before anything imports PyQt5: there is no display here, nor in CI.
os.environ["QT_QPA_PLATFORM"] = "offscreen"

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_device_server import FakeDeviceService, FakeServer, encode, sine
from PyQt5.QtTest import QTest
from PyQt5.QtWidgets import QApplication
from waiting import scaled

from clients.qt_device.audio import AudioSink, RecordingSink, WavSink
from clients.qt_device.device import SimulatedDevice, build_device
from clients.qt_device.loop import LoopThread

PLAY_SECONDS = 0.3

WaitUntil = Callable[..., None]


@pytest.fixture(scope="session")
def qapp() -> QApplication:
    app = QApplication.instance()
    return app if isinstance(app, QApplication) else QApplication([])


def _wait_until(predicate: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Spin the Qt event loop until ``predicate()`` holds; fail after ``timeout``."""
    bound = scaled(timeout)  # HUB_TEST_TIMEOUT_FACTOR=3 pytest ... on slow machines
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {bound:g} s waiting for {what}")
        # Processes queued signals for up to 10 ms. (PyQt5's stub wrongly
        # declares this static method as an instance method.)
        QTest.qWait(10)  # type: ignore[call-arg, arg-type]


@pytest.fixture
def wait_until(qapp: QApplication) -> WaitUntil:
    return _wait_until


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread("test-devices")
    yield loop
    loop.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(**options: object) -> FakeServer:
        options.setdefault("packets", encode(sine(PLAY_SECONDS)))
        server = FakeServer(FakeDeviceService(**options))  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., FakeServer]) -> FakeServer:
    return start_server()


class DeviceUnderTest:
    """A simulated device whose audio goes to memory (and to WAVs if asked)."""

    def __init__(self, device: SimulatedDevice, recording: RecordingSink, wav: WavSink | None):
        self.device = device
        self.recording = recording
        self.wav = wav


@pytest.fixture
def make_device(
    qapp: QApplication, loop_thread: LoopThread, tmp_path: Path
) -> Iterator[Callable[..., DeviceUnderTest]]:
    made: list[DeviceUnderTest] = []

    def make(*, record: bool = False, connect_timeout: float = 2.0) -> DeviceUnderTest:
        recording = RecordingSink()
        wav = WavSink(tmp_path / "wav") if record else None
        sinks: list[AudioSink] = [recording] if wav is None else [recording, wav]
        made.append(
            DeviceUnderTest(
                build_device(loop_thread, sinks, connect_timeout=connect_timeout), recording, wav
            )
        )
        return made[-1]

    yield make
    for test_device in made:
        test_device.device.shutdown()
