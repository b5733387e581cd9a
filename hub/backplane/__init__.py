"""Several hubs acting as one, through Redis (``hub -s --redis URL``).

``Backplane`` builds what a ``Hub`` takes instead of its memory defaults: the
Redis broker (chat, control and device rooms' channels on Redis Streams), the
session store, the presence store, and for device rooms the room store and
the room cluster (each room's driver and members).

Importing this package needs the ``redis`` extra (``pip install hub[redis]``);
without ``--redis`` nothing imports it.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from hub.backplane.broker import RedisBroker
from hub.backplane.keys import Keys
from hub.backplane.rooms import RedisRoomCluster, RedisRoomStore
from hub.backplane.sessions import RedisPresenceStore, RedisSessionStore
from hub.clock import Clock, SystemClock
from hub.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["Backplane", "BackplaneError", "describe"]


class BackplaneError(Exception):
    """Redis cannot be used at start-up: the hub does not start."""


def describe(url: str) -> str:
    """``url`` fit for a log line: scheme, host and port, never a password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{parts.scheme}://{host}:{parts.port or 6379}"


class Backplane:
    def __init__(
        self, url: str, settings: Settings, *, clock: Clock | None = None, prefix: str = "hub:"
    ) -> None:
        self.url = url
        self.hub_id = secrets.token_hex(4)
        # The hub's clock (give the ``Hub`` this one): the reader's backoff
        # and the heartbeat run on it. What Redis times (keys' TTLs, the
        # sessions' deadlines) runs on Redis's own clock, shared by every hub.
        self.clock: Clock = clock or SystemClock()
        backplane = settings.backplane
        # One retry, on a fresh connection, for a command whose connection
        # was found dead (Redis restarted, or dropped idle clients); a Redis
        # that is down refuses that at once too, so the client hears
        # UNAVAILABLE without delay. Not on timeouts: the script may have run.
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self.commands = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=backplane.connect_timeout,
            socket_timeout=backplane.command_timeout,
            retry=retry,
            retry_on_error=[RedisConnectionError],
        )
        # XREAD blocks its connection for up to ``block``: a connection of its own.
        self.reader = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=backplane.connect_timeout,
            socket_timeout=backplane.block + backplane.command_timeout,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
        )
        keys = Keys(prefix)
        # Called with False when Redis stops answering, True when it is back:
        # the health check may point here (for example ``set_backplane``).
        # Two parts use Redis on their own (the reader, the heartbeat) and
        # each says when it lost or found it: the backplane is up only while
        # none of them says it is down, whichever spoke last.
        self.on_state: Callable[[bool], None] = lambda up: None
        self._down: set[str] = set()
        # Called with each publication's age as it comes back from Redis (the
        # metrics' backplane lag), once per publication read by this hub.
        self.on_lag: Callable[[float], None] = lambda seconds: None
        self.broker = RedisBroker(
            self.commands,
            self.reader,
            keys,
            backplane,
            clock=self.clock,
            on_state=functools.partial(self._state, "reader"),
            on_lag=self._lag,
        )
        self.sessions = RedisSessionStore(self.commands, keys, settings.chat)
        self.presence = RedisPresenceStore(
            self.commands,
            keys,
            self.hub_id,
            settings.chat,
            backplane,
            clock=self.clock,
            on_state=functools.partial(self._state, "heartbeat"),
        )
        self.room_store = RedisRoomStore(self.commands, keys)
        self.rooms = RedisRoomCluster(self.commands, keys, self.hub_id, backplane)

    @property
    def up(self) -> bool:
        """No part of the backplane finds Redis out of reach."""
        return not self._down

    def _state(self, part: str, up: bool) -> None:
        was = self.up
        if up:
            self._down.discard(part)
        else:
            self._down.add(part)
        if self.up != was:
            self.on_state(self.up)

    def _lag(self, seconds: float) -> None:
        self.on_lag(seconds)

    async def start(self) -> None:
        """Reach Redis and announce this hub; ``BackplaneError`` if Redis is not there."""
        try:
            await self.commands.ping()
            await self.presence.register()
        except RedisError as error:
            raise BackplaneError(f"cannot reach Redis at {describe(self.url)}: {error}") from None
        self.presence.run()
        log.info("hub %s on the backplane at %s", self.hub_id, describe(self.url))

    async def close(self) -> None:
        await self.presence.close()
        await self.commands.aclose()
        await self.reader.aclose()
