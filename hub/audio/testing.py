"""Helpers for testing audio: make tones, decode as the device does, compare.

They live in the package, not under tests/, so the room and front-door tests
of other layers can check that what a device receives is the sound that was
chosen. (The fake clock that paces streams without waiting is the tests' one,
tests/fake_clock.py.)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import opuslib

from hub.audio.sources import SAMPLE_RATE, Pcm, Sound

# opus_decode's buffer must hold the longest possible packet: 120 ms.
_MAX_FRAME_SAMPLES = SAMPLE_RATE * 120 // 1000


def read_all(sound: Sound) -> Pcm:
    """The whole sound as one array: for short sounds in tests only."""
    return np.concatenate(list(sound.blocks()))


def tone(
    freq: float,
    seconds: float,
    *,
    rate: int = SAMPLE_RATE,
    amplitude: float = 0.5,
    fade: float = 0.0,
    overtone: float = 0.0,
) -> Pcm:
    """A sine of ``freq`` Hz, float32, at ``rate``.

    For a tone that stands in for music: ``fade`` seconds of ramp at each end
    (no clicks) and ``overtone``, the amplitude of a soft second partial.
    """
    t = np.arange(round(seconds * rate)) / rate
    wave = amplitude * np.sin(2 * np.pi * freq * t)
    if overtone:
        wave = wave + overtone * np.sin(2 * np.pi * 2.01 * freq * t)
    if fade:
        wave = np.minimum(1.0, np.minimum(t, seconds - t) / fade) * wave
    out: Pcm = wave.astype(np.float32)
    return out


def decode_packets(packets: Iterable[bytes]) -> Pcm:
    """Decode each packet with its own ``decode`` call, as the stock device does.

    One decoder for the stream (the device keeps one), 48 kHz mono; raises
    ``opuslib.OpusError`` on the first packet the device could not decode.
    An empty packet is refused outright: the device would decode it as
    concealment noise, and it means a bug upstream.
    """
    decoder = opuslib.Decoder(SAMPLE_RATE, 1)
    chunks: list[npt.NDArray[np.int16]] = []
    for i, packet in enumerate(packets):
        if not packet:
            raise ValueError(f"packet {i} is empty")
        pcm = decoder.decode(packet, _MAX_FRAME_SAMPLES)
        chunks.append(np.frombuffer(pcm, dtype="<i2"))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    out: Pcm = (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32)
    return out


def best_correlation(decoded: Pcm, reference: Pcm, *, max_lag: int = 2000) -> float:
    """Highest normalized cross-correlation of ``decoded`` lagging ``reference``.

    Opus delays its output by its lookahead (312 samples at 48 kHz), so lags
    ``0 .. max_lag`` are tried; 1.0 is identical shape, ~0 unrelated.
    """
    d = np.asarray(decoded, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    max_lag = max(0, min(max_lag, len(d) - 1))
    n = min(len(r), len(d) - max_lag)
    if n <= 0:
        return 0.0
    r = r[:n]
    d = d[: n + max_lag]
    if max_lag < 16:  # a handful of dot products beats an FFT
        xc = np.array([np.dot(d[lag : lag + n], r) for lag in range(max_lag + 1)])
    else:
        size = 1 << (len(d) + n - 1).bit_length()
        # xc[lag] = sum_i d[i + lag] * r[i], for every lag at once.
        spectrum = np.fft.rfft(d, size) * np.conj(np.fft.rfft(r, size))
        xc = np.fft.irfft(spectrum, size)[: max_lag + 1]
    squares = np.concatenate(([0.0], np.cumsum(d * d)))
    window_energy = squares[n : n + max_lag + 1] - squares[: max_lag + 1]
    denominator = np.sqrt(np.maximum(window_energy, 0.0) * float(np.dot(r, r)))
    valid = denominator > 1e-12
    if not valid.any():
        return 0.0
    return float(np.max(xc[valid] / denominator[valid]))


def well_formed(marks: Iterable[tuple[bool, bool]]) -> bool:
    """Whether packets' (is_start, is_end) marks are what the stock device survives:
    never an end without its start, never a start inside an open stream."""
    open_ = False
    for start, end in marks:
        if start:
            if open_:
                return False
            open_ = True
        if end:
            if not open_:
                return False
            open_ = False
    return True
