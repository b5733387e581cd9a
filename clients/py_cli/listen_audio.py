"""The listening client's audio: streams decoded to sinks, and audio to publish. No sockets.

Out (``AudioOutput``): each ``STREAM_START`` gets a fresh Opus decoder; each
``AUDIO`` packet of the open stream is decoded as it arrives (gaps in ``seq``
filled with Opus packet loss concealment) and handed to every sink at once:

- ``SpeakerSink``: a sounddevice OutputStream whose callback pulls from a
  ``JitterBuffer`` (60 ms of prefill, so the first packets play at once);
- ``WavSink``: one WAV file, 48 kHz mono 16-bit, the streams one after another;
- ``NullSink``: discards.

A switch drops what the sinks still hold of the old stream (``flush``), and
``hold`` silences the open stream the moment the client asks for another, so
no old audio is heard after a ``play``.

In (publishing): ``file_packets`` encodes a file as it is read;
``Microphone`` yields 48 kHz mono frames from the default input device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import opuslib
import soundfile as sf
import soxr

from clients.qt_device.jitter import JitterBuffer
from hub.audio.opus import OpusEncoder, OpusSettings
from hub.audio.sources import SAMPLE_RATE, FileSound, Pcm
from hub.tcp import codec as proto

log = logging.getLogger(__name__)

Pcm16 = npt.NDArray[np.int16]

# The decoder's output buffer must hold the longest Opus packet: 120 ms.
MAX_PACKET_SAMPLES = SAMPLE_RATE * 120 // 1000
# 60 ms of prefill: the server's pacer sends 60 ms ahead, so three 20 ms
# packets are there almost at once and playback starts within a packet time;
# enough to ride out the scheduling hiccups of a Python process.
JITTER_PREFILL_MS = 60
# Past a second of backlog the speaker is no longer live: drop the oldest.
JITTER_MAX_MS = 1_000
# 10 ms per sound-card callback: the jitter buffer, not the card, sets latency.
SPEAKER_BLOCK = SAMPLE_RATE // 100
# Gaps in seq (frames the server skipped for a slow client) are concealed up
# to this long; Opus fades concealment to silence within ~100 ms anyway, and a
# longer jump is a discontinuity, not a loss to paper over.
MAX_CONCEALED_SECONDS = 1.0
# Microphone frames waiting for the event loop: half a second. Past it the
# oldest are dropped (a stalled loop must not make the publication lag).
MIC_BACKLOG = 25


class AudioDeviceError(Exception):
    """No usable sound device (no PortAudio, no device, or it refused the format)."""


class Sink(Protocol):
    """Where decoded audio goes: 48 kHz mono int16."""

    def write(self, pcm: Pcm16) -> None:
        """Audio to play after what was written before."""

    def flush(self) -> None:
        """Drop what is written but not played yet (a switch or a stop)."""

    def drain(self) -> None:
        """The stream ended: play what is left, however short."""

    def close(self) -> None: ...


class NullSink:
    def write(self, pcm: Pcm16) -> None:
        pass

    def flush(self) -> None:
        pass

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class WavSink:
    """Everything played, streams concatenated, in one 48 kHz mono 16-bit WAV file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.samples = 0
        self._file: sf.SoundFile | None = sf.SoundFile(
            path, "w", samplerate=SAMPLE_RATE, channels=1, format="WAV", subtype="PCM_16"
        )

    def write(self, pcm: Pcm16) -> None:
        if self._file is not None:
            self._file.write(pcm)
            self.samples += len(pcm)

    def flush(self) -> None:
        pass  # written is played: the file has no backlog

    def drain(self) -> None:
        pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # writes the header's final sizes
            self._file = None


def _sounddevice() -> Any:
    try:
        # Imported on first use: the import itself raises OSError when the
        # PortAudio library is missing, which only matters to sound users.
        import sounddevice
    except OSError as exc:
        raise AudioDeviceError(f"PortAudio is not available: {exc}") from exc
    return sounddevice


class SpeakerSink:
    """The default output device, fed through a jitter buffer.

    The card's callback thread pulls from the buffer; the event loop pushes.
    A device that cannot do 48 kHz is opened at its own rate and fed through
    a streaming resampler.
    """

    def __init__(
        self, device: int | str | None = None, *, prefill_ms: int = JITTER_PREFILL_MS
    ) -> None:
        sd = _sounddevice()
        self._resampler: Any = None
        try:
            stream, rate = _open_at_48k_or_native(
                lambda rate: sd.OutputStream(
                    samplerate=rate,
                    channels=1,
                    dtype="int16",
                    blocksize=SPEAKER_BLOCK * rate // SAMPLE_RATE,
                    latency="low",
                    device=device,
                    callback=self._callback,
                ),
                lambda: sd.query_devices(device, "output"),
                sd.PortAudioError,
            )
        except sd.PortAudioError as exc:
            raise AudioDeviceError(str(exc)) from exc
        if rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(SAMPLE_RATE, rate, 1, dtype="int16")
        self.jitter = JitterBuffer(sample_rate=rate, prefill_ms=prefill_ms, max_ms=JITTER_MAX_MS)
        self._stream = stream
        try:
            stream.start()
        except sd.PortAudioError as exc:
            stream.close()
            raise AudioDeviceError(str(exc)) from exc

    def _callback(self, outdata: Any, frames: int, _time: Any, _status: Any) -> None:
        outdata[:, 0] = self.jitter.pull(frames)

    def write(self, pcm: Pcm16) -> None:
        if self._resampler is not None:
            pcm = self._resampler.resample_chunk(pcm)
        self.jitter.push(pcm)

    def flush(self) -> None:
        self.jitter.clear()
        if self._resampler is not None:
            self._resampler.clear()

    def drain(self) -> None:
        self.jitter.end()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # PortAudio errors on the way out change nothing
            self._stream.close()
        self.jitter.clear()


def _open_at_48k_or_native(
    open_at: Callable[[int], Any], query: Callable[[], Any], error: type[Exception]
) -> tuple[Any, int]:
    """A stream at 48 kHz, or else at the device's default rate."""
    try:
        return open_at(SAMPLE_RATE), SAMPLE_RATE
    except error as first:
        try:
            native = round(float(query()["default_samplerate"]))
        except error:
            raise first from None
        if native == SAMPLE_RATE or native <= 0:
            raise
        log.debug("device refuses 48 kHz (%s); opening it at %d Hz", first, native)
        return open_at(native), native


class StreamDecoder:
    """One stream's Opus decoder, with concealment for gaps in seq."""

    def __init__(self, frame_duration_us: int) -> None:
        self._decoder = opuslib.Decoder(SAMPLE_RATE, 1)
        self.frame_samples = SAMPLE_RATE * frame_duration_us // 1_000_000
        self.max_gap = max(1, round(MAX_CONCEALED_SECONDS * 1_000_000 / frame_duration_us))
        self.last_seq: int | None = None
        self.packets = 0
        self.concealed = 0  # frames made up for packets that never came
        self.bad = 0  # packets that did not decode (concealed instead)

    def decode(self, seq: int, packet: bytes) -> list[Pcm16]:
        """PCM for this packet, after concealment for any packets skipped
        since the last; nothing for a packet that is not newer than the last."""
        out: list[Pcm16] = []
        if self.last_seq is not None:
            gap = (seq - self.last_seq - 1) % 2**32
            if gap >= 2**31:
                return out  # from the past (seq never goes back in a stream)
            if gap > self.max_gap:
                log.debug("seq jumped by %d packets: not concealed", gap)
            else:
                out.extend(self._conceal() for _ in range(gap))
        self.last_seq = seq
        self.packets += 1
        try:
            raw = self._decoder.decode(packet, MAX_PACKET_SAMPLES)
        except opuslib.OpusError as exc:
            self.bad += 1
            level = logging.WARNING if self.bad == 1 else logging.DEBUG
            log.log(level, "concealing an undecodable packet (%d bytes): %s", len(packet), exc)
            out.append(self._conceal())
            return out
        out.append(np.frombuffer(raw, dtype=np.int16))
        return out

    def _conceal(self) -> Pcm16:
        self.concealed += 1
        # An empty packet asks libopus for packet loss concealment.
        raw = self._decoder.decode(b"", self.frame_samples)
        return np.frombuffer(raw, dtype=np.int16)


class AudioOutput:
    """The server's streams, decoded, to every sink; one stream at a time.

    Feed it the connection's ``StreamStart``, ``Audio`` and ``StreamEnd``
    (``handle``); ``hold`` when asking for another stream or a stop.
    """

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks = list(sinks)
        self.current: proto.StreamStart | None = None
        self.samples_written = 0  # across all streams
        self._decoder: StreamDecoder | None = None
        # Requests in flight that will replace or end the open stream; while
        # any is, its audio is ignored (see hold).
        self._holds = 0

    @property
    def held(self) -> bool:
        return self._holds > 0

    @property
    def position(self) -> float | None:
        """Seconds into the open stream of the newest packet, if any came."""
        if self.current is None or self._decoder is None or self._decoder.last_seq is None:
            return None
        return (self._decoder.last_seq + 1) * self.current.frame_duration_us / 1_000_000

    @property
    def decoder(self) -> StreamDecoder | None:
        return self._decoder

    def handle(self, event: object) -> None:
        if isinstance(event, proto.StreamStart):
            self.start(event)
        elif isinstance(event, proto.Audio):
            self.audio(event)
        elif isinstance(event, proto.StreamEnd):
            self.end(event)

    def start(self, start: proto.StreamStart) -> None:
        # Whatever is still buffered of an earlier stream is stale now.
        self._flush()
        self.current = start
        self._decoder = StreamDecoder(start.frame_duration_us)
        self._holds = 0

    def audio(self, audio: proto.Audio) -> int:
        """Decode and write one packet; the samples written (0 if ignored)."""
        current, decoder = self.current, self._decoder
        if current is None or decoder is None or audio.stream_id != current.stream_id:
            return 0
        decoded = decoder.decode(audio.seq, audio.packet)
        if self._holds:
            # Not heard, but decoded: should the hold be released, the stream
            # goes on without a concealed gap or a decoder out of step.
            return 0
        written = 0
        for pcm in decoded:
            for sink in self.sinks:
                sink.write(pcm)
            written += len(pcm)
        self.samples_written += written
        return written

    def end(self, end: proto.StreamEnd) -> None:
        if self.current is None or end.stream_id != self.current.stream_id:
            return
        if end.reason in (proto.StreamEndReason.STOPPED, proto.StreamEndReason.SWITCHED):
            self._flush()  # cut now, as asked
        else:
            for sink in self.sinks:
                sink.drain()  # finished: let the tail play out
        self.current = self._decoder = None
        self._holds = 0

    def hold(self) -> None:
        """A request that replaces or stops the open stream is on its way:
        silence the stream now and ignore its audio still in flight, until
        the answer (``start``/``end``) or a refusal (``release``)."""
        if self.current is None:
            return
        self._holds += 1
        self._flush()

    def release(self) -> None:
        """A held-for request was refused: the stream goes on."""
        self._holds = max(0, self._holds - 1)

    def _flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing %r failed", sink)


# -- publishing -----------------------------------------------------------------


async def file_packets(
    path: str | os.PathLike[str], settings: OpusSettings
) -> AsyncIterator[bytes]:
    """The file as Opus packets (48 kHz mono, ``settings.frame_ms`` each),
    read and encoded a block at a time in a worker thread."""
    sound = await asyncio.to_thread(FileSound, path)
    blocks = sound.blocks()
    encoder = OpusEncoder(settings)

    def step() -> tuple[list[bytes], bool]:
        block = next(blocks, None)
        if block is None:
            return encoder.flush(), True
        return encoder.feed(block), False

    try:
        done = False
        while not done:
            packets, done = await asyncio.to_thread(step)
            for packet in packets:
                yield packet
    finally:
        if isinstance(blocks, Generator):
            # Closes the file now; a step still running in its thread (we
            # were cancelled mid-read) leaves that to the garbage collector.
            with contextlib.suppress(ValueError):
                blocks.close()


class Microphone:
    """Frames of ``frame_samples`` from the default input device, 48 kHz mono float32.

    ``open`` fails at once (AudioDeviceError) when there is no microphone;
    iterate ``frames()`` in the event loop that opened it.
    """

    def __init__(self, frame_samples: int, device: int | str | None = None) -> None:
        self.frame_samples = frame_samples
        self.device = device
        self.dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Pcm] = asyncio.Queue()
        self._stream: Any = None
        self._resampler: Any = None

    def open(self) -> None:
        sd = _sounddevice()
        self._loop = asyncio.get_running_loop()
        try:
            stream, rate = _open_at_48k_or_native(
                lambda rate: sd.InputStream(
                    samplerate=rate,
                    channels=1,
                    dtype="float32",
                    blocksize=self.frame_samples * rate // SAMPLE_RATE,
                    device=self.device,
                    callback=self._callback,
                ),
                lambda: sd.query_devices(self.device, "input"),
                sd.PortAudioError,
            )
            if rate != SAMPLE_RATE:
                self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
            stream.start()
        except sd.PortAudioError as exc:
            raise AudioDeviceError(str(exc)) from exc
        self._stream = stream

    def _callback(self, indata: Any, _frames: int, _time: Any, _status: Any) -> None:
        # PortAudio's thread: copy (indata is reused) and hand to the loop.
        block = np.array(indata[:, 0], dtype=np.float32)
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: leaving
                loop.call_soon_threadsafe(self._put, block)

    def _put(self, block: Pcm) -> None:
        if self._queue.qsize() >= MIC_BACKLOG:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(block)

    async def frames(self) -> AsyncIterator[Pcm]:
        while True:
            block = await self._queue.get()
            if self._resampler is not None:
                block = self._resampler.resample_chunk(block)
            if block.size:
                yield block

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
