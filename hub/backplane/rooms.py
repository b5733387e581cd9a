"""Device rooms' records in Redis: the ``RoomStore`` every hub of a room would share.

Not wired into ``--redis`` yet (device rooms are still each hub's own; see
``hub/backplane/__init__.py``): this is the store the shared rooms will use,
tested on its own against a real Redis.

A step is an optimistic transaction: WATCH the room's hash, read it, run the
state machine's ``advance`` on it, and write the result in MULTI/EXEC; if
another hub changed the room in between, EXEC fails and the step runs again
on the new record. So every hub sees whole steps only, in one order. Stream
ids come from one counter (INCR), unique across hubs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from hub.backplane.keys import Keys
from hub.core.roomstate import Action, Input, RoomRecord, RoomState, advance, step
from hub.core.roomstore import STREAM_ID_LIMIT
from hub.errors import Unavailable

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
    )


class RedisRoomStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def get(self, room_id: str) -> RoomRecord:
        try:
            return _record(await self._redis.hgetall(self._keys.room(room_id)))
        except RedisError as error:
            raise Unavailable(f"the backplane (Redis) is out of reach: {error}") from None

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
                            },
                        )
                        await pipe.execute()
                        return before, after, actions
                    except WatchError:
                        continue  # another hub stepped the room first: again, on its record
        except RedisError as error:
            raise Unavailable(f"the backplane (Redis) is out of reach: {error}") from None

    async def new_stream_id(self) -> int:
        try:
            value = int(await self._redis.incr(self._keys.stream_ids))
        except RedisError as error:
            raise Unavailable(f"the backplane (Redis) is out of reach: {error}") from None
        return value % STREAM_ID_LIMIT or 1

    async def forget(self, room_id: str) -> None:
        try:
            await self._redis.delete(self._keys.room(room_id))
        except RedisError as error:
            raise Unavailable(f"the backplane (Redis) is out of reach: {error}") from None
