"""Presence waiting for an unreachable Redis is bounded by sessions, not by events."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from fake_clock import FakeClock

from hub.backplane.keys import Keys
from hub.backplane.sessions import RedisPresenceStore
from hub.settings import BackplaneSettings, ChatSettings


@pytest.mark.asyncio
async def test_reconnects_while_redis_is_away_keep_one_change_per_session() -> None:
    redis = aioredis.Redis(host="127.0.0.1", port=1)  # never asked: run() is not called
    presence = RedisPresenceStore(
        redis,
        Keys(),
        "hub-a",
        ChatSettings(),
        BackplaneSettings(),
        clock=FakeClock(),
        on_state=lambda up: None,
    )
    try:
        for _ in range(1000):  # a client reconnecting again and again
            presence.arrive("s1")
            presence.leave("s1")
        presence.arrive("s2")
        assert presence.pending == 2
    finally:
        await redis.aclose()
