"""The RoomStore contract, for the memory store and the Redis one (real redis-server).

Both give the same records for the same presses; the Redis one keeps whole
steps when two hubs press at once, and its stream ids are unique across hubs.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from hub.backplane.keys import Keys
from hub.backplane.rooms import RedisRoomStore
from hub.core.roomstate import Action, Input, RoomRecord, RoomState
from hub.core.roomstore import MemoryRoomStore, RoomStore

pytestmark = pytest.mark.asyncio

MODES = 5


def next_mode(mode: int) -> int:
    return (mode + 1) % MODES


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> RoomStore:
    if request.param == "memory":
        return MemoryRoomStore()
    return RedisRoomStore(request.getfixturevalue("redis_client"), Keys())


async def test_a_store_steps_a_room_as_the_state_table_says(store: RoomStore) -> None:
    assert await store.get("kitchen") == RoomRecord()
    before, after, actions = await store.step("kitchen", Input.MODE, None, next_mode=next_mode)
    assert (before, after, actions) == (
        RoomRecord(),
        RoomRecord(1, version=1),
        (Action.NEXT_MODE,),
    )
    _, playing, actions = await store.step("kitchen", Input.PLAY, None, next_mode=next_mode)
    assert playing.state is RoomState.PLAYING and playing.stream_id is not None
    assert actions == (Action.START_STREAM,)
    stale = await store.step("kitchen", Input.ENDED, playing.stream_id + 1, next_mode=next_mode)
    assert stale == (playing, playing, ())
    _, idle, _ = await store.step("kitchen", Input.ENDED, playing.stream_id, next_mode=next_mode)
    assert idle == RoomRecord(1, RoomState.IDLE, None, version=3)
    assert await store.get("kitchen") == idle
    _, live, _ = await store.step("kitchen", Input.LIVE, None, next_mode=next_mode)
    assert live.live and await store.get("kitchen") == live
    assert await store.get("hall") == RoomRecord()
    await store.forget("kitchen")
    assert await store.get("kitchen") == RoomRecord()


async def test_two_hubs_pressing_at_once_each_press_counts_once(
    redis_client: aioredis.Redis,
) -> None:
    hubs = [RedisRoomStore(redis_client, Keys()), RedisRoomStore(redis_client, Keys())]
    presses = 23
    await asyncio.gather(
        *(
            hubs[n % 2].step("kitchen", Input.MODE, None, next_mode=next_mode)
            for n in range(presses)
        )
    )
    record = await hubs[0].get("kitchen")
    assert (record.mode, record.version) == (presses % MODES, presses)


async def test_stream_ids_are_unique_across_hubs(redis_client: aioredis.Redis) -> None:
    hubs = [RedisRoomStore(redis_client, Keys()), RedisRoomStore(redis_client, Keys())]
    ids = await asyncio.gather(*(hubs[n % 2].new_stream_id() for n in range(100)))
    assert len(set(ids)) == 100
