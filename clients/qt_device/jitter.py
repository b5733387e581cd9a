"""A pull-driven jitter buffer between the network and the sound card.

Packets arrive in bursts (gRPC, the hub's pacer, the Qt event loop), while the
sound card pulls samples at a perfectly steady rate from its own thread. The
buffer absorbs the difference: it holds back output until ``prefill`` worth
of audio is queued, then hands out samples as asked. No clock, no thread and
no Qt here: whoever calls ``pull`` is the clock, so tests drive it by hand.
"""

from __future__ import annotations

import enum
import threading
from collections import deque

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]

SAMPLE_RATE = 48_000
# 80 ms covers the usual scheduling hiccups of a Python GUI process plus one
# 20 ms packet in flight, while keeping the start of a stream prompt.
DEFAULT_PREFILL_MS = 80
# Beyond a second of backlog the device is no longer "live": the network
# delivered faster than real time (a burst after a stall, or a server that
# does not pace). Drop the oldest audio rather than grow the delay forever.
DEFAULT_MAX_MS = 1_000


class BufferState(enum.Enum):
    IDLE = "idle"  # no stream, nothing queued: pull returns silence
    PREFILLING = "buffering"  # holding back until prefill is reached
    PLAYING = "playing"


class JitterBuffer:
    """Thread-safe: ``push``/``end`` from the receiving thread, ``pull`` from the audio callback."""

    def __init__(
        self,
        *,
        sample_rate: int = SAMPLE_RATE,
        prefill_ms: int = DEFAULT_PREFILL_MS,
        max_ms: int = DEFAULT_MAX_MS,
    ) -> None:
        if prefill_ms < 0 or max_ms <= prefill_ms:
            raise ValueError("need 0 <= prefill_ms < max_ms")
        self.prefill = sample_rate * prefill_ms // 1000
        self.capacity = sample_rate * max_ms // 1000
        self.underruns = 0  # times playback starved mid-stream and re-buffered
        self.dropped = 0  # samples discarded because the backlog passed capacity
        self._chunks: deque[Pcm] = deque()
        self._head = 0  # samples of _chunks[0] already played
        self._queued = 0
        self._ended = False  # the current stream has no more to come
        self._state = BufferState.IDLE
        self._lock = threading.Lock()

    @property
    def state(self) -> BufferState:
        with self._lock:
            return self._state

    @property
    def queued(self) -> int:
        """Samples waiting to be played."""
        with self._lock:
            return self._queued

    def push(self, pcm: Pcm) -> None:
        if len(pcm) == 0:
            return
        with self._lock:
            self._chunks.append(pcm)
            self._queued += len(pcm)
            self._ended = False
            if self._state is BufferState.IDLE:
                self._state = BufferState.PREFILLING
            self._trim()
            self._maybe_start()

    def end(self) -> None:
        """The stream is complete: play out what is queued, however short."""
        with self._lock:
            self._ended = True
            if self._queued == 0:
                self._state = BufferState.IDLE
            elif self._state is BufferState.PREFILLING:
                # A stream shorter than the prefill must still be heard.
                self._state = BufferState.PLAYING

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._head = 0
            self._queued = 0
            self._ended = False
            self._state = BufferState.IDLE

    def pull(self, frames: int) -> Pcm:
        """Exactly ``frames`` samples; silence wherever there is nothing to play yet."""
        out = np.zeros(frames, dtype=np.int16)
        with self._lock:
            if self._state is not BufferState.PLAYING:
                return out
            filled = self._take(out)
            if self._queued == 0:
                if self._ended:
                    self._state = BufferState.IDLE
                elif filled < frames:
                    # Starved mid-stream: re-buffer instead of crackling
                    # through every late packet.
                    self.underruns += 1
                    self._state = BufferState.PREFILLING
        return out

    def _take(self, out: Pcm) -> int:
        filled = 0
        while filled < len(out) and self._chunks:
            chunk = self._chunks[0]
            n = min(len(out) - filled, len(chunk) - self._head)
            out[filled : filled + n] = chunk[self._head : self._head + n]
            filled += n
            self._head += n
            self._queued -= n
            if self._head == len(chunk):
                self._chunks.popleft()
                self._head = 0
        return filled

    def _trim(self) -> None:
        excess = self._queued - self.capacity
        while excess > 0 and self._chunks:
            chunk = self._chunks[0]
            n = min(excess, len(chunk) - self._head)
            self._head += n
            self._queued -= n
            self.dropped += n
            excess -= n
            if self._head == len(chunk):
                self._chunks.popleft()
                self._head = 0

    def _maybe_start(self) -> None:
        if self._state is BufferState.PREFILLING and self._queued >= self.prefill:
            self._state = BufferState.PLAYING
