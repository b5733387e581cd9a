"""Decoding and output of the server's audio: the player and its sinks. No Qt.

``AudioPlayer`` decodes each Opus packet as it arrives and hands the PCM to
every sink at once, so the device is heard while the stream is still coming
(the stock client only plays a stream after its ``is_end``). Sinks:

- ``SpeakerSink``: a sounddevice OutputStream pulling from a ``JitterBuffer``;
- ``WavSink``: one WAV file per stream (``--record DIR``);
- ``RecordingSink``: keeps the samples in memory, for tests;
- ``NullSink``: counts and discards (no sound card, nothing to record).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import opuslib

from clients.qt_device.jitter import DEFAULT_PREFILL_MS, SAMPLE_RATE, JitterBuffer, Pcm

log = logging.getLogger(__name__)

# The longest Opus packet is 120 ms; the decoder needs room for that much.
MAX_FRAME_SAMPLES = SAMPLE_RATE * 120 // 1000
# 10 ms per sound-card callback: small enough that the jitter buffer, not the
# card, dominates latency, large enough for Python to keep up.
SPEAKER_BLOCK = SAMPLE_RATE // 100


class AudioSink(Protocol):
    """Where decoded audio goes: 48 kHz mono int16, one ``begin``..``end`` per stream."""

    def begin(self, label: str) -> None: ...

    def write(self, pcm: Pcm) -> None: ...

    def end(self) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Discards audio; counts it so the UI can still say how much arrived."""

    def __init__(self) -> None:
        self.samples = 0

    def begin(self, label: str) -> None:
        pass

    def write(self, pcm: Pcm) -> None:
        self.samples += len(pcm)

    def end(self) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingSink:
    """Keeps every stream's samples in memory, finished ones in ``streams``."""

    def __init__(self) -> None:
        self.streams: list[Pcm] = []
        self.labels: list[str] = []
        self._current: list[Pcm] | None = None

    @property
    def in_stream(self) -> bool:
        return self._current is not None

    def begin(self, label: str) -> None:
        self._current = []
        self.labels.append(label)

    def write(self, pcm: Pcm) -> None:
        if self._current is not None:
            self._current.append(pcm)

    def end(self) -> None:
        if self._current is not None:
            self.streams.append(np.concatenate(self._current or [np.zeros(0, np.int16)]))
            self._current = None

    def close(self) -> None:
        self.end()


class WavSink:
    """Writes each stream to ``DIR/<device id>-<time>-<n>.wav``, 48 kHz mono 16-bit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: list[Path] = []  # finished recordings, oldest first
        self._wav: wave.Wave_write | None = None
        self._file: BinaryIO | None = None
        self._path: Path | None = None

    def begin(self, label: str) -> None:
        self.end()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file, self._path = self._create(label)
        except OSError as exc:
            log.error("cannot record to %s: %s", self.directory, exc)
            return
        # Kept open across write() calls until end(): not a `with` block.
        wav = wave.open(self._file, "wb")  # noqa: SIM115
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        self._wav = wav

    def _create(self, label: str) -> tuple[BinaryIO, Path]:
        # Several panels may record the same device id into one directory in
        # the same second: exclusive creation picks the next free number.
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label) or "device"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1, 10_000):
            path = self.directory / f"{safe}-{stamp}-{n:03d}.wav"
            try:
                return path.open("xb"), path
            except FileExistsError:
                continue
        raise OSError(f"no free file name for {safe}-{stamp}")

    def write(self, pcm: Pcm) -> None:
        if self._wav is None:
            return
        try:
            self._wav.writeframes(pcm.astype("<i2", copy=False).tobytes())
        except OSError as exc:
            log.error("recording to %s failed, abandoning it: %s", self._path, exc)
            self._abandon()

    def end(self) -> None:
        if self._wav is None or self._file is None or self._path is None:
            return
        try:
            self._wav.close()
            self._file.close()
        except OSError as exc:
            log.error("cannot finish %s: %s", self._path, exc)
        else:
            self.files.append(self._path)
            log.info("recorded %s", self._path)
        self._wav = self._file = self._path = None

    def _abandon(self) -> None:
        with contextlib.suppress(OSError):
            if self._file is not None:
                self._file.close()
        self._wav = self._file = self._path = None

    def close(self) -> None:
        self.end()


class OutputStreamLike(Protocol):
    def close(self) -> None: ...


# Opens and starts an output stream that calls back ``fill(outdata, frames)``.
StreamOpener = Callable[[Callable[[Any, int], None]], OutputStreamLike]


class AudioUnavailable(Exception):
    """No sound output on this machine (no PortAudio, no device, device busy)."""


def open_sounddevice(fill: Callable[[Any, int], None]) -> OutputStreamLike:
    try:
        # Imported here, not at module level: the import itself raises
        # OSError when the PortAudio library is missing.
        import sounddevice
    except OSError as exc:
        raise AudioUnavailable(f"PortAudio not available: {exc}") from exc

    def callback(outdata: Any, frames: int, _time: Any, _status: Any) -> None:
        fill(outdata, frames)

    try:
        stream = sounddevice.OutputStream(
            samplerate=SAMPLE_RATE,
            channels=1,
            dtype="int16",
            blocksize=SPEAKER_BLOCK,
            callback=callback,
        )
        stream.start()
    except sounddevice.PortAudioError as exc:
        raise AudioUnavailable(str(exc)) from exc
    return stream  # type: ignore[no-any-return]


class SpeakerSink:
    """Plays through the sound card; the card's callback thread drains the jitter buffer."""

    def __init__(self, jitter: JitterBuffer, opener: StreamOpener) -> None:
        self.jitter = jitter
        self._stream: OutputStreamLike | None = opener(self._fill)

    def _fill(self, outdata: Any, frames: int) -> None:
        outdata[:, 0] = self.jitter.pull(frames)

    def begin(self, label: str) -> None:
        pass  # a new stream simply queues behind whatever is still draining

    def write(self, pcm: Pcm) -> None:
        self.jitter.push(pcm)

    def end(self) -> None:
        self.jitter.end()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self.jitter.clear()


class SpeakerFactory:
    """Opens one speaker per device; after the first failure it stops trying.

    Without a sound card every device would fail the same way, so the reason
    is logged once and later devices quietly go without a speaker.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        prefill_ms: int = DEFAULT_PREFILL_MS,
        opener: StreamOpener = open_sounddevice,
    ) -> None:
        self._enabled = enabled
        self._prefill_ms = prefill_ms
        self._opener = opener

    def create(self) -> SpeakerSink | None:
        if not self._enabled:
            return None
        try:
            return SpeakerSink(JitterBuffer(prefill_ms=self._prefill_ms), self._opener)
        except AudioUnavailable as exc:
            log.warning("no audio output (%s): audio is decoded but not played", exc)
            self._enabled = False
            return None


@dataclass
class StreamStats:
    packets: int = 0
    bad_packets: int = 0  # packets that failed to decode and were skipped
    samples: int = 0

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


class AudioPlayer:
    """Decodes one device's audio streams packet by packet and feeds every sink.

    A packet that does not decode is logged and skipped; the stream goes on.
    (The stock client's audio thread dies on the first one.)
    """

    def __init__(self, sinks: Sequence[AudioSink]) -> None:
        self.sinks = list(sinks)
        self.streams = 0  # streams begun so far
        self.current: StreamStats | None = None  # the open stream, if any
        self.last: StreamStats | None = None  # the most recent finished stream
        self._decoder: opuslib.Decoder | None = None

    @property
    def playing(self) -> bool:
        return self.current is not None

    def start_stream(self, label: str) -> None:
        if self.current is not None:
            self.end_stream()
        # A fresh decoder per stream: Opus state must not leak across streams.
        self._decoder = opuslib.Decoder(SAMPLE_RATE, 1)
        self.current = StreamStats()
        self.streams += 1
        for sink in self.sinks:
            sink.begin(label)

    def feed(self, opus: bytes, label: str = "") -> None:
        if self.current is None or self._decoder is None:
            self.start_stream(label)
        assert self.current is not None and self._decoder is not None
        self.current.packets += 1
        try:
            raw = self._decoder.decode(opus, MAX_FRAME_SAMPLES)
        except opuslib.OpusError as exc:
            self.current.bad_packets += 1
            # A bad server sends bad packets at 50 a second: warn once per stream.
            level = logging.WARNING if self.current.bad_packets == 1 else logging.DEBUG
            log.log(level, "skipping undecodable audio packet (%d bytes): %s", len(opus), exc)
            return
        pcm: Pcm = np.frombuffer(raw, dtype=np.int16)
        self.current.samples += len(pcm)
        for sink in self.sinks:
            sink.write(pcm)

    def end_stream(self) -> None:
        if self.current is None:
            return
        for sink in self.sinks:
            sink.end()
        stats = self.current
        log.info(
            "audio stream ended: %.2f s in %d packets, %d skipped",
            stats.seconds,
            stats.packets,
            stats.bad_packets,
        )
        self.last, self.current, self._decoder = stats, None, None

    def close(self) -> None:
        self.end_stream()
        for sink in self.sinks:
            sink.close()
