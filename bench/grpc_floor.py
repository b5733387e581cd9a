"""What grpcio itself costs per fanned-out message: ``python -m bench.grpc_floor``.

No hub code runs here. The server is grpcio alone: one ``chat.Chat/Stream``
method whose handler yields (or ``context.write``s) ready-made bytes from a
per-stream queue, and a publisher task in the same process that puts one line
into every queue, at a fixed rate or as fast as the streams drain. The
subscribers are ``bench.chat``'s raw HTTP/2 readers, on the same kind of line
(publisher, sequence, send time). So the figures are a floor for any Python
server built on grpcio: what the hub's own chat benchmark measures, minus the
hub (see bench/README.md, "The grpcio floor").

    python -m bench.grpc_floor                      # the default suite
    python -m bench.grpc_floor --scenario 500@20 --procs 2
    python -m bench.grpc_floor --scenario 100@max --handler write --loop uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import select
import socket
import sys
import threading
import time
from array import array
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bench.common import free_port, wait_quiet

STREAM = "/chat.Chat/Stream"
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class Config:
    subscribers: int
    rate: float | None  # lines per second per server process; None: as fast as they drain
    procs: int
    handler: str  # "yield" | "write"
    loop: str  # "asyncio" | "uvloop"
    api: str  # "aio" | "sync"
    window: int  # fast mode: lines a stream may have queued before the publisher waits
    warmup: float
    duration: float
    sub_procs: int

    @property
    def label(self) -> str:
        rate = "max" if self.rate is None else f"{self.rate:g}"
        how = "sync/threads" if self.api == "sync" else f"aio/{self.handler}/{self.loop}"
        return f"{self.subscribers}@{rate} x{self.procs} {how}"


def line(server: int, seq: int) -> bytes:
    """A serialized ``StreamResponse`` shaped like a chat line of ``bench.chat``."""
    return b"\x12\x1f" + b"%02d%010d%019d" % (server, seq, time.monotonic_ns())


# -- the server: grpcio and nothing else ---------------------------------------


def serve(index: int, port: int, cfg: Config, conn: Connection) -> None:
    """One server process: a bare grpc.aio (or sync) server and its publisher."""
    if cfg.api == "sync":
        _serve_sync(index, port, cfg, conn)
        return
    if cfg.loop == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(_serve_aio(index, port, cfg, conn))


async def _serve_aio(index: int, port: int, cfg: Config, conn: Connection) -> None:
    import grpc

    streams: list[deque[bytes]] = []
    wakeups: list[asyncio.Event] = []
    drained = asyncio.Event()  # fast mode: some stream went below half its window

    async def lines() -> Any:
        """A new stream's lines: its queue is registered with the publisher."""
        queue: deque[bytes] = deque()
        wakeup = asyncio.Event()
        streams.append(queue)
        wakeups.append(wakeup)
        while True:
            while not queue:
                wakeup.clear()
                await wakeup.wait()
            yield queue.popleft()
            if len(queue) == cfg.window // 2:
                drained.set()

    async def stream_yield(requests: Any, context: Any) -> Any:
        async for data in lines():
            yield data

    async def stream_write(requests: Any, context: Any) -> None:
        async for data in lines():
            await context.write(data)

    handler = stream_write if cfg.handler == "write" else stream_yield
    generic = grpc.method_handlers_generic_handler(
        "chat.Chat", {"Stream": grpc.stream_stream_rpc_method_handler(handler)}
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((generic,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    conn.send("listening")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)  # "go": every subscriber is connected
    seq = 0
    start = time.monotonic()
    end = start + cfg.warmup + cfg.duration
    counted_from = 0
    while (now := time.monotonic()) < end:
        if not counted_from and now >= start + cfg.warmup:
            counted_from = seq + 1
        seq += 1
        data = line(index, seq)
        for queue, wakeup in zip(streams, wakeups, strict=True):
            queue.append(data)
            wakeup.set()
        if cfg.rate is not None:
            await asyncio.sleep(max(0.0, start + seq / cfg.rate - time.monotonic()))
        elif max(map(len, streams)) >= cfg.window:
            drained.clear()
            await drained.wait()
        else:
            await asyncio.sleep(0)
    conn.send((counted_from, seq))
    await asyncio.Event().wait()  # until terminated


def _serve_sync(index: int, port: int, cfg: Config, conn: Connection) -> None:
    import queue as queues
    from concurrent import futures

    import grpc

    streams: list[queues.SimpleQueue[bytes]] = []

    def stream(requests: Any, context: Any) -> Any:
        queue: queues.SimpleQueue[bytes] = queues.SimpleQueue()
        streams.append(queue)
        while True:
            yield queue.get()

    generic = grpc.method_handlers_generic_handler(
        "chat.Chat", {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
    )
    pool = futures.ThreadPoolExecutor(max_workers=cfg.subscribers + 8)
    server = grpc.server(pool, options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((generic,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    conn.send("listening")
    conn.recv()
    seq = 0
    start = time.monotonic()
    end = start + cfg.warmup + cfg.duration
    counted_from = 0
    rate = cfg.rate or 1e9  # the sync server has no drain signal: give it a rate
    while (now := time.monotonic()) < end:
        if not counted_from and now >= start + cfg.warmup:
            counted_from = seq + 1
        seq += 1
        data = line(index, seq)
        for queue in streams:
            queue.put(data)
        time.sleep(max(0.0, start + seq / rate - time.monotonic()))
    conn.send((counted_from, seq))
    threading.Event().wait()  # until terminated


# -- the subscribers: bench.chat's raw HTTP/2 reader -----------------------------


def subscribe(port: int, n: int, conn: Connection) -> None:
    """``n`` streams on their own connections, read by one epoll loop.

    Every line's (server, sequence, latency) is kept; at the end the parent
    says which sequence numbers each server counted, and this process answers
    with the counted lines' latencies and, per stream, its server and count.
    """
    from bench.h2client import GrpcStreamReader

    servers: array[int] = array("q")
    seqs: array[int] = array("q")
    latencies: array[int] = array("q")
    stream_of: array[int] = array("q")

    def on_message_of(stream: int) -> Any:
        def on_message(data: bytes) -> None:
            now = time.monotonic_ns()
            servers.append(int(data[-31:-29]))
            seqs.append(int(data[-29:-19]))
            latencies.append(now - int(data[-19:]))
            stream_of.append(stream)

        return on_message

    def on_end(status: str, message: str) -> None:
        pass

    poller = select.epoll()
    readers: dict[int, tuple[socket.socket, Any]] = {}
    for stream in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        reader = GrpcStreamReader(
            sock, f"127.0.0.1:{port}", STREAM, [], on_message_of(stream), on_end
        )
        readers[sock.fileno()] = (sock, reader)
        poller.register(sock.fileno(), select.EPOLLIN)
    pipe = conn.fileno()
    poller.register(pipe, select.EPOLLIN)
    conn.send("connected")
    while True:
        events = poller.poll(0.5)
        if any(fd == pipe for fd, _ in events):
            break
        for fd, _ in events:
            sock, reader = readers[fd]
            data = sock.recv(65536)
            if data:
                reader.data_received(data)
            else:
                poller.unregister(fd)
    conn.recv()  # "stop"
    spans: list[tuple[int, int]] = conn.recv()
    counted = array("q")
    per_stream: dict[int, list[int]] = {}  # stream -> [server, lines counted]
    for server, seq, latency, stream in zip(servers, seqs, latencies, stream_of, strict=True):
        first, last = spans[server]
        entry = per_stream.setdefault(stream, [server, 0])
        if first <= seq <= last:
            counted.append(latency)
            entry[1] += 1
    conn.send((counted.tobytes(), list(per_stream.values()), n - len(per_stream)))
    conn.recv()  # "exit": the servers are gone (a stream cancelled under a live
    # grpc.aio server has its CancelledError printed, which would bury the figures)
    for sock, _ in readers.values():
        sock.close()


# -- one run -----------------------------------------------------------------


def _cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def run(cfg: Config) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    port = free_port()
    servers = []
    for index in range(cfg.procs):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(index, port, cfg, theirs), daemon=True)
        proc.start()
        if not ours.poll(30) or ours.recv() != "listening":
            raise RuntimeError("a server did not start")
        servers.append((proc, ours))
    subscribers = []
    per_proc = [cfg.subscribers // cfg.sub_procs] * cfg.sub_procs
    per_proc[0] += cfg.subscribers - sum(per_proc)
    for n in per_proc:
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=subscribe, args=(port, n, theirs), daemon=True)
        proc.start()
        if not ours.poll(60) or ours.recv() != "connected":
            raise RuntimeError("subscribers did not connect")
        subscribers.append((proc, ours))
    # Streams reach the handlers a moment after their connections: wait until
    # every server has accepted its share (seen as ESTABLISHED server sockets).
    _wait_established(port, cfg.subscribers, timeout=30)
    server_pids = [p.pid for p, _ in servers if p.pid is not None]
    client_pids = [p.pid for p, _ in subscribers if p.pid is not None]
    for _, pipe in servers:
        pipe.send("go")
    # The servers time the warm-up themselves; this only aligns the CPU window.
    time.sleep(cfg.warmup)
    s0, c0, t0 = _cpu(server_pids), _cpu(client_pids), time.monotonic()
    spans = [pipe.recv() for _, pipe in servers]
    s1, c1, t1 = _cpu(server_pids), _cpu(client_pids), time.monotonic()
    time.sleep(1.0)  # let the last lines arrive
    for _, pipe in subscribers:
        pipe.send("stop")
        pipe.send(spans)
    received = 0
    lost = 0
    silent = 0  # streams that received nothing at all
    latencies: list[int] = []
    for _, pipe in subscribers:
        raw, streams, nothing = pipe.recv()
        lat: array[int] = array("q")
        lat.frombytes(raw)
        latencies.extend(lat)
        received += len(lat)
        silent += nothing
        for server, count in streams:
            first, last = spans[server]
            lost += (last - first + 1) - count
    for proc, _ in servers:
        proc.terminate()
        proc.join(5)
    for proc, pipe in subscribers:
        pipe.send("exit")
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
    latencies.sort()
    elapsed = t1 - t0
    delivered_per_s = received / max(elapsed, 1e-9)

    def pct(q: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e6

    server_cpu, client_cpu = s1 - s0, c1 - c0
    return {
        "label": cfg.label,
        "delivered_per_s": delivered_per_s,
        "lost": lost,
        "silent_streams": silent,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "server_cpu_pct": 100 * server_cpu / elapsed,
        "server_us_per_delivery": 1e6 * server_cpu / max(received, 1),
        "client_cpu_pct": 100 * client_cpu / elapsed,
        "client_us_per_delivery": 1e6 * client_cpu / max(received, 1),
    }


def _wait_established(port: int, count: int, timeout: float) -> None:
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        # Server-side sockets: the local port is the server's (grpc listens
        # dual-stack, so they are tcp6 with v4-mapped addresses).
        established = sum(
            1
            for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
        )
        if established >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {established} of {count} connections established")
        time.sleep(0.1)


def describe(res: dict[str, Any]) -> str:
    ceiling = 1e6 * CORES / (res["server_us_per_delivery"] + res["client_us_per_delivery"])
    return (
        f"{res['label']:<34} delivered {res['delivered_per_s']:>7.0f}/s  "
        f"lost {res['lost']} (+{res['silent_streams']} silent streams)  "
        f"p50 {res['p50_ms']:6.1f}  p99 {res['p99_ms']:7.1f} ms  "
        f"server {res['server_cpu_pct']:4.0f}% = {res['server_us_per_delivery']:5.1f} us/line  "
        f"clients {res['client_cpu_pct']:3.0f}% = {res['client_us_per_delivery']:4.1f} us/line  "
        f"=> at most {ceiling:,.0f}/s on {CORES} cores"
    )


DEFAULT_SUITE = ["100@100", "500@20", "100@max"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_floor", description=__doc__)
    p.add_argument("--scenario", action="append", help="SUBS@RATE or SUBS@max (repeatable)")
    p.add_argument("--procs", type=int, action="append", help="server processes (repeatable)")
    p.add_argument("--handler", choices=["yield", "write"], action="append")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], action="append")
    p.add_argument("--api", choices=["aio", "sync"], default="aio")
    p.add_argument("--window", type=int, default=64, help="fast mode: per-stream queue bound")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--sub-procs", type=int, default=2)
    p.add_argument("--wait-quiet", type=float, default=60.0)
    p.add_argument("--quiet-pct", type=float, default=15.0)
    args = p.parse_args(argv)
    python = sys.version.split()[0]
    print(f"bench.grpc_floor: grpcio {_grpc_version()}, Python {python}, {CORES} CPUs")
    for scenario in args.scenario or DEFAULT_SUITE:
        subs, _, rate = scenario.partition("@")
        for procs in args.procs or [1]:
            for handler in args.handler or ["yield"]:
                for loop in args.loop or ["uvloop"]:
                    cfg = Config(
                        subscribers=int(subs),
                        rate=None if rate == "max" else float(rate),
                        procs=procs,
                        handler=handler,
                        loop=loop,
                        api=args.api,
                        window=args.window,
                        warmup=args.warmup,
                        duration=args.duration,
                        sub_procs=args.sub_procs,
                    )
                    wait_quiet(args.wait_quiet, args.quiet_pct)
                    print(describe(run(cfg)), flush=True)
    return 0


def _grpc_version() -> str:
    import grpc

    return str(grpc.__version__)


if __name__ == "__main__":
    sys.exit(main())
