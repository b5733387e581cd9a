"""A device room's keys leave Redis with the last hub that forgets the room (real redis-server).

Room ids come from untrusted ``device_id`` metadata, so rooms opened and left
must not stay in Redis for ever: the last hub that forgets a room (after its
linger) drops its record, its hubs and members, its lease and its channels,
in one script, and only while no live hub has the room open. Two hubs run in
this process on one Redis, each on its own fake clock (a linger passes when
the test says), each with its own backplane (its own hub id).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from chat_helpers import SECRET, eventually
from cluster_helpers import RedisServer
from fake_clock import FakeClock

from hub.audio.library import SoundLibrary
from hub.audio.sources import long_sound
from hub.backplane import Backplane
from hub.backplane.keys import Keys
from hub.core.hub import Hub
from hub.core.roomstate import Input, RoomRecord
from hub.settings import BackplaneSettings, Settings

pytestmark = pytest.mark.asyncio

# The hubs' heartbeats run on their fake clocks, which move only when a test
# says: their liveness keys (on Redis's clock) must outlast the test.
SETTINGS = Settings(backplane=BackplaneSettings(hub_ttl=300.0))
LINGER = SETTINGS.devices.linger
KEYS = Keys()
# The race: b opens each room this many turns of the event loop after the
# last, so that some of its opens come before a's script and some after.
TURNS = 20


@dataclass
class RedisHub:
    hub: Hub
    backplane: Backplane
    clock: FakeClock

    @property
    def id(self) -> str:
        return self.backplane.hub_id

    async def open(self, room_id: str) -> None:
        """A watcher's Press of Mode would open the room so: opened, stepped, left empty."""
        room = await self.hub.rooms.open(room_id)
        await room.press(Input.MODE)

    async def linger(self, *room_ids: str) -> None:
        """The linger passes here: the rooms empty here are forgotten, and closed."""
        self.clock.advance(LINGER)
        for room_id in room_ids:
            await self.hub.rooms.settled(room_id)


@asynccontextmanager
async def redis_hub(redis_server: RedisServer) -> AsyncIterator[RedisHub]:
    clock = FakeClock(auto_advance=False)
    backplane = Backplane(redis_server.url, SETTINGS, clock=clock)
    await backplane.start()
    hub = Hub(
        SETTINGS,
        clock=clock,
        secret=SECRET,
        library=SoundLibrary({0: long_sound(0.1), 1: long_sound(0.1), 2: long_sound(0.1)}),
        broker=backplane.broker,
        session_store=backplane.sessions,
        presence=backplane.presence,
        room_store=backplane.room_store,
        room_cluster=backplane.rooms,
    )
    await hub.start()
    try:
        yield RedisHub(hub, backplane, clock)
    finally:
        await hub.rooms.close()
        await hub.close()
        await backplane.close()


async def room_keys(redis: aioredis.Redis, pattern: str = "*room*") -> list[bytes]:
    """Keys of rooms in Redis, counted with SCAN as an operator would."""
    return [key async for key in redis.scan_iter(match=pattern, count=1000)]


async def test_rooms_opened_and_left_leave_no_keys_after_their_linger(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    async with redis_hub(redis_server) as a:
        ids = [f"device-{n}" for n in range(200)]  # more than the pool has connections
        for room_id in ids:
            async with a.hub.rooms.join(room_id, "a device"):
                await a.open(room_id)
        held = await room_keys(redis_client)
        # Record, hubs, status channel (stream, epoch, offset), audio epoch.
        assert len(held) >= 5 * len(ids)
        await a.linger(*ids)
        assert await room_keys(redis_client) == []
        assert len(a.hub.rooms) == 0


async def test_a_room_open_at_another_hub_keeps_its_record(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    async with redis_hub(redis_server) as a, redis_hub(redis_server) as b:
        await a.open("kitchen")  # mode 1 at a
        async with b.hub.rooms.join("kitchen", "a device"):
            await b.hub.rooms.open("kitchen")  # a member at b
            await b.hub.rooms.open("porch")  # and an empty room, lingering at b
            await a.open("porch")
            await a.linger("kitchen", "porch")
            assert "kitchen" not in a.hub.rooms and "porch" not in a.hub.rooms
            for room_id in ("kitchen", "porch"):
                record = await b.backplane.room_store.get(room_id)
                assert (record.mode, record.version) == (1, 1), room_id
                assert await redis_client.hkeys(KEYS.room_members(room_id)) == [b.id.encode()]
            room = b.hub.rooms.get("kitchen")
            await room.press(Input.MODE)  # the room goes on at b, its mode kept
            assert room.mode == 2
            assert (await b.backplane.room_store.get("kitchen")).mode == 2
        await b.linger("kitchen", "porch")
        assert await room_keys(redis_client) == []


async def test_a_room_opened_after_its_record_went_starts_at_its_first_mode(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    async with redis_hub(redis_server) as a, redis_hub(redis_server) as b:
        await a.open("kitchen")
        await a.open("kitchen")
        assert a.hub.rooms.get("kitchen").mode == 2
        await a.linger("kitchen")
        assert await room_keys(redis_client) == []
        for hub in (b, a):  # at another hub, and at the hub that forgot it
            room = await hub.hub.rooms.open("kitchen")
            assert (room.mode, room.version) == (0, 0)
        await b.hub.rooms.get("kitchen").press(Input.MODE)
        record = await a.backplane.room_store.get("kitchen")
        assert (record.mode, record.version) == (1, 1)
        room = a.hub.rooms.get("kitchen")
        await eventually(lambda: room.version == 1, "a hears b's step")
        assert room.mode == 1


async def test_a_hub_opening_a_room_as_another_forgets_it_sees_a_whole_record(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    """Whichever comes first, b sees the old record (and it stays) or a fresh one."""
    async with redis_hub(redis_server) as a, redis_hub(redis_server) as b:
        ids = [f"device-{n}" for n in range(40)]
        for room_id in ids:
            await a.open(room_id)  # mode 1, version 1

        async def open_at_b(room_id: str, turns: int) -> None:
            for _ in range(turns):
                await asyncio.sleep(0)
            await b.hub.rooms.open(room_id)

        opening = asyncio.gather(*(open_at_b(room_id, TURNS * n) for n, room_id in enumerate(ids)))
        await a.linger(*ids)  # a forgets them all as b opens them
        await opening
        outcomes = set()
        for room_id in ids:
            room = b.hub.rooms.get(room_id)
            record = await b.backplane.room_store.get(room_id)
            seen = (room.mode, room.version)
            assert seen in {(1, 1), (0, 0)}, room_id
            assert (record.mode, record.version) == seen, room_id  # never gone under b
            assert await redis_client.hkeys(KEYS.room_members(room_id)) == [b.id.encode()]
            outcomes.add(seen)
            await room.press(Input.MODE)
            assert (await b.backplane.room_store.get(room_id)).mode == room.mode == seen[0] + 1
        print(f"\nb found the old record or a fresh one: {sorted(outcomes)}")


async def test_the_cluster_drops_a_room_only_when_no_live_hub_has_it_open(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    """The script's decision, step by step: hubs that have the room open, a
    lease held by another hub, a dead hub's members."""
    async with redis_hub(redis_server) as a, redis_hub(redis_server) as b:
        store, ca, cb = a.backplane.room_store, a.backplane.rooms, b.backplane.rooms
        await store.step("hall", Input.MODE, None, next_mode=lambda m: m + 1)
        await ca.open("hall")
        await cb.join("hall")
        assert await ca.close("hall") is False  # b has a member there
        assert await cb.leave("hall") == 0
        assert await ca.close("hall") is False  # b has it open, empty
        assert (await store.get("hall")).mode == 1
        assert await cb.drive("hall")
        await redis_client.hdel(KEYS.room_members("hall"), b.id)
        assert await ca.close("hall") is False  # b drives it
        await cb.release("hall")
        # A hub that died (its liveness key gone) keeps nothing.
        await redis_client.hset(KEYS.room_members("hall"), "dead-hub", 3)
        assert await ca.close("hall") is True
        assert await room_keys(redis_client) == []
        assert await store.get("hall") == RoomRecord()


async def test_every_key_of_a_room_expires_unless_its_driver_refreshes_it(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    """Should every hub of a room be killed, nobody forgets it: its keys expire."""
    ttl_ms = SETTINGS.backplane.room_ttl * 1000
    async with redis_hub(redis_server) as a, a.hub.rooms.join("kitchen", "a device"):
        await a.open("kitchen")
        # The driver's renewal (its lease loop's, here called at once)
        # refreshes every key of the room.
        assert await a.backplane.rooms.drive("kitchen") is True
        keys = await room_keys(redis_client)
        assert len(keys) >= 5
        ttls = {key: await redis_client.pttl(key) for key in keys}
        assert all(0 < ttl <= ttl_ms for ttl in ttls.values()), ttls
