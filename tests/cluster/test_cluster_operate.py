"""Health and metrics of a hub on Redis follow Redis: a real redis-server, killed
and started again under a real hub process."""

from __future__ import annotations

import asyncio

import pytest
from chat_helpers import Stream, login, timeout
from cluster_helpers import Cluster, RedisServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scrape import metrics_url, scrape

pytestmark = pytest.mark.asyncio

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_and_metrics_follow_redis_down_and_up(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    hub = cluster.hub("--metrics-address", "127.0.0.1:0")
    url = metrics_url(hub.proc)
    channel = await cluster.channel(hub)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await asyncio.wait_for(watch.read(), timeout())).status == SERVING

    # A chat line goes through Redis and comes back: its lag is measured.
    stream = Stream(channel, await login(channel, "alice"))
    await stream.send("through redis")
    assert await stream.next_message() == ("alice", "through redis")
    up = await scrape(url)
    assert up.value("hub_backplane_up") == 1
    assert up.value("hub_backplane_lag_seconds_count") >= 1
    assert up.value("hub_backplane_reconnects_total") == 0

    redis_server.kill()
    assert (await asyncio.wait_for(watch.read(), timeout(10))).status == NOT_SERVING
    assert (await scrape(url)).value("hub_backplane_up") == 0

    redis_server.start()
    assert (await asyncio.wait_for(watch.read(), timeout(15))).status == SERVING
    back = await scrape(url)
    assert back.value("hub_backplane_up") == 1
    assert back.value("hub_backplane_reconnects_total") >= 1
    watch.cancel()
