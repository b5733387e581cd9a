"""The tests' one clock (a ``hub.clock.Clock``): time moves only when told to."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class FakeClock:
    """A ``hub.clock.Clock`` on virtual time, for tests that must not wait.

    ``now`` is read and may be moved on directly, or with ``advance``/``set``.
    ``wall()`` is ``wall_offset + now``. ``sleep_until``: with ``auto_advance``
    (the default) it jumps virtual time to the deadline, then yields to the
    loop once, so cancellation and other tasks still get their turn; without,
    sleepers wait until the test moves time on with ``advance`` or ``set``.
    """

    def __init__(
        self, now: float = 1_000_000.0, *, auto_advance: bool = True, wall_offset: float = 0.0
    ) -> None:
        self.now = now
        self.auto_advance = auto_advance
        self.wall_offset = wall_offset
        self.sleep_calls = 0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_offset + self.now

    async def sleep_until(self, deadline: float) -> None:
        self.sleep_calls += 1
        if self.auto_advance or deadline <= self.now:
            self.now = max(self.now, deadline)
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
        self.set(self.now + seconds)

    def set(self, now: float) -> None:
        """Move virtual time to ``now`` and wake every sleeper now due."""
        if now < self.now:
            raise ValueError("time does not go backwards")
        self.now = now
        while self._sleepers and self._sleepers[0][0] <= now:
            _, _, waiter = heapq.heappop(self._sleepers)
            if not waiter.done():
                waiter.set_result(None)
