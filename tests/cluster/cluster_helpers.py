"""Real Redis and real hub processes for the cluster tests.

``RedisServer`` runs Debian's ``redis-server`` on a free port in a temporary
folder, without persistence (``--save "" --appendonly no``): a restart is an
empty Redis, as after a crash. It can be SIGKILLed and started again on the
same port. ``Cluster`` starts hub processes on it, every door on a free port
(port 0), and waits for each one's start-up line, never a fixed time.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
from chat_helpers import Event, Stream, kind, login, timeout
from cli_helpers import HUB, PASSWORD, STARTING, Proc, free_port, hub_env

REDIS_READY = re.compile(r".*Ready to accept connections.*")
STREAM_DOOR = re.compile(
    r".*serving music and room streaming \(TCP\) on 127\.0\.0\.1:(?P<port>\d+)"
)


def self_signed_certificate(folder: Path) -> Path:
    """A certificate for 127.0.0.1 (its key beside it, .key), made by openssl."""
    cert = folder / "redis.crt"
    key = cert.with_suffix(".key")
    argv = [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True)
    return cert


class RedisServer:
    def __init__(
        self, folder: Path, *, password: str | None = None, tls_cert: Path | None = None
    ) -> None:
        self.folder = folder
        self.port = free_port()
        self.password = password
        # A certificate whose key is beside it (.key): serve TLS only, with it.
        self.tls_cert = tls_cert
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls_cert is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}?ssl_ca_certs={self.tls_cert}"
        return f"redis://{auth}127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "no",
            "--logfile", "/dev/stderr",
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        if self.tls_cert is not None:
            argv[2] = "0"  # no plain port
            argv += [
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls_cert),
                "--tls-key-file", str(self.tls_cert.with_suffix(".key")),
                "--tls-ca-cert-file", str(self.tls_cert),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        self.proc = Proc(argv)
        self.proc.expect(REDIS_READY, seconds=20)

    def kill(self) -> None:
        """SIGKILL: gone at once, and with it everything it held."""
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        self.proc.stop()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@dataclass
class ClusterHub:
    proc: Proc
    port: int  # gRPC: chat, rooms and devices
    stream_port: int  # the raw TCP door

    @property
    def stream_address(self) -> str:
        return f"127.0.0.1:{self.stream_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc.popen.poll() is None


class Cluster:
    """Hub processes on one Redis; ``close`` stops them all."""

    def __init__(self, redis: RedisServer, stack: AsyncExitStack) -> None:
        self.redis = redis
        self.stack = stack
        self.hubs: list[ClusterHub] = []
        self.procs: list[Proc] = []

    def start(self, *extra: str, url: str | None = None, env: dict[str, str] | None = None) -> Proc:
        """A hub process, not waited for (to see it refuse to start)."""
        argv = [
            *HUB, "-s", "-p", PASSWORD,
            "-h", "127.0.0.1:0",
            "--device-address", "none",
            "--stream-address", "127.0.0.1:0",
            "--redis", url or self.redis.url,
            *extra,
        ]  # fmt: skip
        proc = Proc(argv, env=env if env is not None else hub_env())
        self.procs.append(proc)
        return proc

    def hub(self, *extra: str, url: str | None = None) -> ClusterHub:
        """A hub serving, once it said so."""
        proc = self.start(*extra, url=url)
        match = proc.expect(STARTING, seconds=30)
        door = proc.expect(STREAM_DOOR, seconds=30)
        hub = ClusterHub(proc, int(match["port"]), int(door["port"]))
        self.hubs.append(hub)
        return hub

    async def channel(self, hub: ClusterHub) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(hub.address)
        self.stack.push_async_callback(channel.close, None)
        return channel

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
            # Shown by pytest for a failed test only.
            print(f"--- {' '.join(proc.argv[-8:])}", *proc.lines, sep="\n")


# -- chat through the hubs ----------------------------------------------------------


async def opened(channel: grpc.aio.Channel, token: str) -> Stream:
    """A stream whose subscription is in place (its headers came back)."""
    stream = Stream(channel, token)
    await asyncio.wait_for(stream.call.initial_metadata(), timeout())
    return stream


def messages(events: list[object]) -> list[tuple[str, str]]:
    return [
        (e.client_message.name, e.client_message.message)  # type: ignore[attr-defined]
        for e in events
        if kind(e) == "client_message"  # type: ignore[arg-type]
    ]


async def skip_to(
    stream: Stream, predicate: Callable[[Event], bool], seconds: float
) -> list[Event]:
    """Like ``Stream.skip_to``, with a longer bound for each event."""
    seen: list[Event] = []
    while not seen or not predicate(seen[-1]):
        seen.append(await stream.next(seconds))
    return seen


async def read_messages(stream: Stream, count: int) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []
    while len(got) < count:
        event = await stream.next()
        if kind(event) == "client_message":
            got.append((event.client_message.name, event.client_message.message))
    return got


@dataclass
class TwoChatting:
    """Two hubs, a user streaming at each (alice at a, bob at b)."""

    a: ClusterHub
    b: ClusterHub
    on_a: Stream
    on_b: Stream


async def two_chatting(cluster: Cluster) -> TwoChatting:
    a, b = cluster.hub(), cluster.hub()
    ca, cb = await cluster.channel(a), await cluster.channel(b)
    on_a = await opened(ca, await login(ca, "alice"))
    on_b = await opened(cb, await login(cb, "bob"))
    return TwoChatting(a, b, on_a, on_b)
