"""Helpers for testing audio: decode as the device does, compare, fake time.

They live in the package, not under tests/, so the room and front-door tests
of other layers can check that what a device receives is the sound that was
chosen, and pace streams without waiting in real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
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


def tone(freq: float, seconds: float, *, rate: int = SAMPLE_RATE, amplitude: float = 0.5) -> Pcm:
    """A sine of ``freq`` Hz, float32, at ``rate``."""
    t = np.arange(round(seconds * rate)) / rate
    out: Pcm = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
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


class FakeClock:
    """A ``hub.clock.Clock`` on virtual time, for pacing tests without waiting.

    ``auto_advance=True``: ``sleep_until`` jumps virtual time to the deadline
    (then yields to the loop once, so cancellation and other tasks still get
    their turn). ``auto_advance=False``: sleepers wait until the test moves
    time on with ``advance`` or ``set``.
    """

    def __init__(
        self,
        start: float = 0.0,
        *,
        auto_advance: bool = True,
        wall_offset: float = 1_700_000_000.0,
    ) -> None:
        self.auto_advance = auto_advance
        self.sleep_calls = 0
        self._now = start
        self._wall_offset = wall_offset
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall_offset + self._now

    async def sleep_until(self, deadline: float) -> None:
        self.sleep_calls += 1
        if self.auto_advance or deadline <= self._now:
            self._now = max(self._now, deadline)
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), waiter))
        await waiter

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting for virtual time to move on."""
        return sum(1 for _, _, waiter in self._sleepers if not waiter.done())

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.set(self._now + seconds)

    def set(self, now: float) -> None:
        """Move virtual time to ``now`` and wake every sleeper now due."""
        if now < self._now:
            raise ValueError("time does not go backwards")
        self._now = now
        while self._sleepers and self._sleepers[0][0] <= now:
            _, _, waiter = heapq.heappop(self._sleepers)
            if not waiter.done():
                waiter.set_result(None)
