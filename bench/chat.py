"""Chat fan-out benchmark: ``python -m bench.chat`` (see bench/README.md).

Per scenario: a fresh hub server subprocess; N subscribers, each on its own gRPC
channel (its own TCP connection), spread over a few spawned processes that run
one asyncio loop each; one or more publisher processes. Messages carry their
publisher, sequence number and send time (``time.monotonic_ns``, system-wide on
Linux) in their text, so every subscriber can measure latency and loss.

The client side is kept cheap, since it shares two cores with the server:
responses are not parsed as protobuf. A chat line's text is the last field of
its ``StreamResponse``, and the benchmark's texts have a fixed width, so the
subscriber reads publisher, sequence and send time off the tail of the bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import multiprocessing as mp
import os
import platform
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

from bench.common import (
    HubProcess,
    Worker,
    add_common_options,
    attempt,
    begin,
    cancel_and_wait,
    columns,
    end_workers,
    expect,
    finish,
    free_port,
    machine_busy,
    mark,
    ms,
    server_env,
    shut_doors,
    start_py_spy,
    start_spread,
    wait_quiet,
    workers_cpu,
)

# -- wire ------------------------------------------------------------------

LOGIN = "/chat.Chat/Login"
LOGOUT = "/chat.Chat/Logout"
STREAM = "/chat.Chat/Stream"
TOKEN_HEADER = "x-chat-token"
PASSWORD = "bench"
PROBE = b"bench-probe"

# A benchmark line: publisher (2 digits), sequence (10), send time in ns (19).
TEXT_LEN = 31
# A chat line ends with its text: field 2 of StreamResponse.Message (tag 0x12),
# then its length, then the text. Checking these two bytes tells bench lines
# from logins and logouts without parsing.
TAIL = bytes([0x12, TEXT_LEN])
MAX_PUBLISHERS = 100
WARM = 99  # the publisher index of warm-up lines, which are not counted

# Each channel its own connection: without a local subchannel pool, channels of
# one process with equal arguments would share one TCP connection.
CLIENT_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def line_request(pub: int, seq: int, sent_ns: int) -> bytes:
    """A serialized ``StreamRequest`` (message = field 2) with a bench line."""
    return b"\x12\x1f" + b"%02d%010d%019d" % (pub, seq, sent_ns)


def _login_request(name: str) -> bytes:
    from hub.proto import chat_pb2

    return chat_pb2.LoginRequest(name=name, password=PASSWORD).SerializeToString()


def _token(response: bytes) -> str:
    from hub.proto import chat_pb2

    return chat_pb2.LoginResponse.FromString(response).token


def _logout_request(token: str) -> bytes:
    from hub.proto import chat_pb2

    return chat_pb2.LogoutRequest(token=token).SerializeToString()


def _channel_ready_timeout(channel: Any, timeout: float) -> Any:
    return asyncio.wait_for(channel.channel_ready(), timeout)


async def _recv(conn: Connection) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


# -- subscriber processes --------------------------------------------------


class StreamStats:
    """What one subscriber's stream saw; ``on_message`` is the hot path."""

    __slots__ = (
        "arrival",
        "arrivals",
        "counts",
        "dups",
        "ended",
        "error",
        "gaps",
        "last",
        "latencies",
        "latency_sum",
        "next",
        "on_ready",
        "ready",
        "received",
        "sends",
    )

    def __init__(
        self,
        latencies: array[int],
        sends: array[int],
        on_ready: Callable[[], None],
        arrivals: array[int] | None = None,
        arrival: list[int] | None = None,
    ) -> None:
        self.counts = [0] * MAX_PUBLISHERS
        # Where the raw client knows when the kernel received the bytes being
        # handed over (``arrival[0]``, monotonic ns), each line's latency to
        # that moment too: the server's share, without the subscriber's own
        # scheduling delay on a shared machine.
        self.arrivals = arrivals
        self.arrival = arrival
        self.latency_sum = 0  # ns, for the per-stream mean
        self.next = [0] * MAX_PUBLISHERS
        self.latencies = latencies  # shared by the process's streams
        self.sends = sends  # each line's send time, for the timeline
        self.on_ready = on_ready
        self.received = 0
        self.gaps = 0  # sequence numbers skipped (lost mid-stream)
        self.dups = 0  # sequence numbers seen again or out of order
        self.last = 0  # monotonic ns of the last bench line
        self.ready = False
        self.ended = False
        self.error: str | None = None

    def on_message(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if data[-33:-31] == TAIL:
            pub = int(data[-31:-29])
            if pub == WARM:
                return
            seq = int(data[-29:-19])
            sent = int(data[-19:])
            self.latencies.append(now - sent)
            self.latency_sum += now - sent
            if self.arrivals is not None and self.arrival is not None:
                self.arrivals.append(self.arrival[0] - sent)
            self.sends.append(sent)
            self.counts[pub] += 1
            self.received += 1
            expected = self.next[pub]
            if seq != expected:
                if seq > expected:
                    self.gaps += seq - expected
                else:
                    self.dups += 1
            self.next[pub] = seq + 1
            self.last = now
        elif not self.ready and PROBE in data:
            self.ready = True
            self.on_ready()

    def on_end(self, status: str, message: str) -> None:
        self.ended = True
        if status != "OK":
            self.error = f"{status}: {message}"


async def _consume(call: Any, stats: StreamStats, eof: Any, rpc_error: Any) -> None:
    read = call.read
    on_message = stats.on_message
    try:
        while True:
            data = await read()
            if data is eof:
                break
            on_message(data)
    except rpc_error as error:
        stats.error = f"{error.code().name}: {error.details()}"
    except asyncio.CancelledError:
        pass
    finally:
        stats.ended = True


def subscriber_process(conn: Connection, cfg: dict[str, Any]) -> None:
    import gc

    gc.disable()  # a client's few objects make no cycles worth the collector's time
    if cfg["client"] == "raw":
        _subscriber_raw(conn, cfg)
    else:
        asyncio.run(_subscriber_aio(conn, cfg))


def _summary(
    streams: list[StreamStats],
    expected: list[int],
    latencies: array[int],
    sends: array[int],
    arrivals: array[int] | None = None,
) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    lost = lost_streams = 0
    for s in streams:
        missing = sum(max(0, e - c) for e, c in zip(expected, s.counts, strict=False))
        lost += missing
        lost_streams += missing > 0
        if s.error is not None:
            errors[s.error] += 1
        elif s.ended and missing:
            errors["stream ended (OK) early"] += 1
    return {
        "received": sum(s.received for s in streams),
        "lost": lost,
        "lost_streams": lost_streams,
        "gaps": sum(s.gaps for s in streams),
        "dups": sum(s.dups for s in streams),
        "errors": dict(errors),
        "last_ns": max(s.last for s in streams),
        "stream_means_ms": [s.latency_sum / s.received / 1e6 for s in streams if s.received],
        "latencies": latencies.tobytes(),
        "sends": sends.tobytes(),
        "arrivals": arrivals.tobytes() if arrivals is not None else b"",
    }


class _Drain:
    """When to stop waiting for stragglers: all in, stalled, or out of time."""

    def __init__(
        self, streams: list[StreamStats], expected: list[int], timeout: float, stall: float
    ):
        self.streams = streams
        self.expected_total = sum(expected)
        self.deadline = time.monotonic() + timeout
        self.stall = stall
        self.last_total = -1
        self.last_progress = time.monotonic()

    def done(self) -> bool:
        now = time.monotonic()
        if now >= self.deadline:
            return True
        if all(s.ended or s.received >= self.expected_total for s in self.streams):
            return True
        total = sum(s.received for s in self.streams)
        if total != self.last_total:
            self.last_total, self.last_progress = total, now
        return now - self.last_progress > self.stall


# Linux: a received segment's kernel timestamp (CLOCK_REALTIME) as ancillary
# data of recvmsg. For TCP it is the newest segment's of the bytes returned, so
# lines that arrived earlier in the same read are given a later arrival than
# their own: the figure errs high, never low.
SO_TIMESTAMPNS = 35
TIMESTAMP_SPACE = socket.CMSG_SPACE(16)


def _realtime_minus_monotonic() -> int:
    """The offset between the two clocks, from the closest of a few readings."""
    best: tuple[int, int] | None = None
    for _ in range(20):
        m0 = time.monotonic_ns()
        r = time.time_ns()
        m1 = time.monotonic_ns()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, r - (m0 + m1) // 2)
    assert best is not None
    return best[1]


def _arrival_ns(ancillary: list[tuple[int, int, bytes]], realtime_offset: int) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return int(sec * 1_000_000_000 + nsec - realtime_offset)
    return time.monotonic_ns()  # no timestamp: as late as the hand-over


def _subscriber_raw(conn: Connection, cfg: dict[str, Any]) -> None:
    """Subscribers on raw HTTP/2 connections, driven by one epoll loop.

    No asyncio: per readable socket, one ``recv`` and the protocol's
    ``data_received``, which hands each response to ``StreamStats.on_message``.
    """
    import select
    import socket

    import grpc

    from bench.h2client import GrpcStreamReader

    n = cfg["n"]
    address = cfg["address"]
    with grpc.insecure_channel(address) as channel:
        login = channel.unary_unary(LOGIN)
        futures = [
            login.future(_login_request(f"sub{cfg['index']}-{i}"), timeout=30) for i in range(n)
        ]
        tokens = [_token(f.result()) for f in futures]
    conn.send(("logged_in",))
    assert conn.recv()[0] == "open"

    latencies: array[int] = array("q")
    sends: array[int] = array("q")
    arrivals: array[int] = array("q")
    arrival = [0]  # kernel receive time of the bytes being handed over, monotonic ns
    realtime_offset = _realtime_minus_monotonic()
    ready = [0]

    def on_ready() -> None:
        ready[0] += 1

    streams = [StreamStats(latencies, sends, on_ready, arrivals, arrival) for _ in range(n)]
    host, port = address.rsplit(":", 1)
    poller = select.epoll()
    readers: dict[int, tuple[socket.socket, GrpcStreamReader]] = {}
    for token, stats in zip(tokens, streams, strict=True):
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
        reader = GrpcStreamReader(
            sock, address, STREAM, [(TOKEN_HEADER, token)], stats.on_message, stats.on_end
        )
        readers[sock.fileno()] = (sock, reader)
        poller.register(sock.fileno(), select.EPOLLIN)
    pipe = conn.fileno()
    poller.register(pipe, select.EPOLLIN)

    drain: _Drain | None = None
    expected: list[int] = []
    sent_ready = False
    try:
        while True:
            for fd, _ in poller.poll(0.05):
                if fd == pipe:
                    _, expected, timeout, stall = conn.recv()
                    drain = _Drain(streams, expected, timeout, stall)
                    continue
                sock, reader = readers[fd]
                try:
                    # 256 KiB would be an mmap per recv
                    data, ancillary, _, _ = sock.recvmsg(65536, TIMESTAMP_SPACE)
                except OSError as error:
                    data, ancillary = b"", []
                    reader.connection_lost(error)
                if data:
                    arrival[0] = _arrival_ns(ancillary, realtime_offset)
                    reader.data_received(data)
                else:
                    reader.connection_lost(None)
                    poller.unregister(fd)
            if not sent_ready and ready[0] >= n:
                conn.send(("ready",))
                sent_ready = True
            if drain is not None and drain.done():
                break
        conn.send(("result", _summary(streams, expected, latencies, sends, arrivals)))
    finally:
        for sock, _ in readers.values():
            sock.close()
        poller.close()


async def _subscriber_aio(conn: Connection, cfg: dict[str, Any]) -> None:
    """Subscribers as grpc.aio channels and calls, one channel each."""
    import grpc

    n = cfg["n"]
    channels = [grpc.aio.insecure_channel(cfg["address"], options=CLIENT_OPTIONS) for _ in range(n)]
    calls: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.gather(*(_channel_ready_timeout(ch, 30) for ch in channels))
        responses = await asyncio.gather(
            *(
                ch.unary_unary(LOGIN)(_login_request(f"sub{cfg['index']}-{i}"), timeout=30)
                for i, ch in enumerate(channels)
            )
        )
        tokens = [_token(r) for r in responses]
        conn.send(("logged_in",))
        assert (await _recv(conn))[0] == "open"

        latencies: array[int] = array("q")
        sends: array[int] = array("q")
        all_ready = asyncio.Event()
        ready_count = 0

        def on_ready() -> None:
            nonlocal ready_count
            ready_count += 1
            if ready_count == n:
                all_ready.set()

        streams = [StreamStats(latencies, sends, on_ready) for _ in range(n)]
        for ch, token, stats in zip(channels, tokens, streams, strict=True):
            call = ch.stream_stream(STREAM)(metadata=((TOKEN_HEADER, token),))
            calls.append(call)
            tasks.append(
                asyncio.create_task(_consume(call, stats, grpc.aio.EOF, grpc.aio.AioRpcError))
            )
        await all_ready.wait()
        conn.send(("ready",))

        _, expected, timeout, stall = await _recv(conn)
        drain = _Drain(streams, expected, timeout, stall)
        while not drain.done():  # noqa: ASYNC110 - polls counters, nothing to wait on
            await asyncio.sleep(0.05)
        conn.send(("result", _summary(streams, expected, latencies, sends)))
    finally:
        for call in calls:
            call.cancel()
        await cancel_and_wait(tasks)
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)


# -- publisher processes ---------------------------------------------------


def publisher_process(conn: Connection, cfg: dict[str, Any]) -> None:
    asyncio.run(_publisher_main(conn, cfg))


class Echo:
    """A publisher's view of its own stream: ready, and how far its lines came back."""

    def __init__(self, index: int) -> None:
        self.tag = b"%02d" % index
        self.ready = asyncio.Event()
        self.count = 0  # own lines received back
        self.wake: asyncio.Future[None] | None = None


async def _drain_own(call: Any, echo: Echo, eof: Any) -> None:
    # A publisher's stream receives every line too, its own included; it must
    # be read or the hub cuts it as a slow consumer. Its own lines coming back
    # pace the fast publisher.
    tag = echo.tag
    with contextlib.suppress(Exception):
        while True:
            data = await call.read()
            if data is eof:
                return
            if data[-33:-31] == TAIL:
                if data[-31:-29] == tag:
                    echo.count = int(data[-29:-19]) + 1
                    wake = echo.wake
                    if wake is not None and not wake.done():
                        wake.set_result(None)
            elif not echo.ready.is_set() and PROBE in data:
                echo.ready.set()


async def _publisher_main(conn: Connection, cfg: dict[str, Any]) -> None:
    import grpc

    index = cfg["index"]
    window = cfg["window"]
    loop = asyncio.get_running_loop()
    channel = grpc.aio.insecure_channel(cfg["address"], options=CLIENT_OPTIONS)
    try:
        await _channel_ready_timeout(channel, 30)
        token = _token(await channel.unary_unary(LOGIN)(_login_request(f"pub{index}"), timeout=30))
        conn.send(("logged_in",))
        assert (await _recv(conn))[0] == "open"
        call = channel.stream_stream(STREAM)(metadata=((TOKEN_HEADER, token),))
        echo = Echo(index)
        drain = asyncio.create_task(_drain_own(call, echo, grpc.aio.EOF))
        await echo.ready.wait()
        conn.send(("ready",))

        _, warm_ns, start_ns, duration, rate, offset_ns = await _recv(conn)
        mono = time.monotonic_ns
        end_ns = start_ns + int(duration * 1e9)
        # Warm-up lines (publisher WARM, not counted) until the measured start.
        warm_period = 1e9 / (rate if rate > 0 else 200)
        warm = 0
        while True:
            due = warm_ns + offset_ns + int(warm * warm_period)
            if due >= start_ns:
                break
            delay = due - mono()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            await call.write(line_request(WARM, warm, mono()))
            warm += 1
        await asyncio.sleep(max(0.0, (start_ns - mono()) / 1e9))
        write = call.write
        sent = 0
        first = last = 0
        error = None
        try:
            if rate > 0:
                period = 1e9 / rate
                begin = start_ns + offset_ns
                while True:
                    due = begin + int(sent * period)
                    if due >= end_ns:
                        break
                    delay = due - mono()
                    if delay > 0:
                        await asyncio.sleep(delay / 1e9)
                    now = mono()
                    await write(line_request(index, sent, now))
                    sent += 1
                    if sent == 1:
                        first = now
                    last = now
            else:
                now = first = mono()
                while now < end_ns:
                    if window and sent - echo.count >= window:
                        # Closed loop: no more than `window` lines in flight.
                        echo.wake = loop.create_future()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(echo.wake, (end_ns - now) / 1e9)
                        echo.wake = None
                        now = mono()
                        continue
                    await write(line_request(index, sent, now))
                    sent += 1
                    last = now
                    now = mono()
        except Exception as exc:  # the publisher's stream was cut
            error = f"{type(exc).__name__}: {exc}"
        conn.send(("done", sent, first, last, mono(), error))
        await _recv(conn)  # "stop": keep reading our own stream until then
        call.cancel()
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
    finally:
        await channel.close()


# -- the server under test -------------------------------------------------


class Server(HubProcess):
    """The hub for one chat scenario: rate limit off, the queue bound passed on;
    with ``metrics``, Prometheus metrics on, scraped every ``SCRAPE_EVERY`` s."""

    def __init__(
        self, args: argparse.Namespace, log_dir: Path, label: str, *, metrics: bool = False
    ) -> None:
        super().__init__(log_dir / f"server-{label}{'-metrics' if metrics else ''}.log")
        self.args = args
        self.metrics_url: str | None = None
        self._scraping = threading.Event()
        if metrics:
            # A port picked here: the hub does not say which one it bound for port 0.
            self.metrics_url = f"http://127.0.0.1:{free_port()}/metrics"

    def start(self) -> None:  # type: ignore[override]
        metrics = (
            []
            if self.metrics_url is None
            else [
                "--metrics-address",
                self.metrics_url.removeprefix("http://").removesuffix("/metrics"),
            ]
        )
        super().start(
            self.args.server_module,
            [
                "-s", "-p", PASSWORD, "-h", "127.0.0.1:0", "--device-address", "none",
                "--rate", "0", "--queue", str(self.args.queue), *metrics,
                *shut_doors(self.args.server_module, self.args.server_cwd), *self.args.server_arg,
            ],
            env=server_env(self.args.server_env),
            cwd=self.args.server_cwd,
        )  # fmt: skip
        if self.metrics_url is not None:
            threading.Thread(target=self._scrape_forever, daemon=True).start()

    def _scrape_forever(self) -> None:
        # As Prometheus would, at a brisk interval: the cost of being scraped
        # (formatting every series, on the hub's HTTP thread) is part of the cost.
        while not self._scraping.wait(SCRAPE_EVERY):
            with contextlib.suppress(OSError):
                self.scrape()

    def scrape(self) -> dict[str, float]:
        """Every sample of the hub's /metrics, by name and labels as one key."""
        from prometheus_client.parser import text_string_to_metric_families

        assert self.metrics_url is not None
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return {
            sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items())): (
                sample.value
            )
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def stop(self) -> None:
        self._scraping.set()
        super().stop()


# Seconds between scrapes of a hub with metrics on (Prometheus' default is 15-60).
SCRAPE_EVERY = 5.0


# -- scenarios and targets -------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    subscribers: int
    rate: float  # messages a second in total; 0: as fast as possible

    @property
    def fast(self) -> bool:
        return self.rate <= 0

    @property
    def label(self) -> str:
        return f"{self.subscribers}@{'fast' if self.fast else f'{self.rate:g}'}"


@dataclass(frozen=True)
class Target:
    p99_ms: float | None = None
    lost: int | None = 0
    delivered_per_s: float | None = None


# The figures to report, on the 2-core reference machine.
TARGETS: dict[str, Target] = {
    "100@100": Target(p99_ms=10),
    "500@20": Target(p99_ms=25),
    "100@fast": Target(delivered_per_s=40_000),
}
DEFAULT_SCENARIOS = [Scenario(10, 100), Scenario(100, 100), Scenario(500, 20), Scenario(100, 0)]


def parse_scenario(text: str) -> Scenario:
    subs, _, rate = text.partition("@")
    return Scenario(int(subs), 0.0 if rate in ("fast", "0") else float(rate or 100))


def scenarios_from(args: argparse.Namespace) -> list[Scenario]:
    if args.scenario:
        return [parse_scenario(s) for item in args.scenario for s in item.split(",") if s]
    if args.subscribers is None and args.rate is None and not args.fast:
        return list(DEFAULT_SCENARIOS)
    subs = [int(s) for s in (args.subscribers or "").split(",") if s]
    out = []
    if args.rate is not None or not args.fast:
        out += [Scenario(n, args.rate or 100.0) for n in subs or [10, 100, 500]]
    if args.fast:
        out += [Scenario(n, 0) for n in subs or [100]]
    return out


# -- running one scenario --------------------------------------------------


def probe_until_ready(address: str, workers: list[Worker], timeout: float) -> None:
    """Log in probe users until every stream has seen one: all streams are open."""
    import grpc

    deadline = time.monotonic() + timeout
    pending = {w.conn: w for w in workers}
    with grpc.insecure_channel(address) as channel:
        login = channel.unary_unary(LOGIN)
        logout = channel.unary_unary(LOGOUT)
        probe = 0
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} workers never saw a probe login")
            token = _token(login(_login_request(f"{PROBE.decode()}-{probe}"), timeout=10))
            logout(_logout_request(token), timeout=10)  # no session left to expire later
            probe += 1
            for ready in wait(list(pending), 0.3):
                conn = cast(Connection, ready)
                msg = conn.recv()
                if msg[0] != "ready":
                    raise RuntimeError(f"expected 'ready', got {msg[0]!r}")
                del pending[conn]


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class _Rig:
    """One run's client processes and the profiler, if one runs."""

    subs: list[Worker] = field(default_factory=list)
    pubs: list[Worker] = field(default_factory=list)
    spy: subprocess.Popen[bytes] | None = None

    @property
    def workers(self) -> list[Worker]:
        return self.subs + self.pubs

    def end(self) -> None:
        end_workers(self.workers)
        if self.spy is not None and self.spy.poll() is None:
            self.spy.kill()


@dataclass(frozen=True)
class _Window:
    """What the measured window took: seconds of wall clock and of CPU."""

    wall: float
    server_cpu: float
    sub_cpu: float
    pub_cpu: float
    other_cpu: float


def run_scenario(
    sc: Scenario, args: argparse.Namespace, log_dir: Path, *, metrics: bool = False
) -> dict[str, Any]:
    background = wait_quiet(args.wait_quiet, args.quiet_pct) if args.wait_quiet > 0 else None
    ctx = mp.get_context("spawn")
    server = Server(args, log_dir, sc.label.replace("@", "_at_"), metrics=metrics)
    scraped: dict[str, float] = {}
    server.start()
    rig = _Rig()
    try:
        _start_clients(rig, ctx, server, sc, args)
        open_streams(rig.workers, server.address, args)
        start_ns = start_publishing(rig.pubs, sc, args)
        done, results, window = _measure(rig, server, sc, args)
        vm_hwm = server.vm_hwm_mb()
        if metrics:
            scraped = server.scrape()
        for w in rig.pubs:
            w.conn.send(("stop",))
        if rig.spy is not None:
            rig.spy.wait(args.duration + 30)
    finally:
        rig.end()
        server.stop()
    return _figures(
        sc, args, rig, server, start_ns, done, results, window, background, vm_hwm, metrics, scraped
    )


def _start_clients(
    rig: _Rig, ctx: Any, server: Server, sc: Scenario, args: argparse.Namespace
) -> None:
    """The subscribers, spread over processes, and the publishers, one a process."""
    cfg = {"address": server.address, "client": args.client}
    rig.subs += start_spread(
        ctx, subscriber_process, "subscriber", sc.subscribers, args.sub_procs, cfg
    )
    for i in range(1 if sc.fast else args.publishers):
        parent, child = ctx.Pipe()
        pub_cfg = {"index": i, "address": server.address, "window": args.fast_window}
        p = ctx.Process(target=publisher_process, args=(child, pub_cfg), daemon=True)
        rig.pubs.append(Worker(p, parent, "publisher"))
    for w in rig.pubs:
        w.start()


def open_streams(workers: list[Worker], address: str, args: argparse.Namespace) -> None:
    """Log everyone in first, then open the streams: logins are broadcast,
    and this way no stream sees the setup's login storm. Probe logins go to
    ``address``."""
    expect(workers, "logged_in", args.setup_timeout)
    for w in workers:
        w.conn.send(("open",))
    probe_until_ready(address, workers, args.setup_timeout)


def start_publishing(pubs: list[Worker], sc: Scenario, args: argparse.Namespace) -> int:
    """Tell the publishers when to warm up and when to start counting; return
    at the start of the count (its monotonic_ns)."""
    time.sleep(0.2)  # let the probes' fan-out settle
    warm_ns = time.monotonic_ns() + 100_000_000
    start_ns = warm_ns + int(args.warmup * 1e9)
    rate_each = sc.rate / len(pubs)
    for i, w in enumerate(pubs):
        offset = int(i * 1e9 / sc.rate) if not sc.fast else 0
        w.conn.send(("go", warm_ns, start_ns, args.duration, rate_each, offset))
    time.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
    return start_ns


def _measure(
    rig: _Rig, server: Server, sc: Scenario, args: argparse.Namespace
) -> tuple[list[Any], list[dict[str, Any]], _Window]:
    """The measured window: publishing, then the subscribers' drain. The
    publishers' "done" messages, the subscribers' results, and the window."""
    subs, pubs = rig.subs, rig.pubs
    cpu0 = server.cpu()
    sub_cpu0, pub_cpu0 = workers_cpu(subs), workers_cpu(pubs)
    busy0, own0 = machine_busy(), _own_cpu()
    server.window(True)
    wall0 = time.monotonic()
    if args.py_spy:
        rig.spy = start_py_spy(
            args,
            server.proc.pid,  # type: ignore[union-attr]
            sc.label.replace("@", "_at_"),
            args.duration,
        )
    done = expect(pubs, "done", args.duration + 60)
    sent = [d[1] for d in done]
    drain_timeout = max(args.drain_timeout, 0.0)
    for w in subs:
        w.conn.send(("expect", sent, drain_timeout, args.stall_timeout))
    results = [m[1] for m in expect(subs, "result", drain_timeout + 60)]
    wall = time.monotonic() - wall0
    server_cpu = server.cpu() - cpu0
    sub_cpu, pub_cpu = workers_cpu(subs) - sub_cpu0, workers_cpu(pubs) - pub_cpu0
    other_cpu = machine_busy() - busy0 - (_own_cpu() - own0) - server_cpu - sub_cpu - pub_cpu
    server.window(False)
    return done, results, _Window(wall, server_cpu, sub_cpu, pub_cpu, other_cpu)


def _figures(
    sc: Scenario,
    args: argparse.Namespace,
    rig: _Rig,
    server: Server,
    start_ns: int,
    done: list[Any],
    results: list[dict[str, Any]],
    window: _Window,
    background: float | None,
    vm_hwm: float | None,
    metrics: bool,
    scraped: dict[str, float],
) -> dict[str, Any]:
    """Every figure of the run, as the JSON has them."""
    import numpy as np

    npubs, subs = len(rig.pubs), rig.subs
    wall, server_cpu, sub_cpu = window.wall, window.server_cpu, window.sub_cpu
    pub_cpu, other_cpu = window.pub_cpu, window.other_cpu
    sent = [d[1] for d in done]
    first_send = min((d[2] for d in done if d[1]), default=start_ns)
    last_send = max((d[3] for d in done), default=start_ns)
    pub_end = max(d[4] for d in done)
    pub_errors = [d[5] for d in done if d[5]]

    total_sent = sum(sent)
    received = sum(r["received"] for r in results)
    last_recv = max(r["last_ns"] for r in results)
    lat = np.concatenate([np.frombuffer(r["latencies"], dtype=np.int64) for r in results]) / 1e6
    arrived = np.concatenate([np.frombuffer(r["arrivals"], dtype=np.int64) for r in results]) / 1e6
    sends = np.concatenate([np.frombuffer(r["sends"], dtype=np.int64) for r in results])
    # Latency by the second in which lines were sent: shows a warm-up or a backlog.
    timeline = []
    if lat.size:
        second = (sends - start_ns) // 1_000_000_000
        for t in range(int(second.max()) + 1):
            chunk = lat[second == t]
            if chunk.size:
                timeline.append(
                    {
                        "second": t,
                        "lines": int(chunk.size),
                        "p50": round(float(np.percentile(chunk, 50)), 2),
                        "p99": round(float(np.percentile(chunk, 99)), 2),
                        "max": round(float(chunk.max()), 2),
                    }
                )
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    means = np.array([m for r in results for m in r["stream_means_ms"]])
    pub_window = (pub_end - start_ns) / 1e9
    deliver_window = (last_recv - first_send) / 1e9 if received else 0.0

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 3) if lat.size else None

    res: dict[str, Any] = {
        "scenario": sc.label,
        "subscribers": sc.subscribers,
        "publishers": npubs,
        "subscriber_processes": len(subs),
        "rate_target": None if sc.fast else sc.rate,
        "duration_s": args.duration,
        "sent": total_sent,
        "rate_achieved": round(total_sent / pub_window, 1) if pub_window > 0 else None,
        "send_span_s": round((last_send - first_send) / 1e9, 3),
        "expected_deliveries": total_sent * sc.subscribers,
        "delivered": received,
        "delivered_per_s": round(received / deliver_window, 1) if deliver_window > 0 else 0.0,
        "deliver_span_s": round(deliver_window, 3),
        "lost": sum(r["lost"] for r in results),
        "streams_with_loss": sum(r["lost_streams"] for r in results),
        "disconnects": sum(n for e, n in errors.items()),
        "disconnect_reasons": dict(errors),
        "publisher_errors": pub_errors,
        "gaps": sum(r["gaps"] for r in results),
        "duplicates": sum(r["dups"] for r in results),
        "latency_ms": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "p999": pct(99.9),
            "max": round(float(lat.max()), 3) if lat.size else None,
        },
        # The same lines' latency to the kernel's receipt of their bytes at
        # the subscriber (raw client only): what the server and the network
        # took, without the subscriber process's own wait for a core.
        "arrival_latency_ms": {
            "p50": round(float(np.percentile(arrived, 50)), 3),
            "p99": round(float(np.percentile(arrived, 99)), 3),
            "max": round(float(arrived.max()), 3),
        }
        if arrived.size
        else None,
        "latency_timeline": timeline,
        # Each stream's mean latency, as percentiles over the streams: a wide
        # spread is the fan-out's order (the last stream served waits longest).
        "stream_mean_latency_ms": {
            q: round(float(np.percentile(means, int(q[1:]))), 2) if means.size else None
            for q in ("p0", "p10", "p50", "p90", "p100")
        },
        "window_s": round(wall, 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_pct": round(100 * server_cpu / wall, 1),
        "subscriber_cpu_s": round(sub_cpu, 3),
        "other_cpu_s": round(max(0.0, other_cpu), 2),
        "background_pct_before": None if background is None else round(background, 1),
        "server_us_per_delivery": round(1e6 * server_cpu / received, 1) if received else None,
        "publisher_cpu_s": round(pub_cpu, 3),
        "server_rss_peak_mb": round(server.window_peak_mb, 1),
        "server_vmhwm_mb": round(vm_hwm, 1) if vm_hwm is not None else None,
        "metrics": metrics,
        # What the hub counted, scraped after the drain: lines in and
        # deliveries to the chat room (every stream, the transcript's included).
        "scraped": {
            key: scraped[key]
            for key in ("hub_chat_lines_total", "hub_events_delivered_total,channel=chat")
            if key in scraped
        },
    }
    res["checks"] = check(res)
    res["pass"] = all(res["checks"].values()) if res["checks"] else None
    return res


def check(res: dict[str, Any]) -> dict[str, bool]:
    target = TARGETS.get(res["scenario"])
    if target is None:
        return {}
    out = {}
    if target.p99_ms is not None:
        p99 = res["latency_ms"]["p99"]
        out["p99_ms"] = p99 is not None and p99 <= target.p99_ms
    if target.lost is not None:
        out["lost"] = res["lost"] <= target.lost and res["sent"] > 0
    if target.delivered_per_s is not None:
        out["delivered_per_s"] = res["delivered_per_s"] >= target.delivered_per_s
    return out


# -- output ----------------------------------------------------------------


def describe(res: dict[str, Any]) -> str:
    target = TARGETS.get(res["scenario"])
    lat = res["latency_ms"]
    rate = "fast" if res["rate_target"] is None else f"{res['rate_target']:g}/s"
    lines = [
        f"== {res['scenario']}{' with metrics' if res.get('metrics') else ''}: "
        f"{res['subscribers']} subscribers "
        f"({res['subscriber_processes']} procs), {res['publishers']} publisher(s), rate {rate}",
        f"   publish rate achieved  {res['rate_achieved']}/s  ({res['sent']} sent)",
        f"   delivered              {res['delivered_per_s']:.0f} msg/s"
        f"  ({res['delivered']} of {res['expected_deliveries']})"
        + mark(res, "delivered_per_s")
        + (f" (>= {target.delivered_per_s:g})" if target and target.delivered_per_s else ""),
        f"   lost                   {res['lost']} in {res['streams_with_loss']} streams"
        + mark(res, "lost")
        + f"; disconnects {res['disconnects']}"
        + (f" {res['disconnect_reasons']}" if res["disconnect_reasons"] else "")
        + (f"; gaps {res['gaps']}" if res["gaps"] else "")
        + (f"; dups {res['duplicates']}" if res["duplicates"] else ""),
        f"   latency ms             p50 {ms(lat['p50'], 2)}  p99 {ms(lat['p99'], 2)}"
        + mark(res, "p99_ms")
        + (f" (<= {target.p99_ms:g})" if target and target.p99_ms else "")
        + f"  p99.9 {ms(lat['p999'], 2)}  max {ms(lat['max'], 2)}",
        *(
            [
                f"   at socket arrival      p50 {ms(arr['p50'], 2)}  p99 {ms(arr['p99'], 2)}"
                f"  max {ms(arr['max'], 2)}  (kernel receive time: no target, see bench/README.md)"
            ]
            if (arr := res["arrival_latency_ms"])
            else []
        ),
        f"   server CPU             {res['server_cpu_s']:.2f} s over {res['window_s']:.2f} s"
        f" ({res['server_cpu_pct']:.0f}% of a core); clients: subscribers "
        f"{res['subscriber_cpu_s']:.2f} s, publishers {res['publisher_cpu_s']:.2f} s, "
        f"other processes {res['other_cpu_s']:.2f} s",
        f"   server per delivery    {res['server_us_per_delivery']} us of CPU",
        f"   server peak RSS        {res['server_rss_peak_mb']:.1f} MB"
        f" (VmHWM {res['server_vmhwm_mb']} MB)",
    ]
    if res.get("scraped"):
        counted = ", ".join(f"{k} {v:.0f}" for k, v in res["scraped"].items())
        lines.append(f"   hub's own metrics      {counted}")
    if res["publisher_errors"]:
        lines.append(f"   publisher errors       {res['publisher_errors']}")
    if res["pass"] is not None:
        lines.append(f"   => {'PASS' if res['pass'] else 'FAIL'}")
    return "\n".join(lines)


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "scenario",
        "subs",
        "rate",
        "achieved/s",
        "delivered/s",
        "lost",
        "disc",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv CPU s",
        "srv RSS MB",
        "clients CPU s",
        "others CPU s",
        "verdict",
    )
    rows = [head]
    for r in results:
        lat = r["latency_ms"]
        rows.append(
            (
                r["scenario"] + (" +metrics" if r.get("metrics") else ""),
                str(r["subscribers"]),
                "fast" if r["rate_target"] is None else f"{r['rate_target']:g}",
                f"{r['rate_achieved']}",
                f"{r['delivered_per_s']:.0f}" + mark(r, "delivered_per_s"),
                f"{r['lost']}" + mark(r, "lost"),
                str(r["disconnects"]),
                ms(lat["p50"], 2),
                ms(lat["p99"], 2) + mark(r, "p99_ms"),
                ms(lat["max"], 2),
                f"{r['server_cpu_s']:.2f} ({r['server_cpu_pct']:.0f}%)",
                f"{r['server_rss_peak_mb']:.0f}",
                f"{r['subscriber_cpu_s'] + r['publisher_cpu_s']:.2f}",
                f"{r['other_cpu_s']:.2f}",
                "-" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL"),
            )
        )
    return columns(rows)


def metrics_cost(results: list[dict[str, Any]]) -> str:
    """Per scenario: mean delivered msg/s and server CPU per delivery, metrics off and on."""
    rows = [("scenario", "runs", "delivered/s off", "on", "change", "us/delivery off", "on")]
    for label in dict.fromkeys(r["scenario"] for r in results):
        off = [r for r in results if r["scenario"] == label and not r["metrics"]]
        on = [r for r in results if r["scenario"] == label and r["metrics"]]
        if not off or not on:
            continue

        def mean(runs: list[dict[str, Any]], key: str) -> float:
            return sum(r[key] or 0.0 for r in runs) / len(runs)

        d_off, d_on = mean(off, "delivered_per_s"), mean(on, "delivered_per_s")
        rows.append(
            (
                label,
                f"{len(off)}+{len(on)}",
                f"{d_off:.0f}",
                f"{d_on:.0f}",
                f"{100 * (d_on - d_off) / d_off:+.1f}%" if d_off else "-",
                f"{mean(off, 'server_us_per_delivery'):.1f}",
                f"{mean(on, 'server_us_per_delivery'):.1f}",
            )
        )
    return "metrics cost (means over the runs):\n" + columns(rows)


# -- command line ----------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.chat",
        description="Chat fan-out benchmark against a hub server subprocess. "
        "Default: 10@100, 100@100, 500@20 and 100@fast (subscribers@msg/s).",
    )
    p.add_argument("--subscribers", help="comma list of subscriber counts (fixed-rate runs)")
    p.add_argument("--rate", type=float, help="publish rate in msg/s for --subscribers")
    p.add_argument("--fast", action="store_true", help="fast-publisher runs (default 100 subs)")
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        help="SUBS@RATE or SUBS@fast, repeatable or comma list; overrides the above",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    p.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of uncounted lines before the measured ones (fast: at 200/s)",
    )
    p.add_argument(
        "--publishers", type=int, default=1, help="fixed-rate publishers sharing the rate"
    )
    p.add_argument("--sub-procs", type=int, default=2, help="subscriber processes")
    p.add_argument(
        "--client",
        choices=["raw", "aio"],
        default="raw",
        help="subscribers' client: raw = minimal HTTP/2 gRPC reader (cheap, default); "
        "aio = a grpc.aio channel and call per subscriber",
    )
    p.add_argument(
        "--fast-window",
        type=int,
        default=256,
        help="fast publisher: most lines in flight (sent, not yet back on its own "
        "stream); 0 = open loop, write as fast as the transport takes them",
    )
    p.add_argument("--queue", type=int, default=1024, help="server --queue (per-stream bound)")
    p.add_argument("--drain-timeout", type=float, default=15.0, help="max wait for stragglers")
    p.add_argument(
        "--stall-timeout", type=float, default=3.0, help="stop draining after no progress this long"
    )
    p.add_argument("--setup-timeout", type=float, default=120.0)
    p.add_argument(
        "--metrics",
        choices=["off", "on", "both"],
        default="off",
        help="the hub's Prometheus metrics (scraped every 5 s): off, on, or both, "
        "interleaved run by run, with the cost summed up at the end",
    )
    add_common_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scenarios = scenarios_from(args)
    log_dir = begin(args, "chat")
    print(
        f"bench.chat: {len(scenarios)} scenario(s), {args.duration:g} s each, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.metrics]
    for sc in scenarios:
        for _ in range(args.repeat):
            for metrics in modes:
                run = functools.partial(run_scenario, sc, args, log_dir, metrics=metrics)
                res = attempt(sc.label, run, results)
                if res is None:
                    continue
                print(describe(res), flush=True)
                results.append(res)
    ran = [r for r in results if "error" not in r]
    if ran:
        print("\n" + table(ran))
    if len(modes) == 2 and ran:
        print("\n" + metrics_cost(ran))
    finish(args, results, log_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
