"""Waiting in tests: bounds scaled for slow machines, and waits on change.

Every wait in the tests has a deadline that is only a sanity bound, scaled by
``HUB_TEST_TIMEOUT_FACTOR``; nothing sleeps to synchronise. ``Changes`` is
how a test client lets callers wait for a condition on what it has received:
it wakes them whenever something arrived, and they re-check.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

TIMEOUT_FACTOR = float(os.environ.get("HUB_TEST_TIMEOUT_FACTOR", "1"))


def scaled(seconds: float) -> float:
    """A sanity bound for one wait, scaled for slow machines."""
    return seconds * TIMEOUT_FACTOR


class Changes:
    """Wakes whoever waits for a condition each time something may have changed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[], object], timeout: float, failure: Callable[[], str]
    ) -> None:
        """Until ``predicate()`` holds; after ``scaled(timeout)``, AssertionError(failure())."""
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    event = self._event
                    if predicate():
                        return
                    await event.wait()
        except TimeoutError:
            raise AssertionError(failure()) from None
