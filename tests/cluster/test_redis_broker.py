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
from fake_clock import FakeClock
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hub.backplane.broker import RedisBroker
from hub.backplane.keys import Keys
from hub.clock import Clock, SystemClock
from hub.core.broker import HistoryLost
from hub.core.events import AudioFrame, UserMessage
from hub.core.publication import Publication
from hub.settings import BackplaneSettings

pytestmark = pytest.mark.asyncio


class Inbox:
    """What a broker hands its hub, in order: the handler a test gives ``start``."""

    def __init__(self) -> None:
        self.got: list[Publication] = []
        self._arrived = asyncio.Event()

    def __call__(self, pub: Publication) -> None:
        self.got.append(pub)
        self._arrived.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(timeout(10)):
            while len(self.got) < count:
                self._arrived.clear()
                await self._arrived.wait()


MakeBroker = Callable[..., Awaitable[tuple[RedisBroker, Inbox]]]


@pytest_asyncio.fixture
async def make_broker(redis_server: RedisServer) -> AsyncIterator[MakeBroker]:
    made: list[tuple[RedisBroker, aioredis.Redis, aioredis.Redis]] = []

    async def make(
        *,
        start: bool = True,
        clock: Clock | None = None,
        on_state: Callable[[bool], None] = lambda up: None,
        **settings: object,
    ) -> tuple[RedisBroker, Inbox]:
        commands = aioredis.Redis(port=redis_server.port)
        # As the Backplane's reader: no retries inside redis-py, the loop's
        # backoff is the only wait between attempts.
        reader = aioredis.Redis(
            port=redis_server.port, single_connection_client=True, retry=Retry(NoBackoff(), 0)
        )
        config = dataclasses.replace(BackplaneSettings(), **settings)  # type: ignore[arg-type]
        broker = RedisBroker(
            commands, reader, Keys(), config, clock=clock or SystemClock(), on_state=on_state
        )
        made.append((broker, commands, reader))
        inbox = Inbox()
        if start:
            await broker.start(inbox)
        return broker, inbox

    try:
        yield make
    finally:
        for broker, commands, reader in made:
            await broker.close()
            await commands.aclose()
            await reader.aclose()


def line(n: int) -> Publication:
    return Publication("chat", UserMessage("alice", "0a1b2c3d", f"line {n}"), 1000.0 + n)


async def test_publications_arrive_once_in_order_with_their_positions(
    make_broker: MakeBroker,
) -> None:
    a, _ = await make_broker()
    b, inbox = await make_broker()
    await b.subscribe("chat")
    for n in range(20):
        await a.publish(line(n))
    await inbox.wait_for(20)
    got = inbox.got
    assert [p.event.text for p in got] == [f"line {n}" for n in range(20)]
    assert [p.time for p in got] == [1000.0 + n for n in range(20)]
    positions = [p.position for p in got]
    assert [pos.offset for pos in positions if pos] == list(range(1, 21))
    assert len({pos.epoch for pos in positions if pos}) == 1


async def test_a_hub_that_reads_after_the_history_was_trimmed_is_told(
    make_broker: MakeBroker,
) -> None:
    a, _ = await make_broker(history=10)
    b, inbox = await make_broker(start=False)
    await b.subscribe("chat")  # its place is taken; it reads nothing yet
    for n in range(600):  # MAXLEN ~ trims whole stream nodes (100 entries)
        await a.publish(line(n))
    await b.start(inbox)
    await inbox.wait_for(2)
    got = inbox.got
    assert isinstance(got[0].event, HistoryLost)
    assert "trimmed" in got[0].event.reason
    assert got[0].channel == "chat"
    first = got[1]
    assert first.position is not None and first.position.offset > 1
    assert first.event.text == f"line {first.position.offset - 1}"  # and on from there


async def test_a_hub_is_told_when_redis_lost_its_data(
    make_broker: MakeBroker, redis_server: RedisServer
) -> None:
    a, _ = await make_broker()
    b, inbox = await make_broker()
    await b.subscribe("chat")
    await a.publish(line(0))
    await inbox.wait_for(1)
    got = inbox.got
    admin = aioredis.Redis(port=redis_server.port)
    await admin.flushall()  # as a restart without persistence does
    await admin.aclose()
    await a.publish(line(1))
    await inbox.wait_for(3)
    assert isinstance(got[1].event, HistoryLost)
    assert got[2].event.text == "line 1"
    assert got[2].position is not None and got[2].position.offset == 1


async def test_a_channel_of_audio_keeps_a_shorter_history_than_chat(
    make_broker: MakeBroker, redis_server: RedisServer
) -> None:
    broker, _ = await make_broker(start=False, history=5_000, media_history=10)
    for n in range(1_000):
        frame = AudioFrame(1, n, b"\xf8\xff\xfe")
        await broker.publish(Publication("room:r:audio", frame, 0.0, droppable=n > 0))
        await broker.publish(Publication("chat", UserMessage("a", "s", f"{n}"), 0.0))
    admin = aioredis.Redis(port=redis_server.port)
    try:
        # MAXLEN ~ trims whole nodes of 100 entries: about 10, never 1,000.
        assert await admin.xlen(Keys().stream("room:r:audio")) <= 200
        assert await admin.xlen(Keys().stream("chat")) == 1_000
    finally:
        await admin.aclose()


async def test_the_reader_reconnects_with_backoff_on_the_hubs_clock(
    make_broker: MakeBroker, redis_server: RedisServer
) -> None:
    """Redis gone: the reader tries again after 50 ms, doubling to 2 s, on the
    hub's clock (no real second waited); Redis back: it says so and reads on."""
    clock = FakeClock(0.0, auto_advance=False)
    states: list[bool] = []
    broker, inbox = await make_broker(clock=clock, on_state=states.append)
    await broker.subscribe("chat")
    redis_server.kill()
    wake = await clock.next_wake()  # the reader asleep after its first failure
    waits = [round(wake - clock.now, 3)]
    for attempt in range(2, 9):
        clock.set(wake)  # it tries again, fails, and sleeps longer
        wake = await clock.next_wake()
        assert clock.sleep_calls == attempt
        waits.append(round(wake - clock.now, 3))
    assert waits == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert states == [False]
    redis_server.start()  # on the same port, empty
    clock.set(wake)
    await broker.publish(line(7))
    await inbox.wait_for(2)  # Redis came back empty: told so, then the line
    assert isinstance(inbox.got[0].event, HistoryLost)
    assert inbox.got[1].event.text == "line 7"
    assert states == [False, True]
    redis_server.kill()  # lost again: the backoff starts over from its minimum
    wake = await clock.next_wake()
    assert round(wake - clock.now, 3) == 0.05
