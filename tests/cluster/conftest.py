"""Fixtures for the cluster tests: a real ``redis-server``, and hub processes on it.

- ``redis_server``: a running ``RedisServer`` (cluster_helpers), stopped at
  teardown; a test may ``kill()`` and ``restart()`` it on the same port.
- ``redis_client``: a client of that Redis, for the test to look or meddle.
- ``cluster``: a ``Cluster`` on that Redis; ``cluster.hub(*flags)`` starts one
  more hub process and returns once it serves; ``await cluster.channel(hub)``
  is a gRPC channel to it. Everything is stopped at teardown.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from cluster_helpers import Cluster, RedisServer

# The TCP door's test client (tests/tcp/raw_client.py), for listeners and
# publishers at the hubs.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tcp"))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run scripts/setup --dev")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of ``redis_server`` for the test itself (to look, or to meddle)."""
    client = aioredis.Redis(port=redis_server.port)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        cluster = Cluster(redis_server, stack)
        try:
            yield cluster
        finally:
            cluster.close()
