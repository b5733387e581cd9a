"""A clock for tests: time moves only when told to."""

from __future__ import annotations


class FakeClock:
    """Time that moves only when told to."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now

    async def sleep_until(self, deadline: float) -> None:
        raise NotImplementedError

    def advance(self, seconds: float) -> None:
        self.now += seconds
