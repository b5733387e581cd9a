"""The backplane's parts on the hub's clock, and its one word on Redis for health.

Two parts of a hub use Redis on their own: the reader (every channel, one
blocking XREAD) and the heartbeat (liveness, sweeps). Each tells when it lost
Redis or found it again; the backplane counts as up only while neither has
lost it, whichever spoke last. Redis's ACL takes one command from the
heartbeat (SADD) while the reader goes on, so the two disagree for a while.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from cluster_helpers import RedisServer
from fake_clock import FakeClock
from waiting import Changes

from hub.backplane import Backplane
from hub.core.events import UserMessage
from hub.core.publication import Publication
from hub.settings import Settings

pytestmark = pytest.mark.asyncio


class Heard:
    """What the backplane said (its states) and handed on (publications)."""

    def __init__(self) -> None:
        self.states: list[bool] = []
        self.texts: list[str] = []
        self.changes = Changes()

    def state(self, up: bool) -> None:
        self.states.append(up)
        self.changes.notify()

    def publication(self, pub: Publication) -> None:
        if isinstance(pub.event, UserMessage):
            self.texts.append(pub.event.text)
            self.changes.notify()

    async def wait_for(self, what: str, predicate: Callable[[], object]) -> None:
        await self.changes.wait_for(
            predicate, 10.0, lambda: f"{what}: states {self.states}, lines {self.texts}"
        )


async def test_the_backplane_is_up_only_while_every_part_reaches_redis(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    clock = FakeClock(0.0, auto_advance=False)  # beats and backoffs only when the test says
    backplane = Backplane(redis_server.url, Settings(), clock=clock)
    heard = Heard()
    backplane.on_state = heard.state
    await backplane.start()
    await backplane.broker.start(heard.publication)
    try:
        await backplane.broker.subscribe("chat")
        beat = await clock.next_wake()  # the heartbeat, one period on
        assert beat - clock.now == Settings().backplane.heartbeat

        await redis_client.execute_command("ACL", "SETUSER", "default", "-sadd")
        clock.set(beat)  # the heartbeat beats, and fails
        beat = await clock.next_wake()  # ... and waits for its next period
        assert heard.states == [False] and not backplane.up

        # The reader loses its connection and finds Redis again: it reads,
        # but the heartbeat still fails, so the backplane stays down.
        await redis_client.client_kill_filter(_type="normal", skipme=True)
        retry = await clock.next_wake(sleepers=2)  # the reader's backoff, before the beat
        assert retry < beat
        clock.set(retry)
        await backplane.broker.publish(Publication("chat", UserMessage("a", "s", "hi"), 0.0))
        await heard.wait_for("the reader reads again", lambda: heard.texts == ["hi"])
        assert heard.states == [False] and not backplane.up

        await redis_client.execute_command("ACL", "SETUSER", "default", "+sadd")
        clock.set(beat)  # the heartbeat gets through: every part is up
        await heard.wait_for("up again", lambda: len(heard.states) == 2)
        assert heard.states == [False, True] and backplane.up
    finally:
        await backplane.broker.close()
        await backplane.close()
