"""The Hub: owns the registries and the fan-out; every front door talks to it.

Publications go out through the injected Broker and come back through
``_deliver``, which hands the same Publication object to every local
subscriber of its channel without awaiting any of them.

Sessions end through the control channel: the hub that ends one publishes
``SessionClosed`` there, and every hub subscribed to it (with one broker,
only this one) ends its own streams of that session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from hub.audio.library import SoundLibrary
from hub.clock import Clock, SystemClock
from hub.core.broker import Broker, HistoryLost, MemoryBroker
from hub.core.chat import Chat
from hub.core.events import LeaveReason, SessionClosed
from hub.core.observer import Observer, Unobserved
from hub.core.publication import Publication
from hub.core.rooms import Rooms
from hub.core.roomstore import RoomCluster, RoomStore
from hub.core.sessions import PresenceStore, SessionRecord, Sessions, SessionStore
from hub.core.subscription import Overflow, Subscriber, Subscription
from hub.core.tokens import TokenIssuer, load_secret
from hub.errors import HubError, Unavailable
from hub.settings import Settings

log = logging.getLogger(__name__)

# Where sessions' ends travel between hubs; nobody else publishes here.
CONTROL_CHANNEL = "control"


class ControlSink:
    """The hub's own subscriber of the control channel, open for its whole life."""

    channel = CONTROL_CHANNEL

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def deliver(self, pub: Publication) -> None:
        event = pub.event
        if isinstance(event, SessionClosed):
            self._sessions.closed(event.session_id, event.reason)

    def lost(self, error: HubError) -> None:
        # News of ended sessions may be among what was lost.
        self._sessions.lost()

    def close(self, error: HubError | None = None) -> None:
        pass  # open for the hub's whole life: nothing to end


class Hub:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker: Broker | None = None,
        clock: Clock | None = None,
        secret: bytes | None = None,
        library: SoundLibrary | None = None,
        session_store: SessionStore | None = None,
        presence: PresenceStore | None = None,
        room_store: RoomStore | None = None,
        room_cluster: RoomCluster | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self._clock = clock or SystemClock()
        self.observer: Observer = observer or Unobserved()
        self.broker: Broker = broker or MemoryBroker()
        issuer = TokenIssuer(secret or load_secret(), self.settings.chat.token_ttl, self.clock)
        self.sessions = Sessions(
            self.settings.chat,
            issuer,
            self.clock,
            self._session_ended,
            spawn=self.spawn,
            store=session_store,
            presence=presence,
        )
        self.chat = Chat(self, self.sessions, self.settings.chat)
        devices = self.settings.devices
        self.rooms = Rooms(
            self,
            library or SoundLibrary.from_folder(),
            opus=devices.opus,
            linger=devices.linger,
            store=room_store,
            cluster=room_cluster,
            observer=self.observer,
        )
        self._closing = False
        self._subscribers: dict[str, dict[Subscriber, None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def closing(self) -> bool:
        return self._closing

    async def start(self) -> None:
        await self.broker.start(self._deliver)
        self._subscribers[CONTROL_CHANNEL] = {ControlSink(self.sessions): None}
        await self.broker.subscribe(CONTROL_CHANNEL)
        await self.rooms.preload()

    # -- fan-out ---------------------------------------------------------

    async def publish(
        self, channel: str, event: Any, *, droppable: bool = False, local: bool = False
    ) -> Publication:
        """Publish to every hub subscribed to ``channel``, or with ``local`` to this one."""
        pub = Publication(channel, event, self.clock.wall(), droppable=droppable)
        if local:
            self._deliver(pub)
        else:
            await self.broker.publish(pub)
        return pub

    def _deliver(self, pub: Publication) -> None:
        subscribers = self._subscribers.get(pub.channel)
        if subscribers:
            if pub.event.__class__ is HistoryLost:
                self._lost(pub.channel, pub.event.reason, subscribers)
                return
            # A copy: a subscriber that overflows removes itself mid-loop.
            batch = tuple(subscribers)
            for subscription in batch:
                subscription.deliver(pub)
            # Counted once per publication, not once per subscriber.
            self.observer.delivered(pub.channel, len(batch))

    def _lost(self, channel: str, reason: str, subscribers: dict[Subscriber, None]) -> None:
        log.warning(
            "%s: publications lost (%s): telling its %d subscribers",
            channel,
            reason,
            len(subscribers),
        )
        error = Unavailable(f"events were lost between hubs ({reason}); reconnect")
        # A copy: a subscriber that ends removes itself mid-loop.
        for subscriber in tuple(subscribers):
            subscriber.lost(error)

    @asynccontextmanager
    async def subscribe(
        self, channel: str, *, maxlen: int, overflow: Overflow, label: str = ""
    ) -> AsyncIterator[Subscription]:
        """A queued subscription to ``channel``, for consumers that iterate."""
        subscription = Subscription(
            channel, maxlen=maxlen, overflow=overflow, label=label, on_close=self._forget
        )
        async with self.attach(subscription):
            yield subscription

    @asynccontextmanager
    async def attach(self, subscriber: Subscriber) -> AsyncIterator[None]:
        """Deliver ``subscriber.channel``'s publications to ``subscriber`` while open.

        Any ``Subscriber`` will do (``deliver``, ``lost`` and ``close``): a
        queue for a consumer task, or a sink that writes straight to a
        transport.
        """
        channel = subscriber.channel
        local = self._subscribers.setdefault(channel, {})
        first = not local
        local[subscriber] = None
        try:
            if first:
                await self.broker.subscribe(channel)
            yield
        finally:
            subscriber.close()
            self._forget(subscriber)
            if channel not in self._subscribers:
                await self.broker.unsubscribe(channel)

    def _forget(self, subscriber: Subscriber) -> None:
        local = self._subscribers.get(subscriber.channel)
        if local is None:
            return
        local.pop(subscriber, None)
        if not local:
            del self._subscribers[subscriber.channel]

    def subscriber_count(self, channel: str) -> int:
        return len(self._subscribers.get(channel, ()))

    # -- lifecycle -------------------------------------------------------

    async def _session_ended(self, record: SessionRecord, reason: LeaveReason) -> None:
        self.observer.session_ended(reason)
        # Every hub ends its streams of the session (this one has already, in
        # Sessions.end; the others on the control channel's news), then
        # everyone is told, once.
        await self.publish(CONTROL_CHANNEL, SessionClosed(record.id, reason))
        self.spawn(self.chat.announce_end(record, reason))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background task failed", exc_info=error)

    async def shutdown(self) -> None:
        """Tell every stream the server is going, then end every subscription.

        Subscriptions end gracefully: each still hands out what it has queued,
        the shutdown event last, before its stream closes.
        """
        if self._closing:
            return
        self._closing = True
        await self.chat.announce_shutdown()
        await self.rooms.close()
        for local in list(self._subscribers.values()):
            for subscription in list(local):
                subscription.close()
        await self.sessions.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.broker.close()
