"""Device rooms shared by every hub: their records, their drivers and their members in Redis.

``RedisRoomStore`` keeps each room's record (``roomstate.RoomRecord``).
A step is an optimistic transaction: WATCH the room's hash, read it, run the
state machine's ``advance`` on it, and write the result in MULTI/EXEC; if
another hub changed the room in between, EXEC fails and the step runs again
on the new record. So every hub sees whole steps only, in one order. Stream
ids come from one counter (INCR), unique across hubs.

``RedisRoomCluster`` holds the rest (``roomstore.RoomCluster``): the lease of
the hub that drives a room (``SET NX PX``, renewed by its holder only, in one
script) and the hubs that have the room open, with its members at each, so
that members of a hub that died stop counting as soon as its liveness key
has expired.

A room's keys go when the last hub that has it open closes it (after its
linger): one script drops the hub from the room's hubs and, if no live hub
is left there and no other hub holds the lease, deletes every key of the
room (record, hubs, lease, both channels). A hub opens a room by adding
itself to its hubs before it subscribes or reads the record, so a hub
opening the room as another forgets it finds either the old record (the
script saw it and kept everything) or none (a fresh room). Every key of a
room expires ``room_ttl`` after the driver last renewed its lease: rooms of
hubs that were killed go too.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from hub.backplane.errors import unreachable
from hub.backplane.keys import Keys
from hub.core.roomstate import Action, Input, RoomRecord, RoomState, advance, step
from hub.core.roomstore import STREAM_ID_LIMIT
from hub.settings import BackplaneSettings

_STARTS = (Action.START_STREAM, Action.START_LIVE)


def _record(raw: Mapping[Any, Any]) -> RoomRecord:
    """The record a room's hash holds (bytes keys and values, as redis-py returns)."""
    if not raw:
        return RoomRecord()
    stream = raw.get(b"stream", b"")
    return RoomRecord(
        mode=int(raw[b"mode"]),
        state=RoomState(raw[b"state"].decode()),
        stream_id=int(stream) if stream else None,
        live=raw.get(b"live") == b"1",
        version=int(raw.get(b"version", 0)),
    )


# KEYS: the counter; ARGV: where a new counter starts. A counter Redis lost
# (restarted empty) starts again at a random point, not at 1: listeners' gates
# remember the last streams as over, and would skip a new stream given one of
# their ids again.
NEXT_STREAM_ID = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('INCR', KEYS[1])
"""


class RedisRoomStore:
    def __init__(
        self, redis: aioredis.Redis, keys: Keys, settings: BackplaneSettings | None = None
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_ms = _ms((settings or BackplaneSettings()).room_ttl)
        self._next_id = redis.register_script(NEXT_STREAM_ID)

    async def get(self, room_id: str) -> RoomRecord:
        try:
            return _record(await self._redis.hgetall(self._keys.room(room_id)))
        except RedisError as error:
            raise unreachable(f"read room {room_id}", error) from None

    async def step(
        self,
        room_id: str,
        given: Input,
        stream_id: int | None,
        *,
        next_mode: Callable[[int], int],
    ) -> tuple[RoomRecord, RoomRecord, tuple[Action, ...]]:
        key = self._keys.room(room_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        before = _record(await pipe.hgetall(key))
                        fresh: list[int] = []
                        if any(a in _STARTS for a in step(before.state, given)[1]):
                            # Taken before the transaction: an id a retry
                            # throws away is simply never used.
                            fresh.append(await self.new_stream_id())
                        after, actions = advance(
                            before, given, stream_id, next_mode=next_mode, new_stream_id=fresh.pop
                        )
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.hset(
                            key,
                            mapping={
                                "mode": after.mode,
                                "state": after.state.value,
                                "stream": "" if after.stream_id is None else after.stream_id,
                                "live": int(after.live),
                                "version": after.version,
                            },
                        )
                        # Made here, the record must not outlive its room
                        # should this hub die before the driver refreshes it.
                        pipe.pexpire(key, self._ttl_ms)
                        await pipe.execute()
                        return before, after, actions
                    except WatchError:
                        continue  # another hub stepped the room first: again, on its record
        except RedisError as error:
            raise unreachable(f"step room {room_id}", error) from None

    async def new_stream_id(self) -> int:
        try:
            value = int(
                await self._next_id(keys=[self._keys.stream_ids], args=[secrets.randbelow(2**31)])
            )
        except RedisError as error:
            raise unreachable("number a stream", error) from None
        return value % STREAM_ID_LIMIT or 1

    async def forget(self, room_id: str) -> None:
        try:
            await self._redis.delete(self._keys.room(room_id))
        except RedisError as error:
            raise unreachable(f"forget room {room_id}", error) from None


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


# KEYS: lease, then the room's other keys; ARGV: hub, lease ms, room ttl ms.
# 1 if the hub holds the lease (taken or renewed): it keeps the room's keys.
DRIVE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  return 0
end
for i = 2, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
return 1
"""

# KEYS: lease; ARGV: hub.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: members; ARGV: hub, change, prefix, room ttl ms, and 'set' if the
# change is the hub's whole count (said again: Redis lost it). The members on
# live hubs; this hub has the room open (its field stays, 0 when it has no
# member), and a dead hub's field is dropped here (its liveness key expired).
COUNT = """
if ARGV[5] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[1], math.max(0, tonumber(ARGV[2])))
elseif redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) < 0 then
  redis.call('HSET', KEYS[1], ARGV[1], 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local hub = fields[i]
  if hub == ARGV[1] or redis.call('EXISTS', ARGV[3] .. 'alive:' .. hub) == 1 then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], hub)
  end
end
return total
"""

# KEYS: members, lease, then the room's other keys; ARGV: hub, prefix. This
# hub has closed the room: 1 if no live hub has it open any more and no other
# hub drives it, and every key of the room is deleted.
FORGET = """
redis.call('HDEL', KEYS[1], ARGV[1])
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if redis.call('EXISTS', ARGV[2] .. 'alive:' .. fields[i]) == 1 then return 0 end
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('DEL', unpack(KEYS))
return 1
"""


class RedisRoomCluster:
    def __init__(
        self, redis: aioredis.Redis, keys: Keys, hub_id: str, settings: BackplaneSettings
    ) -> None:
        self._keys = keys
        self._hub_id = hub_id
        self._lease_ms = _ms(settings.room_lease)
        self._ttl_ms = _ms(settings.room_ttl)
        self._renew = settings.room_renew
        self._drive = redis.register_script(DRIVE)
        self._release = redis.register_script(RELEASE)
        self._count = redis.register_script(COUNT)
        self._forget = redis.register_script(FORGET)

    @property
    def renew(self) -> float:
        return self._renew

    async def drive(self, room_id: str) -> bool:
        try:
            held = await self._drive(
                keys=[self._keys.room_driver(room_id), *self._room_keys(room_id)],
                args=[self._hub_id, self._lease_ms, self._ttl_ms],
            )
        except RedisError as error:
            raise unreachable(f"hold the lease of room {room_id}", error) from None
        return bool(held)

    async def release(self, room_id: str) -> None:
        try:
            await self._release(keys=[self._keys.room_driver(room_id)], args=[self._hub_id])
        except RedisError as error:
            raise unreachable(f"release the lease of room {room_id}", error) from None

    def _room_keys(self, room_id: str) -> list[str]:
        """Every key of the room but its lease."""
        keys = self._keys
        return [keys.room_members(room_id), keys.room(room_id), *keys.room_channels(room_id)]

    async def open(self, room_id: str) -> None:
        await self._members(room_id, 0)

    async def close(self, room_id: str) -> bool:
        members, *rest = self._room_keys(room_id)
        try:
            gone = await self._forget(
                keys=[members, self._keys.room_driver(room_id), *rest],
                args=[self._hub_id, self._keys.prefix],
            )
        except RedisError as error:
            raise unreachable(f"close room {room_id}", error) from None
        return bool(gone)

    async def join(self, room_id: str) -> int:
        return await self._members(room_id, 1)

    async def leave(self, room_id: str) -> int:
        return await self._members(room_id, -1)

    async def members(self, room_id: str) -> int:
        return await self._members(room_id, 0)

    async def present(self, room_id: str, members: int) -> int:
        return await self._members(room_id, members, "set")

    async def _members(self, room_id: str, change: int, how: str = "") -> int:
        try:
            total = await self._count(
                keys=[self._keys.room_members(room_id)],
                args=[self._hub_id, change, self._keys.prefix, self._ttl_ms, how],
            )
        except RedisError as error:
            raise unreachable(f"count the members of room {room_id}", error) from None
        return int(total)
