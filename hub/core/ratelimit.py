"""A token bucket: ``rate`` events a second on average, bursts up to ``burst``."""

from __future__ import annotations

from hub.clock import Clock


class TokenBucket:
    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one; a rate of 0 means unlimited."""
        if self._rate <= 0:
            return True
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
