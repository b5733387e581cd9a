"""Token buckets: ``rate`` events a second on average, bursts up to ``burst``."""

from __future__ import annotations

import logging
from collections import OrderedDict

from hub.clock import Clock


class TokenBucket:
    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock.monotonic()

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def take(self) -> bool:
        """Spend one token if there is one; a rate of 0 means unlimited."""
        if self._rate <= 0:
            return True
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def wait(self) -> float:
        """Seconds until a token is there (0 if one is now); spends nothing."""
        if self._rate <= 0:
            return 0.0
        self._refill()
        return max(0.0, (1 - self._tokens) / self._rate)


class FailureThrottle:
    """Failures per key (a peer's address): ``burst`` free, then ``rate`` a second.

    Only failures spend: a key that never fails is never held back. While a
    key's bucket is empty, ``wait(key)`` says how long until it may try again.
    At most ``max_keys`` keys are remembered, the least recently failed
    forgotten first, so a flood of addresses cannot grow memory without bound.
    """

    def __init__(self, rate: float, burst: float, max_keys: int, clock: Clock) -> None:
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 if it may now."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait()

    def failed(self, key: str) -> bool:
        """Count one failure of ``key``; whether that used its last free one."""
        if self._rate <= 0:
            return False
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst, self._clock)
        self._buckets[key] = bucket
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        bucket.take()
        return bucket.wait() > 0


# What strangers make the hub log (malformed requests, password guessing)
# must reach the operator without a flood of it flooding the log: a few
# lines a second per source of warnings, each saying how many were left out.
LOG_LINES_PER_SECOND = 1.0
LOG_LINES_BURST = 5.0


class RateLimitedLog:
    """Warnings at most ``rate`` a second (bursts of ``burst``); the rest counted."""

    def __init__(
        self,
        logger: logging.Logger,
        clock: Clock,
        rate: float = LOG_LINES_PER_SECOND,
        burst: float = LOG_LINES_BURST,
    ) -> None:
        self._logger = logger
        self._bucket = TokenBucket(rate, burst, clock)
        self._left_out = 0

    def warning(self, message: str, *args: object) -> None:
        if not self._bucket.take():
            self._left_out += 1
            return
        left_out, self._left_out = self._left_out, 0
        if left_out:
            message += " (%d more left out of the log)"
            args = (*args, left_out)
        self._logger.warning(message, *args, stacklevel=2)
