"""``python -m clients.qt_device``: open the device simulator window."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication

from clients.qt_device.audio import AudioSink, NullSink, SpeakerFactory, WavSink
from clients.qt_device.device import SimulatedDevice, build_device
from clients.qt_device.jitter import DEFAULT_PREFILL_MS
from clients.qt_device.loop import LoopThread
from clients.qt_device.widgets import DEFAULT_DEVICE_ID, DEFAULT_SERVER, MainWindow

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m clients.qt_device",
        description="Simulated audio devices for the hub's DeviceService.",
    )
    parser.add_argument("--server", default=DEFAULT_SERVER, help="host:port of the hub")
    parser.add_argument("--device-id", default=DEFAULT_DEVICE_ID, help="id of the first device")
    parser.add_argument("--count", type=int, default=1, help="device panels to open")
    parser.add_argument(
        "--same-room",
        action="store_true",
        help="give every panel the same device id (default: ID, ID-2, ID-3, ...)",
    )
    parser.add_argument("--connect", action="store_true", help="connect every panel at start")
    parser.add_argument(
        "--record", type=Path, metavar="DIR", help="write each audio stream to a WAV file in DIR"
    )
    parser.add_argument("--no-audio", action="store_true", help="never open the sound card")
    parser.add_argument(
        "--prefill-ms",
        type=int,
        default=DEFAULT_PREFILL_MS,
        help="audio buffered before playback starts (default %(default)s)",
    )
    parser.add_argument(
        "--quit-after", type=float, metavar="SECONDS", help="close the window after SECONDS"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    return args


def build_window(args: argparse.Namespace, loop: LoopThread) -> MainWindow:
    """The window with ``--count`` panels, their audio going where the options say."""
    speakers = SpeakerFactory(enabled=not args.no_audio, prefill_ms=args.prefill_ms)

    def make_device() -> SimulatedDevice:
        sinks: list[AudioSink] = []
        speaker = speakers.create()
        if speaker is not None:
            sinks.append(speaker)
        if args.record is not None:
            sinks.append(WavSink(args.record))
        return build_device(loop, sinks or [NullSink()])

    window = MainWindow(
        make_device, server=args.server, device_id=args.device_id, same_room=args.same_room
    )
    for _ in range(args.count):
        window.add_device()
    return window


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = QApplication(sys.argv[:1])
    loop = LoopThread()
    window = build_window(args, loop)
    if args.connect:
        window.connect_all()
    window.show()

    # Qt's event loop keeps Python from running signal handlers; a ticking
    # timer hands control back often enough for Ctrl-C to close the window.
    signal.signal(signal.SIGINT, lambda *_: app.quit())
    ticker = QTimer()
    ticker.timeout.connect(lambda: None)
    ticker.start(200)
    if args.quit_after is not None:
        QTimer.singleShot(int(args.quit_after * 1000), app.quit)
    try:
        return app.exec_()
    finally:
        window.shutdown()
        loop.stop()


if __name__ == "__main__":
    sys.exit(main())
