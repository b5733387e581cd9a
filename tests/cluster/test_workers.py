"""``hub -s --workers N``: worker processes that share the ports, and their parent.

Real processes, a real redis-server, real gRPC. Each worker's log lines carry
``worker I (pid P)``, which is how a test sees which worker a connection
landed on. Nothing sleeps to synchronise: waits are for log lines or for
processes to exit, with deadlines.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from collections.abc import Iterator

import grpc
import psutil
import pytest
from cli_helpers import PASSWORD, Proc, Procs, hub_env, timeout
from cluster_helpers import RedisServer

from hub.proto import chat_pb2, chat_pb2_grpc
from hub.workers import Doors, reserve

WORKER_LISTENING = re.compile(
    r".* INFO hub\.(?P<door>rpc|tcp)\.server: worker (?P<index>\d) \(pid (?P<pid>\d+)\): "
    r"(?:gRPC serving|streaming) on 127\.0\.0\.1:(?P<port>\d+)"
)
LOGGED_IN = re.compile(r".* INFO hub\.core\.chat: worker (?P<index>\d) \(pid \d+\): .* logged in.*")
# Each channel its own TCP connection, so that each Login is a new connection
# for the kernel to hand to one worker or the other.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    yield started
    started.stop_all()


def start_workers(procs: Procs, redis_url: str, count: int = 2) -> tuple[Proc, dict[int, int], int]:
    """``hub -s -v --workers COUNT`` on free ports; the parent, {index: pid}, the chat port."""
    parent = procs.start(
        "-s",
        "-v",
        "-p",
        PASSWORD,
        "--workers",
        str(count),
        "-h",
        "127.0.0.1:0",
        "--device-address",
        "none",
        "--stream-address",
        "127.0.0.1:0",
        env=hub_env(HUB_REDIS_URL=redis_url),
    )
    pids: dict[int, int] = {}
    doors: dict[tuple[int, str], int] = {}  # (worker, door): port
    while len(doors) < 2 * count:
        match = parent.expect(WORKER_LISTENING, seconds=30)
        pids[int(match["index"])] = int(match["pid"])
        doors[int(match["index"]), match["door"]] = int(match["port"])
    for door in ("rpc", "tcp"):
        ports = {doors[index, door] for index in range(count)}
        assert len(ports) == 1, f"the workers' {door} doors are on different ports: {ports}"
    assert doors[0, "rpc"] != doors[0, "tcp"]
    return parent, pids, doors[0, "rpc"]


def listening_ports(pid: int) -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


async def login_until_every_worker_served(port: int, parent: Proc, count: int) -> set[int]:
    """Log in on new connections until each worker has logged a login (at most 200 tries)."""
    served: set[int] = set()
    for attempt in range(200):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as ch:
            stub = chat_pb2_grpc.ChatStub(ch)  # type: ignore[no-untyped-call]
            request = chat_pb2.LoginRequest(name=f"user{attempt}", password=PASSWORD)
            await asyncio.wait_for(stub.Login(request), timeout())
        served.add(int(parent.expect(LOGGED_IN)["index"]))
        if len(served) == count:
            break
    return served


@pytest.mark.asyncio
async def test_two_workers_serve_one_port_and_stop_together(
    procs: Procs, redis_server: RedisServer
) -> None:
    parent, pids, port = start_workers(procs, redis_server.url)
    assert len(set(pids.values())) == 2
    assert parent.popen.pid not in pids.values()
    for pid in pids.values():
        # Both doors of both workers listen: the chat port and the stream port.
        ports = listening_ports(pid)
        assert port in ports and len(ports) == 2, ports
    assert listening_ports(pids[0]) == listening_ports(pids[1])

    assert await login_until_every_worker_served(port, parent, 2) == {0, 1}

    parent.signal(signal.SIGTERM)
    assert parent.wait(seconds=10) == 0
    _, alive = psutil.wait_procs([p for p in map(_process, pids.values()) if p], timeout=timeout(5))
    assert not alive


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def test_a_worker_that_dies_stops_the_group(procs: Procs, redis_server: RedisServer) -> None:
    parent, pids, _ = start_workers(procs, redis_server.url)
    survivor = psutil.Process(pids[0])
    psutil.Process(pids[1]).kill()
    parent.expect(
        rf".* ERROR hub\.workers: worker 1 \(pid {pids[1]}\) exited with status -9; "
        r"stopping the others"
    )
    assert parent.wait() == 1
    _, alive = psutil.wait_procs([survivor], timeout=timeout(5))
    assert not alive


def test_workers_stop_when_their_parent_is_killed(procs: Procs, redis_server: RedisServer) -> None:
    parent, pids, _ = start_workers(procs, redis_server.url)
    workers = [psutil.Process(pid) for pid in pids.values()]
    parent.popen.kill()
    _, alive = psutil.wait_procs(workers, timeout=timeout(10))
    assert not alive
    # They stopped themselves, in order (their standard error is the parent's).
    for _ in pids:
        parent.expect_line("<<Server>>: shutting down")


NO_REDIS = (
    "--workers needs --redis URL (or HUB_REDIS_URL): "
    "without a shared backplane each worker would be a separate hub behind one port"
)
NO_SECRET = (
    "--redis needs the token signing secret every hub shares: "
    "set HUB_TOKEN_SECRET or HUB_TOKEN_SECRET_FILE"
)


NO_METRICS = (
    "--metrics-address with --workers is not supported: each worker counts its own share, "
    "and one shared port would show a different worker at each scrape"
)


@pytest.mark.parametrize("missing", ["redis", "secret", "metrics"])
def test_workers_are_refused_in_one_line(
    procs: Procs, redis_server: RedisServer, missing: str
) -> None:
    """Without Redis or the shared secret, or with metrics: refused once, by the
    parent, not once per worker."""
    env = hub_env(HUB_REDIS_URL=redis_server.url)
    if missing == "metrics":
        env["HUB_METRICS_ADDRESS"] = "127.0.0.1:0"
    else:
        env.pop({"redis": "HUB_REDIS_URL", "secret": "HUB_TOKEN_SECRET"}[missing])
    parent = procs.start("-s", "-p", PASSWORD, "--workers", "2", env=env)
    assert parent.wait() == 1
    (line,) = parent.lines
    why = {"redis": NO_REDIS, "secret": NO_SECRET, "metrics": NO_METRICS}[missing]
    assert line.endswith(f"<<Process>>: {why}")


def test_no_workers_is_a_bad_configuration(procs: Procs) -> None:
    parent = procs.start("-s", "-p", PASSWORD, "--workers", "0")
    assert parent.wait() == 2
    assert "--workers: expected a whole number from 1, got '0'" in parent.lines[-1]


def test_the_parent_gives_each_door_on_port_zero_one_shared_port() -> None:
    doors, held = reserve(Doors("127.0.0.1:0", "127.0.0.1:0", "none"))
    try:
        host, device = (int(d.rpartition(":")[2]) for d in (doors.host, doors.device))
        assert host != device and 0 not in (host, device)
        assert doors.stream == "none" and len(held) == 2
        # Held with SO_REUSEPORT, never listening: a worker can bind the same port.
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", host))
            worker.listen()
    finally:
        for sock in held:
            sock.close()
    same = Doors("127.0.0.1:7000", "127.0.0.1:7000", "127.0.0.1:7001")
    assert reserve(same) == (same, [])
