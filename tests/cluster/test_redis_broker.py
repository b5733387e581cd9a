"""The Redis broker on its own, in this process, against a real redis-server.

Positions travel with every publication; a hub that reads after the history
was trimmed past it, or after Redis lost its data, is told (``HistoryLost``)
before anything else of that channel, never handed a silent gap.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from chat_helpers import timeout
from cluster_helpers import RedisServer

from hub.backplane.broker import RedisBroker
from hub.backplane.keys import Keys
from hub.core.broker import HistoryLost
from hub.core.events import UserMessage
from hub.core.publication import Publication
from hub.settings import BackplaneSettings

pytestmark = pytest.mark.asyncio

MakeBroker = Callable[..., Awaitable[tuple[RedisBroker, list[Publication], asyncio.Event]]]


@pytest_asyncio.fixture
async def make_broker(redis_server: RedisServer) -> AsyncIterator[MakeBroker]:
    made: list[tuple[RedisBroker, aioredis.Redis, aioredis.Redis]] = []

    async def make(
        *, start: bool = True, **settings: object
    ) -> tuple[RedisBroker, list[Publication], asyncio.Event]:
        commands = aioredis.Redis(port=redis_server.port)
        reader = aioredis.Redis(port=redis_server.port, single_connection_client=True)
        config = dataclasses.replace(BackplaneSettings(), **settings)  # type: ignore[arg-type]
        broker = RedisBroker(commands, reader, Keys(), config, on_state=lambda up: None)
        made.append((broker, commands, reader))
        got: list[Publication] = []
        arrived = asyncio.Event()

        def handler(pub: Publication) -> None:
            got.append(pub)
            arrived.set()

        broker._handler = handler  # delivery without the read loop until start()
        if start:
            await broker.start(handler)
        return broker, got, arrived

    try:
        yield make
    finally:
        for broker, commands, reader in made:
            await broker.close()
            await commands.aclose()
            await reader.aclose()


async def wait_for(got: list[Publication], arrived: asyncio.Event, count: int) -> None:
    async with asyncio.timeout(timeout(10)):
        while len(got) < count:
            arrived.clear()
            await arrived.wait()


def line(n: int) -> Publication:
    return Publication("chat", UserMessage("alice", "0a1b2c3d", f"line {n}"), 1000.0 + n)


async def test_publications_arrive_once_in_order_with_their_positions(
    make_broker: MakeBroker,
) -> None:
    a, _, _ = await make_broker()
    b, got, arrived = await make_broker()
    await b.subscribe("chat")
    for n in range(20):
        await a.publish(line(n))
    await wait_for(got, arrived, 20)
    assert [p.event.text for p in got] == [f"line {n}" for n in range(20)]
    assert [p.time for p in got] == [1000.0 + n for n in range(20)]
    positions = [p.position for p in got]
    assert [pos.offset for pos in positions if pos] == list(range(1, 21))
    assert len({pos.epoch for pos in positions if pos}) == 1


async def test_a_hub_that_reads_after_the_history_was_trimmed_is_told(
    make_broker: MakeBroker,
) -> None:
    a, _, _ = await make_broker(history=10)
    b, got, arrived = await make_broker(start=False)
    await b.subscribe("chat")  # its place is taken; it reads nothing yet
    for n in range(600):  # MAXLEN ~ trims whole stream nodes (100 entries)
        await a.publish(line(n))
    await b.start(b._handler)  # type: ignore[arg-type]
    await wait_for(got, arrived, 2)
    assert isinstance(got[0].event, HistoryLost)
    assert "trimmed" in got[0].event.reason
    assert got[0].channel == "chat"
    first = got[1]
    assert first.position is not None and first.position.offset > 1
    assert first.event.text == f"line {first.position.offset - 1}"  # and on from there


async def test_a_hub_is_told_when_redis_lost_its_data(
    make_broker: MakeBroker, redis_server: RedisServer
) -> None:
    a, _, _ = await make_broker()
    b, got, arrived = await make_broker()
    await b.subscribe("chat")
    await a.publish(line(0))
    await wait_for(got, arrived, 1)
    admin = aioredis.Redis(port=redis_server.port)
    await admin.flushall()  # as a restart without persistence does
    await admin.aclose()
    await a.publish(line(1))
    await wait_for(got, arrived, 3)
    assert isinstance(got[1].event, HistoryLost)
    assert got[2].event.text == "line 1"
    assert got[2].position is not None and got[2].position.offset == 1
