"""Several hubs as one: ``python -m bench.cluster`` (see bench/README.md).

On this machine: a ``redis-server`` and two hub processes on it (``--redis``),
every door on a free port. Parts, each with its own figures:

- ``chat``: chat subscribers split across the two hubs, the publisher on hub
  A: delivered msg/s, lost, latency p50/p99 of the subscribers on hub A
  (same hub) and on hub B (cross hub, through Redis), Redis's CPU.
- ``logout``: a session logged in on hub A with a stream open on hub B;
  Logout on A, until B ends the stream: p50/p99/max.
- ``room``: device audio streams on both hubs of one room, hub A driving it,
  Play pressed at A: Play -> first packet on each hub, underruns, and the
  audio gap at hub B when hub A is SIGKILLed mid-sound (another hub takes the
  room over).
- ``workers``: bench.chat's scenarios against one hub process, one hub on
  Redis, and ``--workers 2`` on Redis.

The chat clients are bench.chat's own (raw HTTP/2 subscribers, grpc.aio
publishers, the same line format, warm-up and drain); only which hub each
dials differs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import itertools
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import chat
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
    ms,
    wait_quiet,
    workers_cpu,
)

PASSWORD = chat.PASSWORD
# The targets of the scale-out issue (2-core machine).
CROSS_HUB_MARGIN_MS = 5.0  # cross-hub p99 <= same-hub p99 + this, at 100 x 100 msg/s
LOGOUT_P99_MS = 100.0


# -- the processes ------------------------------------------------------------


class RedisProcess:
    """Debian's redis-server on a free port, no persistence, its CPU watched."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        import psutil

        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: scripts/setup --dev")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--save", "", "--appendonly", "no",
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def start_hub(log_dir: Path, label: str, extra: list[str]) -> HubProcess:
    hub = HubProcess(log_dir / f"hub-{label}.log")
    hub.start(
        "hub",
        ["-s", "-p", PASSWORD, "-h", "127.0.0.1:0", "--device-address", "none",
         "--stream-address", "none", "--rate", "0", *extra],
    )  # fmt: skip
    return hub


@contextlib.contextmanager
def two_hubs(log_dir: Path, label: str) -> Iterator[tuple[RedisProcess, HubProcess, HubProcess]]:
    """A fresh redis-server and hubs A and B sharing it; all stopped on the way out."""
    redis = RedisProcess(Path(tempfile.mkdtemp(dir=log_dir)))
    redis.start()
    hubs: list[HubProcess] = []
    try:
        for name in ("a", "b"):
            hubs.append(start_hub(log_dir, f"{label}-{name}", ["--redis", redis.url]))
        yield redis, hubs[0], hubs[1]
    finally:
        for hub in hubs:
            hub.stop()
        redis.stop()


# -- chat across two hubs ----------------------------------------------------------


def chat_across(sc: chat.Scenario, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Subscribers half on hub A, half on hub B; one publisher on hub A."""
    import numpy as np

    background = wait_quiet(args.wait_quiet, args.quiet_pct) if args.wait_quiet > 0 else None
    workers: list[Worker] = []
    with two_hubs(log_dir, sc.label) as (redis, hub_a, hub_b):
        hubs = [hub_a, hub_b]
        try:
            ctx = mp.get_context("spawn")
            subs: list[Worker] = []
            half = [sc.subscribers - sc.subscribers // 2, sc.subscribers // 2]
            for i, (hub, n) in enumerate(zip(hubs, half, strict=True)):
                parent, child = ctx.Pipe()
                cfg = {"index": i, "n": n, "address": hub.address, "client": "raw"}
                process = ctx.Process(
                    target=chat.subscriber_process, args=(child, cfg), daemon=True
                )
                subs.append(Worker(process, parent, "subscriber", n))
            parent, child = ctx.Pipe()
            cfg = {"index": 0, "address": hubs[0].address, "window": args.fast_window}
            pub = Worker(
                ctx.Process(target=chat.publisher_process, args=(child, cfg), daemon=True),
                parent,
                "publisher",
            )
            workers = [*subs, pub]
            for w in workers:
                w.start()
            # Probe logins on hub A reach hub B's streams through Redis: once every
            # stream has seen one, every stream on both hubs is subscribed.
            chat.open_streams(workers, hubs[0].address, args)
            chat.start_publishing([pub], sc, args)
            hub_cpu0 = [h.cpu() for h in hubs]
            redis_cpu0, sub_cpu0 = redis.cpu(), workers_cpu(subs)
            wall0 = time.monotonic()
            (done,) = expect([pub], "done", args.duration + 60)
            sent = [done[1]]
            for w in subs:
                w.conn.send(("expect", sent, args.drain_timeout, args.stall_timeout))
            results = [m[1] for m in expect(subs, "result", args.drain_timeout + 60)]
            wall = time.monotonic() - wall0
            hub_cpu = [h.cpu() - c for h, c in zip(hubs, hub_cpu0, strict=True)]
            redis_cpu, sub_cpu = redis.cpu() - redis_cpu0, workers_cpu(subs) - sub_cpu0
            pub.conn.send(("stop",))
        finally:
            end_workers(workers)

    def latency(r: dict[str, Any]) -> dict[str, float | None]:
        lat = np.frombuffer(r["latencies"], dtype=np.int64) / 1e6
        if not lat.size:
            return {"p50": None, "p99": None, "max": None}
        return {
            "p50": round(float(np.percentile(lat, 50)), 3),
            "p99": round(float(np.percentile(lat, 99)), 3),
            "max": round(float(lat.max()), 3),
        }

    received = sum(r["received"] for r in results)
    first_send, last_recv = done[2], max(r["last_ns"] for r in results)
    window = (last_recv - first_send) / 1e9 if received else 0.0
    same, cross = latency(results[0]), latency(results[1])
    res: dict[str, Any] = {
        "part": "chat",
        "scenario": sc.label,
        "subscribers": {"hub_a": half[0], "hub_b": half[1]},
        "rate_target": None if sc.fast else sc.rate,
        "sent": done[1],
        "expected_deliveries": done[1] * sc.subscribers,
        "delivered": received,
        "delivered_per_s": round(received / window, 1) if window > 0 else 0.0,
        "lost": sum(r["lost"] for r in results),
        "lost_by_hub": {"hub_a": results[0]["lost"], "hub_b": results[1]["lost"]},
        "disconnects": {k: v for r in results for k, v in r["errors"].items()},
        "gaps": sum(r["gaps"] for r in results),
        "duplicates": sum(r["dups"] for r in results),
        "same_hub_latency_ms": same,
        "cross_hub_latency_ms": cross,
        "window_s": round(wall, 3),
        "hub_cpu_s": [round(c, 3) for c in hub_cpu],
        "redis_cpu_s": round(redis_cpu, 3),
        "redis_cpu_pct": round(100 * redis_cpu / wall, 1),
        "subscriber_cpu_s": round(sub_cpu, 3),
        # Per line published: what each hub and Redis spent (capacity model).
        "hub_us_per_line": [round(1e6 * c / done[1], 1) for c in hub_cpu] if done[1] else None,
        "redis_us_per_line": round(1e6 * redis_cpu / done[1], 1) if done[1] else None,
        "background_pct_before": None if background is None else round(background, 1),
    }
    checks = {}
    if sc.label == "100@100":
        checks["lost"] = res["lost"] == 0 and res["sent"] > 0
        if same["p99"] is not None and cross["p99"] is not None:
            checks["cross_hub_p99"] = cross["p99"] <= same["p99"] + CROSS_HUB_MARGIN_MS
    res["checks"] = checks
    res["pass"] = all(checks.values()) if checks else None
    return res


def describe_chat(res: dict[str, Any]) -> str:
    same, cross = res["same_hub_latency_ms"], res["cross_hub_latency_ms"]
    subs = res["subscribers"]
    rate = "fast" if res["rate_target"] is None else f"{res['rate_target']:g}/s"
    verdict = "" if res["pass"] is None else f"\n   => {'PASS' if res['pass'] else 'FAIL'}"
    ok = res["checks"]

    def mark(key: str) -> str:
        return "" if key not in ok else (" PASS" if ok[key] else " FAIL")

    return (
        f"== chat {res['scenario']}: {subs['hub_a']} subscribers on hub A (the publisher's), "
        f"{subs['hub_b']} on hub B; rate {rate}\n"
        f"   delivered        {res['delivered_per_s']:.0f} msg/s ({res['delivered']} of "
        f"{res['expected_deliveries']})\n"
        f"   lost             {res['lost']} (hub A {res['lost_by_hub']['hub_a']}, hub B "
        f"{res['lost_by_hub']['hub_b']}){mark('lost')}; disconnects {res['disconnects'] or 0}"
        f"; gaps {res['gaps']}; dups {res['duplicates']}\n"
        f"   same hub    ms   p50 {ms(same['p50'], 2)}  p99 {ms(same['p99'], 2)}  "
        f"max {ms(same['max'], 2)}\n"
        f"   cross hub   ms   p50 {ms(cross['p50'], 2)}  p99 {ms(cross['p99'], 2)}"
        f"{mark('cross_hub_p99')} (<= same + {CROSS_HUB_MARGIN_MS:g})  max {ms(cross['max'], 2)}\n"
        f"   CPU              hub A {res['hub_cpu_s'][0]:.2f} s, hub B {res['hub_cpu_s'][1]:.2f} s,"
        f" redis {res['redis_cpu_s']:.2f} s ({res['redis_cpu_pct']:.0f}% of a core) over "
        f"{res['window_s']:.1f} s; subscribers {res['subscriber_cpu_s']:.2f} s\n"
        f"   per line sent    hub A {res['hub_us_per_line'][0]} us, hub B "
        f"{res['hub_us_per_line'][1]} us, redis {res['redis_us_per_line']} us{verdict}"
    )


# -- Logout on one hub, the stream on another ---------------------------------------


async def _logout_reach(a: str, b: str, rounds: int) -> list[float]:
    import grpc

    from hub.proto import chat_pb2, chat_pb2_grpc

    times: list[float] = []
    async with grpc.aio.insecure_channel(a) as ca, grpc.aio.insecure_channel(b) as cb:
        stub_a = chat_pb2_grpc.ChatStub(ca)  # type: ignore[no-untyped-call]
        stub_b = chat_pb2_grpc.ChatStub(cb)  # type: ignore[no-untyped-call]
        for i in range(rounds):
            login = await stub_a.Login(chat_pb2.LoginRequest(name=f"leaver{i}", password=PASSWORD))
            call = stub_b.Stream(metadata=((chat.TOKEN_HEADER, login.token),))
            # Our own line back on hub B's stream: the stream is subscribed there.
            await call.write(chat_pb2.StreamRequest(message=f"here {i}"))
            while True:
                event = await asyncio.wait_for(call.read(), 10)
                if event.WhichOneof("event") == "client_message":
                    break
            t0 = time.monotonic()
            await stub_a.Logout(chat_pb2.LogoutRequest(token=login.token))
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await asyncio.wait_for(call.read(), 10) is not grpc.aio.EOF:
                    pass
            times.append(1000 * (time.monotonic() - t0))
    return times


def logout_across(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    import numpy as np

    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet, args.quiet_pct)
    with two_hubs(log_dir, "logout") as (_, hub_a, hub_b):
        times = np.array(asyncio.run(_logout_reach(hub_a.address, hub_b.address, args.logouts)))
    p99 = float(np.percentile(times, 99))
    res: dict[str, Any] = {
        "part": "logout",
        "rounds": int(times.size),
        "ms": {
            "p50": round(float(np.percentile(times, 50)), 2),
            "p99": round(p99, 2),
            "max": round(float(times.max()), 2),
        },
        "checks": {"p99": p99 <= LOGOUT_P99_MS},
    }
    res["pass"] = res["checks"]["p99"]
    return res


def describe_logout(res: dict[str, Any]) -> str:
    t = res["ms"]
    return (
        f"== logout: Logout on hub A until hub B ends that session's stream, "
        f"{res['rounds']} times\n"
        f"   ms               p50 {t['p50']}  p99 {t['p99']} "
        f"{'PASS' if res['pass'] else 'FAIL'} (<= {LOGOUT_P99_MS:g})  max {t['max']}"
    )


# -- a device room shared by two hubs ----------------------------------------------

ROOM = "bench-room"
ROOM_LISTENERS = 10  # ServerAudioStream listeners on each hub
GAP_MS = 60.0  # a listener's inter-packet gap above this is an underrun (20 ms packets)


class AudioListener:
    """One device: its StatusStream (its presence in the room, read and dropped) and
    its ServerAudioStream, every packet's arrival time kept."""

    def __init__(self, address: str) -> None:
        self.address = address
        # (monotonic arrival, is_start, is_end) of every packet
        self.packets: list[tuple[float, bool, bool]] = []
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        import grpc

        from hub.proto import comms_pb2, comms_pb2_grpc

        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = comms_pb2_grpc.DeviceServiceStub(channel)  # type: ignore[no-untyped-call]
            metadata = (("device_id", ROOM),)
            status = stub.StatusStream(metadata=metadata)
            call = stub.ServerAudioStream(
                comms_pb2.AudioStreamRequest(start=True), metadata=metadata
            )
            with contextlib.suppress(grpc.aio.AioRpcError):
                await status.read()  # the room's frame: this device is in the room
                async for packet in call:
                    self.packets.append((time.monotonic(), packet.is_start, packet.is_end))

    def first_after(self, t0: float) -> float | None:
        return next((t for t, _, _ in self.packets if t >= t0), None)

    def gaps_between(self, t0: float, t1: float) -> list[float]:
        times = [t for t, _, _ in self.packets if t0 <= t <= t1]
        return [1000 * (b - a) for a, b in itertools.pairwise(times)]

    def well_formed(self) -> bool:
        from hub.audio.testing import well_formed

        return well_formed((start, end) for _, start, end in self.packets)


async def _room_run(a: HubProcess, b: HubProcess, play_s: float) -> dict[str, Any]:
    """Listeners on both hubs, hub A drives; Play at A; then SIGKILL A, seen from B."""
    import grpc

    from hub.proto import chat_pb2, chat_pb2_grpc

    listeners = {"a": [AudioListener(a.address) for _ in range(ROOM_LISTENERS)]}
    listeners["b"] = [AudioListener(b.address) for _ in range(ROOM_LISTENERS)]
    for name in ("a", "b"):  # hub A opens the room first: it drives it
        for listener in listeners[name]:
            listener.task = asyncio.get_running_loop().create_task(listener.run())
        await asyncio.sleep(0.5)  # let the streams open (a benchmark's settling time)
    async with grpc.aio.insecure_channel(a.address) as ca:
        login = await chat_pb2_grpc.ChatStub(ca).Login(  # type: ignore[no-untyped-call]
            chat_pb2.LoginRequest(name="roompresser", password=PASSWORD)
        )
        metadata = ((chat.TOKEN_HEADER, login.token),)
        pressed = time.monotonic()
        await chat_pb2_grpc.RoomsStub(ca).Press(  # type: ignore[no-untyped-call]
            chat_pb2.PressRequest(room=ROOM, button=chat_pb2.PressRequest.PLAY),
            metadata=metadata,
        )
    await asyncio.sleep(play_s)  # the sound plays: the window for underruns
    assert a.proc is not None
    killed = time.monotonic()
    a.proc.kill()
    await asyncio.sleep(4.0)  # enough for another hub to take over (lease 1.2 s)
    await cancel_and_wait(x.task for x in listeners["a"] + listeners["b"] if x.task)

    def reach(name: str) -> list[float]:
        return sorted(
            1000 * (t - pressed)
            for x in listeners[name]
            if (t := x.first_after(pressed)) is not None
        )

    gaps = [
        g for name in "ab" for x in listeners[name] for g in x.gaps_between(pressed + 0.5, killed)
    ]
    failover = []
    for x in listeners["b"]:
        before = [t for t, _, _ in x.packets if t < killed]
        after = [t for t, start, _ in x.packets if t >= killed and start]
        if before and after:
            failover.append(1000 * (after[0] - before[-1]))
    return {
        "reach_a": reach("a"),
        "reach_b": reach("b"),
        "underruns": sum(1 for g in gaps if g > GAP_MS),
        "max_gap_ms": round(max(gaps, default=0.0), 1),
        "failover_ms": sorted(failover),
        "well_formed": all(x.well_formed() for x in listeners["b"]),
        "listeners": ROOM_LISTENERS,
    }


def room_across(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    with two_hubs(log_dir, "room") as (_, hub_a, hub_b):
        res = asyncio.run(_room_run(hub_a, hub_b, 2.5))
    return {"part": "room", **res}


def describe_room(res: dict[str, Any]) -> str:
    def p(values: list[float]) -> str:
        if not values:
            return "none"
        return f"p50 {ms(values[len(values) // 2])} max {ms(values[-1])} ms (n={len(values)})"

    failover = res["failover_ms"]
    verdict = "PASS" if failover and failover[-1] <= 2000 and res["well_formed"] else "FAIL"
    return "\n".join(
        [
            f"== room: {res['listeners']} device audio streams on each of two hubs; "
            "hub A drives the room, Play pressed at A",
            f"   Play -> 1st packet  same hub {p(res['reach_a'])}; far hub {p(res['reach_b'])}",
            f"   underruns           {res['underruns']} gaps > {GAP_MS:.0f} ms while playing "
            f"(max gap {res['max_gap_ms']} ms)",
            f"   failover            hub A SIGKILLed: audio gap at hub B {p(failover)}; "
            f"streams well formed: {res['well_formed']} {verdict}",
        ]
    )


# -- --workers 2 against 1, on bench.chat's scenarios ----------------------------------


def workers_compare(args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    base = chat.build_parser().parse_args(
        ["--wait-quiet", str(args.wait_quiet), "--quiet-pct", str(args.quiet_pct),
         "--duration", str(args.duration), "--warmup", str(args.warmup)]
    )  # fmt: skip
    configs = {
        "1 process": [],
        "1 process, --redis": ["--redis"],
        "--workers 2, --redis": ["--workers", "2", "--redis"],
    }
    results = []
    for sc in [chat.parse_scenario(s) for s in args.workers_scenarios.split(",")]:
        for name, extra in configs.items():
            # A fresh Redis for every run, as bench.chat gives every run a fresh
            # hub: the last run's sessions would end (after the grace) in this
            # run's window, hundreds of client_logout events on every stream.
            redis = RedisProcess(Path(tempfile.mkdtemp(dir=log_dir)))
            chat_args = copy.copy(base)
            chat_args.server_arg = [*extra, redis.url] if extra else []
            try:
                if extra:
                    redis.start()
                res = chat.run_scenario(sc, chat_args, log_dir)
            except Exception as error:
                print(f"== workers {sc.label} [{name}]: FAILED TO RUN: {error}", flush=True)
                continue
            finally:
                redis.stop()
            res["part"] = "workers"
            res["config"] = name
            print(f"-- [{name}]\n" + chat.describe(res), flush=True)
            results.append(res)
    return results


def workers_table(results: list[dict[str, Any]]) -> str:
    rows = [("scenario", "hub", "delivered/s", "lost", "p50 ms", "p99 ms", "hub CPU s")]
    for r in results:
        lat = r["latency_ms"]
        rows.append(
            (
                r["scenario"],
                r["config"],
                f"{r['delivered_per_s']:.0f}",
                str(r["lost"]),
                ms(lat["p50"], 2),
                ms(lat["p99"], 2),
                f"{r['server_cpu_s']:.2f} ({r['server_cpu_pct']:.0f}%)",
            )
        )
    return columns(rows)


# -- command line -------------------------------------------------------------------


PARTS = ("chat", "logout", "room", "workers")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.cluster",
        description="Two hubs on one redis-server on this machine: chat across hubs, "
        "Logout across hubs, a room shared by two hubs and its failover, --workers 2 against 1.",
    )
    p.add_argument("--part", action="append", choices=PARTS, help="run only these (repeatable)")
    p.add_argument(
        "--scenario",
        default="100@100,100@fast",
        help="chat across hubs: SUBS@RATE list (default %(default)s)",
    )
    p.add_argument(
        "--workers-scenarios",
        default="100@100,500@20,100@fast",
        help="bench.chat scenarios for --workers 2 against 1 (default %(default)s)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    p.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds first")
    p.add_argument("--logouts", type=int, default=100, help="Logout rounds (default 100)")
    p.add_argument("--fast-window", type=int, default=256, help="as bench.chat's")
    p.add_argument("--drain-timeout", type=float, default=15.0)
    p.add_argument("--stall-timeout", type=float, default=3.0)
    p.add_argument("--setup-timeout", type=float, default=120.0)
    add_common_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parts = args.part or list(PARTS)
    log_dir = begin(args, "cluster")
    print(
        f"bench.cluster: {', '.join(parts)}; {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    runs = {
        "chat": lambda: [
            chat_across(chat.parse_scenario(s), args, log_dir) for s in args.scenario.split(",")
        ],
        "logout": lambda: [logout_across(args, log_dir)],
        "room": lambda: [room_across(args, log_dir)],
        "workers": lambda: workers_compare(args, log_dir),
    }
    describers = {"chat": describe_chat, "logout": describe_logout, "room": describe_room}
    for part in parts:
        got = attempt(part, runs[part], results, key="part")
        if got is None:
            continue
        for res in got:
            if part in describers:
                print(describers[part](res), flush=True)
        if part == "workers" and got:
            print("\n" + workers_table(got), flush=True)
        results.extend(got)
    finish(args, results, log_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
