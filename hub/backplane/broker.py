"""The Redis broker: channels shared by every hub, on Redis Streams.

Publishing is one Lua script: it makes sure the channel has an *epoch* (a
random name, set once with the channel's first publication or subscription,
and gone when Redis restarts empty), counts the publication's *offset* (INCR)
and appends ``epoch, offset, time, data`` to the channel's stream, trimmed to
about ``history`` entries. The event is encoded once (``hub.core.codec``).

Each hub reads every channel it has local subscribers for in one blocking
XREAD loop on a connection of its own, from the last entry id it saw per
channel. An entry whose epoch differs, or whose offset does not follow the
last one, means publications were lost (Redis restarted empty, or the history
was trimmed past this hub while it was away): the hub is handed
``HistoryLost`` for the channel and tells its subscribers (chat streams end
with UNAVAILABLE; a device's streams stay open, hub.core.subscription).
After a lost connection the loop reconnects with backoff and resumes from the
same ids; it checks the epochs first, so a Redis that came back empty is
noticed even if nobody publishes again.

The publishing hub delivers to its own clients through its read loop too,
not at publish time: every hub then hands a channel's publications to its
clients in the one order Redis gave them, and each exactly once (each entry
is read once per hub). The price is one round trip to Redis, well under a
millisecond on a local network.

Device rooms' channels are shared the same way, audio included: a stream's
packets and its start and end marks travel on one Redis stream, so every hub
hands them to its listeners in the one order they were published, whichever
hub published each (the driver plays, the hub where Stop was pressed ends).
A droppable publication (audio) trims its stream to the shorter
``media_history``: a room's sound is worth keeping for seconds, not minutes.
Fifty small entries a second per playing room is little for Redis, and a
listener that falls behind skips packets at its own queue as it would on one
hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hub.backplane.errors import unreachable
from hub.backplane.keys import Keys, text
from hub.clock import Clock
from hub.core import codec
from hub.core.broker import HistoryLost, PublicationHandler
from hub.core.publication import Position, Publication
from hub.settings import BackplaneSettings

log = logging.getLogger(__name__)

PUBLISH = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
end
local offset = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
           'e', epoch, 'o', offset, 't', ARGV[3], 'p', ARGV[4], 'd', ARGV[5])
return epoch
"""

# Where a new subscriber starts: the channel's epoch (made now if it has
# none), its last offset and its last entry id, read together.
POSITION = """
redis.call('SET', KEYS[2], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[2])
local offset = tonumber(redis.call('GET', KEYS[3]) or '0')
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id = '0-0'
if last[1] then id = last[1][1] end
return {epoch, offset, id}
"""


@dataclass(slots=True)
class Cursor:
    """How far this hub has read one channel."""

    last_id: str
    epoch: str
    offset: int


class RedisBroker:
    def __init__(
        self,
        commands: aioredis.Redis,
        reader: aioredis.Redis,
        keys: Keys,
        settings: BackplaneSettings,
        *,
        clock: Clock,
        on_state: Callable[[bool], None],
        on_lag: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._redis = commands
        self._reader = reader  # one connection of its own: XREAD blocks it
        self._keys = keys
        self._settings = settings
        self._clock = clock  # the reconnection's backoff
        self._on_state = on_state
        self._on_lag = on_lag
        self._publish = commands.register_script(PUBLISH)
        self._position = commands.register_script(POSITION)
        self._handler: PublicationHandler | None = None
        self._cursors: dict[str, Cursor] = {}
        self._changed = asyncio.Event()
        self._reader_id: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self, handler: PublicationHandler) -> None:
        self._handler = handler
        self._task = asyncio.get_running_loop().create_task(self._read(), name="redis reader")

    async def publish(self, pub: Publication) -> None:
        channel = pub.channel
        data = codec.encode(pub.event)
        try:
            epoch = await self._publish(
                keys=self._keys.channel(channel),
                args=[
                    secrets.token_hex(8),
                    self._settings.media_history if pub.droppable else self._settings.history,
                    repr(pub.time),
                    "1" if pub.droppable else "",
                    data,
                ],
            )
        except RedisError as error:
            raise unreachable(f"publish to {channel}", error) from None
        cursor = self._cursors.get(channel)
        if cursor is not None and cursor.epoch != text(epoch):
            # Redis came back empty before the read loop noticed: say so now.
            self._restart(channel, text(epoch))

    async def subscribe(self, channel: str) -> None:
        if channel in self._cursors:
            return
        try:
            cursor = await self._start_position(channel)
        except RedisError as error:
            raise unreachable(f"subscribe to {channel}", error) from None
        self._cursors[channel] = cursor
        await self._wake_reader()

    async def _start_position(self, channel: str) -> Cursor:
        epoch, offset, last_id = await self._position(
            keys=self._keys.channel(channel),
            args=[secrets.token_hex(8)],
        )
        return Cursor(text(last_id), text(epoch), int(offset))

    async def _wake_reader(self) -> None:
        """Make the read loop take up the new set of channels now, not after its block."""
        self._changed.set()
        if self._reader_id is not None:
            # If Redis is away, the reconnecting loop reads the new set anyway.
            with contextlib.suppress(RedisError):
                await self._redis.client_unblock(self._reader_id)

    async def unsubscribe(self, channel: str) -> None:
        self._cursors.pop(channel, None)

    async def close(self) -> None:
        self._handler = None
        self._closing = True
        task = self._task
        if task is not None:
            # Cancelled in the middle of XREAD, redis-py can lose the
            # cancellation while the reply is on its way, and the loop reads
            # on (a hub hung at SIGTERM, about one stop in ten): the flag ends
            # the loop at its next turn, within one block, and each wait here
            # cancels again in case it sits somewhere else.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=self._settings.block)
        self._cursors.clear()

    # -- the read loop -------------------------------------------------------

    async def _read(self) -> None:
        backoff = self._settings.backoff_min
        down_since: float | None = None
        clock = self._clock
        block_ms = max(1, round(self._settings.block * 1000))
        while not self._closing:
            try:
                if self._reader_id is None:
                    self._reader_id = int(await self._reader.client_id())
                    if down_since is not None:
                        await self._check_epochs()
                        log.warning(
                            "redis: reconnected after %.1f s; reading on",
                            clock.monotonic() - down_since,
                        )
                        down_since = None
                        backoff = self._settings.backoff_min
                        self._on_state(True)
                if not self._cursors:
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                self._changed.clear()
                streams: dict[Any, Any] = {
                    self._keys.stream(c): cur.last_id for c, cur in self._cursors.items()
                }
                reply: Any = await self._reader.xread(streams, count=1024, block=block_ms)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                self._reader_id = None
                if down_since is None:
                    down_since = clock.monotonic()
                    self._on_state(False)
                    log.warning("redis: connection lost (%s); reconnecting", error)
                else:
                    log.info("redis: still unreachable (%s); next try in %.2f s", error, backoff)
                await clock.sleep(backoff)
                backoff = min(backoff * 2, self._settings.backoff_max)
                continue
            for key, entries in reply or ():
                channel = self._keys.channel_of(text(key))
                for entry_id, fields in entries:
                    try:
                        self._take(channel, text(entry_id), fields)
                    except Exception:
                        # One bad entry (written by something else, or a
                        # handler's bug) must not end the loop: the hub would
                        # stop hearing the other hubs while it looks healthy.
                        log.exception("%s: entry %s could not be taken: skipped", channel, entry_id)

    def _take(self, channel: str, entry_id: str, fields: dict[bytes, bytes]) -> None:
        cursor = self._cursors.get(channel)
        handler = self._handler
        if cursor is None or handler is None:
            return  # unsubscribed while this batch was on its way
        epoch, offset = text(fields[b"e"]), int(fields[b"o"])
        if epoch == cursor.epoch and offset <= cursor.offset:
            # A reply read before the channel was subscribed again (after a
            # HistoryLost): this cursor has it already, or began after it.
            return
        cursor.last_id = entry_id
        if epoch != cursor.epoch or offset != cursor.offset + 1:
            reason = (
                "Redis lost the channel's history"
                if epoch != cursor.epoch
                else f"{offset - cursor.offset - 1} publications trimmed before this hub read them"
            )
            handler(Publication(channel, HistoryLost(reason), 0.0))
        cursor.epoch, cursor.offset = epoch, offset
        try:
            event = codec.decode(fields[b"d"])
        except codec.CodecError as error:
            log.error("%s: entry %s is not an event (%s): skipped", channel, entry_id, error)
            return
        published = float(fields[b"t"])
        # The publishing hub's wall clock against ours: as exact as the hosts' NTP.
        self._on_lag(time.time() - published)
        handler(
            Publication(
                channel,
                event,
                published,
                droppable=bool(fields[b"p"]),
                position=Position(offset, epoch),
            )
        )

    async def _check_epochs(self) -> None:
        """After a reconnection: a channel whose epoch changed lost what this hub had not read."""
        for channel, cursor in list(self._cursors.items()):
            now = await self._start_position(channel)
            if now.epoch != cursor.epoch and self._cursors.get(channel) is cursor:
                self._restart(channel, now.epoch)

    def _restart(self, channel: str, epoch: str) -> None:
        """The channel's history is another one now: end its streams, read the new one whole.

        A new epoch means its stream was created with it, so reading it from
        its start misses nothing of it.
        """
        self._cursors[channel] = Cursor("0-0", epoch, 0)
        if self._handler is not None:
            self._handler(Publication(channel, HistoryLost("Redis restarted empty"), 0.0))
