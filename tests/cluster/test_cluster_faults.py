"""Redis faults and the ``--redis`` switch, through real processes.

Redis SIGKILLed and restarted empty on the same port: clients hear UNAVAILABLE,
never a silent gap, and the hubs serve on. Connections cut under a live Redis:
the hubs resume where they stopped and nothing is lost. Login while Redis is
down: UNAVAILABLE at once.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest
import redis
from chat_helpers import kind, login, rpc_error, timeout
from cli_helpers import PASSWORD, hub_env
from cluster_helpers import (
    Cluster,
    RedisServer,
    opened,
    read_messages,
    self_signed_certificate,
    two_chatting,
)

from hub.proto import chat_pb2, chat_pb2_grpc

pytestmark = pytest.mark.asyncio


async def test_redis_killed_and_restarted_empty_ends_streams_unavailable_then_serves(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    two = await two_chatting(cluster)
    a, b, on_a, on_b = two.a, two.b, two.on_a, two.on_b
    ca, cb = await cluster.channel(a), await cluster.channel(b)
    await on_a.send("before")
    assert await read_messages(on_b, 1) == [("alice", "before")]
    redis_server.restart()
    # What was in Redis is gone: both hubs say so to their streams.
    for stream in (on_a, on_b):
        ended = await stream.end(seconds=15)
        assert ended.code is grpc.StatusCode.UNAVAILABLE, ended
        assert "lost" in ended.details
    b.proc.expect(r".*redis: connection lost.*")
    b.proc.expect(r".*redis: reconnected after .*")
    # The sessions went with Redis: log in again, and chat crosses hubs again.
    on_a = await opened(ca, await login(ca, "alice"))
    on_b = await opened(cb, await login(cb, "bob"))
    await on_a.send("after")
    assert await read_messages(on_b, 1) == [("alice", "after")]
    assert a.alive and b.alive


async def test_connections_cut_under_a_live_redis_resume_without_loss(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    two = await two_chatting(cluster)
    b, on_a, on_b = two.b, two.on_a, two.on_b
    admin = redis.Redis(port=redis_server.port)
    try:
        sent = 0
        for _ in range(3):
            # Every hub's read loop loses its connection (as in a network
            # blip); lines are sent on while the loops reconnect.
            for client in admin.client_list():
                if client["cmd"] == "xread":
                    admin.client_kill_filter(_id=client["id"])
            for _ in range(10):  # 30 lines: under the rate limit's burst
                await on_a.send(f"line {sent}")
                sent += 1
    finally:
        admin.close()
    expected = [("alice", f"line {n}") for n in range(sent)]
    assert await read_messages(on_b, sent) == expected
    assert await read_messages(on_a, sent) == expected
    b.proc.expect(r".*redis: reconnected after .*")


async def test_login_while_redis_is_down_is_unavailable_at_once(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    hub = cluster.hub()
    channel = await cluster.channel(hub)
    redis_server.kill()
    stub = chat_pb2_grpc.ChatStub(channel)  # type: ignore[no-untyped-call]
    started = time.monotonic()
    error = await rpc_error(stub.Login(chat_pb2.LoginRequest(name="alice", password=PASSWORD)))
    elapsed = time.monotonic() - started
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert elapsed < timeout(1.0)  # a sanity bound: refused, not timed out
    redis_server.start()
    token = await login(channel, "alice")  # no restart of the hub needed
    stream = await opened(channel, token)
    await stream.send("back")
    assert await read_messages(stream, 1) == [("alice", "back")]
    assert hub.alive


async def test_without_a_shared_secret_a_hub_refuses_to_start(cluster: Cluster) -> None:
    env = hub_env()
    del env["HUB_TOKEN_SECRET"]
    proc = cluster.start(env=env)
    assert proc.wait() == 1
    line = proc.expect(r".*HUB_TOKEN_SECRET.*")
    assert "--redis" in line[0]


async def test_a_hub_without_redis_at_its_url_refuses_to_start(cluster: Cluster) -> None:
    proc = cluster.start(url="redis://127.0.0.1:1")
    assert proc.wait(20) == 1
    proc.expect(r".*cannot reach Redis at redis://127\.0\.0\.1:1.*")


async def test_without_the_redis_package_the_hub_says_so(cluster: Cluster, tmp_path: Path) -> None:
    blocker = tmp_path / "redis"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('no redis here')\n")
    proc = cluster.start(env=hub_env(PYTHONPATH=str(tmp_path)))
    assert proc.wait(20) == 1
    proc.expect(r".*--redis needs the redis package.*")


@pytest.mark.parametrize("tls", [False, True], ids=["redis", "rediss"])
async def test_a_password_in_the_url_is_used_and_never_shown(tmp_path: Path, tls: bool) -> None:
    cert = self_signed_certificate(tmp_path) if tls else None
    secured = RedisServer(tmp_path, password="s3cret-redis-pass", tls_cert=cert)
    secured.start()
    try:
        async with asyncio.timeout(timeout(60)):
            from contextlib import AsyncExitStack

            async with AsyncExitStack() as stack:
                cluster = Cluster(secured, stack)
                try:
                    hub = cluster.hub("-v")
                    channel = await cluster.channel(hub)
                    stream = await opened(channel, await login(channel, "alice"))
                    await stream.send("hi")
                    assert await read_messages(stream, 1) == [("alice", "hi")]
                    wrong = cluster.start(url=secured.url.replace("s3cret-redis-pass", "wrong"))
                    assert wrong.wait(20) == 1
                    refused = wrong.expect(r".*cannot reach Redis at rediss?://127\.0\.0\.1:.*")
                    assert "wrong" not in refused[0]
                finally:
                    cluster.close()
                for proc in cluster.procs:
                    assert not any("s3cret-redis-pass" in line for line in proc.lines)
    finally:
        secured.stop()


async def test_a_stream_open_when_redis_goes_away_ends_or_goes_on_never_silently(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    """A line sent while Redis is down is refused with UNAVAILABLE, not dropped."""
    hub = cluster.hub()
    channel = await cluster.channel(hub)
    stream = await opened(channel, await login(channel, "alice"))
    redis_server.kill()
    await stream.send("into the void")
    ended = await stream.end(seconds=15)
    assert ended.code is grpc.StatusCode.UNAVAILABLE
    assert [kind(e) for e in ended.events if kind(e) == "client_message"] == []
    assert hub.alive


async def test_without_redis_nothing_of_it_is_imported() -> None:
    probe = (
        "import sys, hub.cli, hub.app, hub.config; "
        "hub.cli.settings_from(hub.config.load(['-s'], {})); "
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('hub.backplane')))"
    )
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env=hub_env(),
    )
    assert out.stdout.strip() == "[]"


async def test_redis_restarted_again_and_again_leaks_no_connection(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    hub = cluster.hub()
    channel = await cluster.channel(hub)
    stream = await opened(channel, await login(channel, "alice"))
    process = psutil.Process(hub.proc.popen.pid)
    counts = []
    for _ in range(5):
        redis_server.restart()
        hub.proc.expect(r".*redis: reconnected after .*", seconds=15)
        ended = await stream.end(seconds=15)
        assert ended.code is grpc.StatusCode.UNAVAILABLE
        stream = await opened(channel, await login(channel, "alice"))
        await stream.send("still here")
        assert await read_messages(stream, 1) == [("alice", "still here")]
        counts.append(process.num_fds())
    # Sockets to the old Redis are closed, not kept. The first round sets the
    # pool's size (how many commands ran at once, which load varies); four
    # more restarts add a pooled spare or two at most, not sockets by restart.
    assert counts[-1] <= counts[0] + 2, counts
    assert hub.alive
