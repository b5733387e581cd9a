"""A subscriber's bounded queue, fed without ever awaiting.

Publishing must never wait on a recipient, or one slow client stalls the room
(see websockets' broadcast notes). So ``deliver`` is synchronous and O(1), and
what happens when the bound is reached is an explicit policy, the one thing
in which subscriptions differ (an ``OverflowPolicy``):

- ``Overflow.DISCONNECT`` (chat): the subscriber is closed with
  ``SlowConsumer``. Nothing is dropped silently; the client learns why.
- ``Overflow.DROP_OLDEST`` (LED frames, room records): the oldest droppable
  item is discarded, so a lagging listener skips ahead; items that are not
  droppable (stream start and end marks, notices) are never discarded, and a
  queue full of them disconnects as DISCONNECT does.
- ``SkipAhead`` (a device's audio, ``hub.core.rooms``): drops plain packets,
  then whole streams, and never disconnects.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

from hub.core.publication import Publication
from hub.errors import HubError, SlowConsumer

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    """What the hub hands publications to: never awaited, never blocking."""

    channel: str

    def deliver(self, pub: Publication) -> None: ...

    def lost(self, error: HubError) -> None:
        """Publications of the channel were lost on their way here (``HistoryLost``).

        What the subscriber makes of it is its own: a chat stream ends with
        ``error`` (its client reconnects and is told); a stock device, which
        would go deaf for good, stays open and starts afresh.
        """

    def close(self, error: HubError | None = None) -> None: ...


class OverflowPolicy(Protocol):
    """What a full subscription does with one more item."""

    def make_room(self, queue: deque[Publication]) -> int | None:
        """Drop from ``queue`` (full) to make room for one more item.

        Returns how many items went, at least one; or None if none may go,
        and the subscriber is disconnected as a slow consumer.
        """


class Overflow(enum.Enum):
    DISCONNECT = "disconnect"
    DROP_OLDEST = "drop_oldest"

    def make_room(self, queue: deque[Publication]) -> int | None:
        if self is Overflow.DROP_OLDEST:
            for index, queued in enumerate(queue):
                if queued.droppable:
                    del queue[index]
                    return 1
        return None


class Subscription:
    """One consumer of one channel: ``async for pub in subscription``."""

    def __init__(
        self,
        channel: str,
        *,
        maxlen: int,
        overflow: OverflowPolicy,
        label: str = "",
        on_close: Callable[[Subscription], None] | None = None,
        on_skip: Callable[[int], None] | None = None,
    ) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.channel = channel
        self.maxlen = maxlen
        self.overflow = overflow
        self.label = label  # for log lines: who this is
        self.dropped = 0  # items the overflow policy dropped
        self._queue: deque[Publication] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._error: HubError | None = None
        self._on_close = on_close
        self._on_skip = on_skip  # told how many items each overflow dropped

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._queue)

    def deliver(self, pub: Publication) -> None:
        """Queue ``pub`` for this subscriber; never blocks, never raises."""
        if self._closed:
            return
        if len(self._queue) >= self.maxlen and not self._make_room():
            return
        self._queue.append(pub)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _make_room(self) -> bool:
        """Apply the overflow policy to the full queue: False if it disconnected."""
        dropped = self.overflow.make_room(self._queue)
        if dropped is None:
            log.warning(
                "%s: disconnected as slow consumer on %s (%d queued)",
                self.label or "subscriber",
                self.channel,
                len(self._queue),
            )
            self.close(SlowConsumer(f"too slow: more than {self.maxlen} events queued"))
            return False
        self.dropped += dropped
        if self._on_skip is not None:
            self._on_skip(dropped)
        return True

    def lost(self, error: HubError) -> None:
        """Publications of the channel were lost: by default, end with ``error``."""
        self.close(error)

    def close(self, error: HubError | None = None) -> None:
        """End the subscription.

        Without ``error`` it ends gracefully: what is queued is still handed
        out, then iteration stops. With ``error`` the queue is discarded and the
        consumer gets the error at once.
        """
        if self._closed:
            return
        self._closed = True
        if error is not None:
            self._error = error
            self._queue.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._on_close is not None:
            self._on_close(self)

    def drain(self) -> list[Publication]:
        """Take everything queued now, without waiting (for batching writers)."""
        items = list(self._queue)
        self._queue.clear()
        return items

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Publication:
        while not self._queue:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()
