"""The tests' one clock (a ``hub.clock.Clock``): time moves only when told to."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

from waiting import Changes


class FakeTimer:
    """A ``hub.clock.Timer`` on virtual time."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A ``hub.clock.Clock`` on virtual time, for tests that must not wait.

    ``now`` is read, and moved on with ``advance``/``set``, which wake every
    sleeper and run every timer now due, in the order they fall due.
    ``wall()`` is ``wall_offset + now``. ``sleep_until``: with ``auto_advance``
    (the default) it moves virtual time to the deadline, then yields to the
    loop once, so cancellation and other tasks still get their turn; without,
    sleepers wait until the test moves time on with ``advance`` or ``set``, and
    ``next_wake`` tells when the next of them is due, once it sleeps.
    """

    def __init__(
        self, now: float = 1_000_000.0, *, auto_advance: bool = True, wall_offset: float = 0.0
    ) -> None:
        self.now = now
        self.auto_advance = auto_advance
        self.wall_offset = wall_offset
        self.sleep_calls = 0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()
        self._slept = Changes()

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_offset + self.now

    async def sleep_until(self, deadline: float) -> None:
        self.sleep_calls += 1
        if self.auto_advance or deadline <= self.now:
            self.set(max(self.now, deadline))
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), waiter))
        self._slept.notify()
        await waiter

    async def sleep(self, delay: float) -> None:
        await self.sleep_until(self.now + max(0.0, delay))

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(callback)
        heapq.heappush(self._timers, (self.now + max(0.0, delay), next(self._order), timer))
        return timer

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting for virtual time to move on."""
        return sum(1 for _, _, waiter in self._sleepers if not waiter.done())

    @property
    def timers(self) -> int:
        """How many timers are due later (not yet run, not cancelled)."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    async def next_wake(self, sleepers: int = 1) -> float:
        """Once ``sleepers`` tasks wait for virtual time: the earliest deadline among them.

        How a test sees what a task asked to sleep for (a backoff, a period)
        without waiting for it: the task's own sleep tells, not real time.
        """
        await self._slept.wait_for(
            lambda: self.sleepers >= sleepers,
            10.0,
            lambda: f"{self.sleepers} of {sleepers} tasks asleep on the clock",
        )
        return min(deadline for deadline, _, waiter in self._sleepers if not waiter.done())

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.set(self.now + seconds)

    def set(self, now: float) -> None:
        """Move virtual time to ``now``: wake every sleeper and run every timer now due."""
        if now < self.now:
            raise ValueError("time does not go backwards")
        # A timer runs with the clock at its own deadline, as on a real loop;
        # one it schedules (due by ``now``) runs in this same call.
        while self._timers and self._timers[0][0] <= now:
            due, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self.now = max(self.now, due)
                timer.cancelled = True  # run once
                timer.callback()
        self.now = now
        while self._sleepers and self._sleepers[0][0] <= now:
            _, _, waiter = heapq.heappop(self._sleepers)
            if not waiter.done():
                waiter.set_result(None)


def clock_from_now(*, auto_advance: bool = True) -> FakeClock:
    """Virtual time whose wall time starts at the real now (timestamps look recent)."""
    return FakeClock(1000.0, auto_advance=auto_advance, wall_offset=time.time() - 1000.0)
