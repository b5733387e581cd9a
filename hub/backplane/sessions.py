"""Sessions shared by every hub: records, presence and the end of a session, in Redis.

Each decision that must be taken once is one Lua script, so two hubs never
see half of it:

- ``create`` claims a new id with the session's record (never an id that is
  live), and starts its two clocks: expiry, and departure as if it had no
  stream yet (sorted sets ``departing`` and ``expiring``, by deadline).
- ``arrive`` and ``leave`` keep the set of hubs that hold streams of each
  session; the last hub to leave starts the departure clock.
- ``due`` (every heartbeat, from every hub) takes the sessions whose deadline
  passed out of the sorted sets: each goes to exactly one hub, which ends it.
- ``end`` deletes the record and returns it to exactly one caller: that hub
  announces the end, once, cluster-wide.

Liveness is by expiry: each hub refreshes ``alive:HUB`` with a TTL. A hub that
dies (SIGKILL) stops refreshing; the next sweep by any hub counts its streams
gone, and its sessions depart after the grace like any other.

Times in the scripts are Redis's own clock (TIME), one clock for all hubs.
The rate limit is a token bucket per session kept in Redis, so it holds
across hubs: one more round trip per chat line.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hub.backplane.errors import unreachable
from hub.backplane.keys import Keys, text
from hub.clock import Clock
from hub.core.events import LeaveReason
from hub.core.sessions import DueHandler, SessionRecord
from hub.settings import BackplaneSettings, ChatSettings

log = logging.getLogger(__name__)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: session, departing, expiring; ARGV: name, expires, grace
CREATE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'expires', ARGV[2])
redis.call('EXPIREAT', KEYS[1], math.floor(tonumber(ARGV[2])) + 60)
redis.call('ZADD', KEYS[3], ARGV[2], KEYS[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), KEYS[1])
return 1
"""
)

# KEYS: session, departing, expiring, presence, rate
END = """
local record = redis.call('HMGET', KEYS[1], 'name', 'expires')
if redis.call('DEL', KEYS[1]) == 0 then return false end
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('ZREM', KEYS[3], KEYS[1])
redis.call('DEL', KEYS[4], KEYS[5])
return record
"""

# KEYS: rate; ARGV: rate, burst
ALLOW = (
    _NOW
    + """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - stamp) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return allowed
"""
)

# KEYS: session, presence, held, departing; ARGV: hub
ARRIVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], KEYS[1])
redis.call('ZREM', KEYS[4], KEYS[1])
return 1
"""

# KEYS: session, presence, held, departing; ARGV: hub, grace
LEAVE = (
    _NOW
    + """
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], KEYS[1])
if redis.call('SCARD', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), KEYS[1])
end
return 1
"""
)

# KEYS: hubs, departing; ARGV: prefix, grace. Counts dead hubs' streams gone.
SWEEP = (
    _NOW
    + """
local prefix, grace = ARGV[1], tonumber(ARGV[2])
local swept = {}
for _, hub in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', prefix .. 'alive:' .. hub) == 0 then
    local held = prefix .. 'held:' .. hub
    for _, session in ipairs(redis.call('SMEMBERS', held)) do
      local presence = prefix .. 'presence:' .. string.sub(session, #prefix + 9)
      redis.call('SREM', presence, hub)
      if redis.call('SCARD', presence) == 0 and redis.call('EXISTS', session) == 1 then
        redis.call('ZADD', KEYS[2], 'NX', now + grace, session)
      end
    end
    redis.call('DEL', held)
    redis.call('SREM', KEYS[1], hub)
    table.insert(swept, hub)
  end
end
return swept
"""
)

# KEYS: departing, expiring; ARGV: prefix. Takes what is due, each by one hub.
DUE = (
    _NOW
    + """
local prefix = ARGV[1]
local gone, expired = {}, {}
for _, session in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[1], session)
  local presence = prefix .. 'presence:' .. string.sub(session, #prefix + 9)
  if redis.call('SCARD', presence) == 0 then table.insert(gone, session) end
end
for _, session in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[2], session)
  table.insert(expired, session)
end
return {gone, expired}
"""
)


class RedisSessionStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys, chat: ChatSettings) -> None:
        self._redis = redis
        self._keys = keys
        self._chat = chat
        self._create = redis.register_script(CREATE)
        self._end = redis.register_script(END)
        self._allow = redis.register_script(ALLOW)

    async def create(self, name: str, expires: float) -> SessionRecord:
        keys = self._keys
        try:
            while True:
                session_id = secrets.token_hex(4)
                created = await self._create(
                    keys=[keys.session(session_id), keys.departing, keys.expiring],
                    args=[name, repr(expires), repr(self._chat.grace)],
                )
                if created:
                    return SessionRecord(session_id, name, expires)
        except RedisError as error:
            raise unreachable("create a session", error) from None

    async def get(self, session_id: str) -> SessionRecord | None:
        try:
            name, expires = await self._redis.hmget(
                self._keys.session(session_id), ["name", "expires"]
            )
        except RedisError as error:
            raise unreachable("look a session up", error) from None
        if name is None or expires is None:
            return None
        return SessionRecord(session_id, text(name), float(expires))

    async def end(self, session_id: str) -> SessionRecord | None:
        keys = self._keys
        try:
            record = await self._end(
                keys=[
                    keys.session(session_id),
                    keys.departing,
                    keys.expiring,
                    keys.presence(session_id),
                    keys.rate(session_id),
                ]
            )
        except RedisError as error:
            raise unreachable("end a session", error) from None
        if not record:
            return None
        name, expires = record
        return SessionRecord(session_id, name.decode(), float(expires))

    async def allow(self, session_id: str) -> bool:
        if self._chat.rate_per_second <= 0:
            return True
        try:
            allowed = await self._allow(
                keys=[self._keys.rate(session_id)],
                args=[self._chat.rate_per_second, self._chat.rate_burst],
            )
        except RedisError as error:
            raise unreachable("check the rate limit", error) from None
        return bool(allowed)


class RedisPresenceStore:
    """Presence of this hub's streams in Redis, and the heartbeat that sweeps for the dead."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        hub_id: str,
        chat: ChatSettings,
        settings: BackplaneSettings,
        *,
        clock: Clock,
        on_state: Callable[[bool], None],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.hub_id = hub_id
        self._grace = chat.grace
        self._settings = settings
        self._clock = clock  # the heartbeat's period, the wait for Redis to come back
        self._on_state = on_state
        self._arrive = redis.register_script(ARRIVE)
        self._leave = redis.register_script(LEAVE)
        self._sweep = redis.register_script(SWEEP)
        self._due = redis.register_script(DUE)
        self._on_due: DueHandler | None = None
        # Changes of presence waiting to go out, from one task: only the
        # latest per session (arriving or not), since the scripts set state
        # rather than count, so a client reconnecting again and again while
        # Redis is away costs one entry, not one per reconnect.
        self._pending: dict[str, bool] = {}
        self._pending_changed = asyncio.Event()
        self._here: set[str] = set()  # sessions this hub holds streams of
        self._tasks: list[asyncio.Task[None]] = []

    async def register(self) -> None:
        """Announce this hub (before it serves): raises if Redis is out of reach."""
        await self._beat()

    def start(self, on_due: DueHandler) -> None:
        self._on_due = on_due

    def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_changes(), name="redis presence"),
            loop.create_task(self._heartbeat(), name="redis heartbeat"),
        ]

    def track(self, record: SessionRecord) -> None:
        pass  # ``create`` started both clocks in the same script

    def arrive(self, session_id: str) -> None:
        self._here.add(session_id)
        self._change(session_id, True)

    def leave(self, session_id: str) -> None:
        self._here.discard(session_id)
        self._change(session_id, False)

    @property
    def pending(self) -> int:
        """Changes of presence not yet written (one per session at most)."""
        return len(self._pending)

    def _change(self, session_id: str, arriving: bool) -> None:
        self._pending.pop(session_id, None)  # the newest goes last
        self._pending[session_id] = arriving
        self._pending_changed.set()

    def forget(self, session_id: str) -> None:
        self._here.discard(session_id)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            # Leaving on purpose: the others need not wait for the TTL.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._keys.alive(self.hub_id))
                await pipe.execute()
        except RedisError:
            pass

    async def _write_changes(self) -> None:
        keys, hub = self._keys, self.hub_id
        while True:
            while not self._pending:
                self._pending_changed.clear()
                await self._pending_changed.wait()
            session_id = next(iter(self._pending))
            arriving = self._pending.pop(session_id)
            script = self._arrive if arriving else self._leave
            args: list[str | float] = [hub] if arriving else [hub, self._grace]
            try:
                await script(
                    keys=[
                        keys.session(session_id),
                        keys.presence(session_id),
                        keys.held(hub),
                        keys.departing,
                    ],
                    args=args,
                )
            except RedisError as error:
                # Kept until Redis answers again, unless a newer change came.
                log.info("%s: presence waits for redis: %s", session_id, error)
                self._pending.setdefault(session_id, arriving)
                await self._clock.sleep(self._settings.backoff_max)

    async def _beat(self) -> bool:
        """Refresh this hub's liveness; True if it had lapsed (or is new)."""
        keys = self._keys
        # The key's TTL runs on Redis's clock, not the hub's: it is what the
        # other hubs judge this one by, so it stays real time even when a
        # test moves the heartbeat on a clock of its own.
        ttl_ms = round(self._settings.hub_ttl * 1000)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.alive(self.hub_id), "1", px=ttl_ms, get=True)
            pipe.sadd(keys.hubs, self.hub_id)
            was, _ = await pipe.execute()
        return was is None

    async def _heartbeat(self) -> None:
        keys = self._keys
        up = True
        while True:
            await self._clock.sleep(self._settings.heartbeat)
            try:
                if await self._beat():
                    # Counted dead (or Redis restarted): say again where we are.
                    for session_id in list(self._here):
                        self._change(session_id, True)
                swept = await self._sweep(
                    keys=[keys.hubs, keys.departing], args=[keys.prefix, self._grace]
                )
                for hub in swept:
                    log.warning("hub %s stopped answering: its streams count as gone", text(hub))
                gone, expired = await self._due(
                    keys=[keys.departing, keys.expiring], args=[keys.prefix]
                )
            except RedisError as error:
                if up:
                    log.warning("redis: heartbeat failed (%s)", error)
                    self._on_state(False)
                up = False
                continue
            if not up:
                self._on_state(True)
                up = True
            prefix = len(keys.session(""))
            if self._on_due is not None:
                for key in gone:
                    self._on_due(text(key)[prefix:], LeaveReason.GONE)
                for key in expired:
                    self._on_due(text(key)[prefix:], LeaveReason.EXPIRED)
