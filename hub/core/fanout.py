"""What the chat room and the device rooms need of the hub, and no more.

``Chat`` and ``Rooms`` take a ``Fanout`` instead of the whole ``Hub``: they
publish, subscribe and run background work, and need to know nothing of the
registries or the broker behind them (nor import the module that builds them).
"""

from __future__ import annotations

from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from hub.clock import Clock
from hub.core.publication import Publication
from hub.core.subscription import Overflow, Subscription


class Fanout(Protocol):
    @property
    def clock(self) -> Clock: ...

    @property
    def closing(self) -> bool:
        """True once the hub is shutting down: nothing new may start."""

    async def publish(
        self, channel: str, event: Any, *, droppable: bool = False, local: bool = False
    ) -> Publication:
        """Publish ``event`` on ``channel`` to every hub, or only this one if ``local``."""

    def subscribe(
        self, channel: str, *, maxlen: int, overflow: Overflow, label: str = ""
    ) -> AbstractAsyncContextManager[Subscription]: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, logging its failure."""
