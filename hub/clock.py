"""Time as an injectable dependency, so pacing, expiry and grace are testable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A callback due later; ``cancel`` makes sure it never runs."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def wall(self) -> float:
        """Seconds since the epoch, for timestamps shown to people."""

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``monotonic()`` has reached ``deadline``."""

    async def sleep(self, delay: float) -> None:
        """Return once ``delay`` seconds have passed (a backoff, a period)."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` once ``delay`` seconds have passed, on the running loop."""


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

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(max(0.0, delay))

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)
