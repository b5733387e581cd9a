"""Time as an injectable dependency, so pacing and expiry are testable."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def wall(self) -> float:
        """Seconds since the epoch, for timestamps shown to people."""

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``monotonic()`` has reached ``deadline``."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        # Always yield, even when the deadline has passed: a pacer that is
        # behind (a fan-out to 1,000 listeners takes a while) must still let
        # the loop read sockets between packets, or it starves everyone else.
        delay = deadline - time.monotonic()
        await asyncio.sleep(delay if delay > 0 else 0)
