"""The Broker: every publication goes through it, so hubs can share channels.

``MemoryBroker`` is the default and keeps everything in this process. A Redis
broker can be injected instead without touching any front door: the hub only
ever calls ``publish``, ``subscribe`` and ``unsubscribe`` and receives
publications through the handler it registers with ``start``. The hub
subscribes a channel at the broker only for its first local subscriber and
unsubscribes it with its last.

A broker that carries publications between processes can lose some (its
server restarted empty, its history was trimmed past where a hub had read).
It never skips them silently: it hands the hub a publication whose event is
``HistoryLost``, and the hub tells that channel's local subscribers
(``Subscriber.lost``): a chat stream ends with UNAVAILABLE, a stock device's
streams stay open and start afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hub.core.publication import Publication

PublicationHandler = Callable[[Publication], None]


@dataclass(frozen=True, slots=True)
class HistoryLost:
    """Not an event but the broker's word: publications of the channel were lost."""

    reason: str


class Broker(Protocol):
    async def start(self, handler: PublicationHandler) -> None:
        """Begin delivering publications of subscribed channels to ``handler``."""

    async def publish(self, pub: Publication) -> None:
        """Send ``pub`` to every hub subscribed to its channel, this one included."""

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def close(self) -> None: ...


class MemoryBroker:
    """A broker for one process: delivery is a direct, synchronous call."""

    def __init__(self) -> None:
        self._handler: PublicationHandler | None = None
        self._channels: set[str] = set()

    async def start(self, handler: PublicationHandler) -> None:
        self._handler = handler

    async def publish(self, pub: Publication) -> None:
        if self._handler is not None and pub.channel in self._channels:
            self._handler(pub)

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def close(self) -> None:
        self._handler = None
        self._channels.clear()
