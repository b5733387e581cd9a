"""What every benchmark needs: the hub as a watched subprocess, a quiet machine,
client processes spoken to over pipes, the options and output they share.

``HubProcess`` starts ``python -m <module> ...`` with its output in a log file,
waits for the reference start line (``starting on HOST:PORT``) and samples the
process's CPU and memory from outside every 100 ms until ``stop``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

# The token secret every benchmark's hub signs with (the value is no secret).
SECRET = "bench-secret-bench-secret-bench-secret-0"
STARTING = re.compile(r"starting on (\S+):(\d+)")


class HubProcess:
    """The hub as a subprocess, its CPU and memory watched from outside.

    With ``--workers N`` among its arguments the hub is a parent and N worker
    processes: start waits for all N start lines, and CPU and memory are the
    whole tree's.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""  # the chat address from the start line
        self.rss_peak = 0
        self.cpu_samples: list[tuple[float, float]] = []  # (monotonic, cpu seconds)
        self._window_peak = 0
        self._in_window = False
        self._stop = threading.Event()

    def start(
        self,
        module: str,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        import psutil

        environment = dict(os.environ, HUB_TOKEN_SECRET=SECRET)
        environment.pop("HUB_TOKEN_SECRET_FILE", None)
        environment.update(env or {})
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env=environment,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        starts = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            matches = list(STARTING.finditer(text))
            if len(matches) >= starts:
                self.address = f"{matches[0].group(1)}:{matches[0].group(2)}"
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
        self.ps = psutil.Process(self.proc.pid)
        self.tree = [self.ps, *self.ps.children(recursive=True)]
        threading.Thread(target=self._sample, daemon=True).start()

    def _rss(self) -> int:
        return sum(p.memory_info().rss for p in self.tree)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            try:
                rss = self._rss()
                cpu = self.cpu()
            except Exception:
                return
            self.rss_peak = max(self.rss_peak, rss)
            if self._in_window:
                self._window_peak = max(self._window_peak, rss)
            self.cpu_samples.append((time.monotonic(), cpu))

    def window(self, on: bool) -> None:
        """Start or end the measured window, for ``window_peak_mb``."""
        if on:
            self._window_peak = self._rss()
        self._in_window = on

    @property
    def window_peak_mb(self) -> float:
        return self._window_peak / 2**20

    def cpu(self) -> float:
        """CPU seconds of the server so far, user + system, all threads (and workers)."""
        return float(sum(t.user + t.system for t in (p.cpu_times() for p in self.tree)))

    def peak_cpu_pct(self, t0: float, t1: float, span: float = 1.0) -> float:
        """The busiest ``span`` seconds between t0 and t1, in % of one core."""
        s = [x for x in self.cpu_samples if t0 <= x[0] <= t1]
        best, j = 0.0, 0
        for i in range(len(s)):
            while s[i][0] - s[j][0] > span:
                j += 1
            if s[i][0] - s[j][0] >= span * 0.8:
                best = max(best, (s[i][1] - s[j][1]) / (s[i][0] - s[j][0]))
        return 100 * best

    def vm_hwm_mb(self) -> float | None:
        """The server's peak resident set over its whole life (setup included)."""
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else None

    def stop(self) -> None:
        self._stop.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every core, every process)."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def wait_quiet(limit_s: float, quiet_pct: float) -> float:
    """Wait (up to ``limit_s``) for a second in which the machine is nearly idle.

    The machine is shared: anything else running (tests, another benchmark)
    takes CPU from the server and the clients and spoils the figures. Returns
    the last second's busy CPU, in % of one core.
    """
    start = time.monotonic()
    said = 0.0
    while True:
        b0, t0 = machine_busy(), time.monotonic()
        time.sleep(1.0)
        busy = 100 * (machine_busy() - b0) / (time.monotonic() - t0)
        waited = time.monotonic() - start
        if busy <= quiet_pct or waited >= limit_s:
            if waited > 2:
                print(f"   (waited {waited:.0f} s for a quiet machine; now {busy:.0f}% busy)")
            return busy
        if waited - said >= 30 or not said:
            said = waited or 0.001
            print(f"   (machine {busy:.0f}% of a core busy before the run: waiting)", flush=True)


@functools.cache
def shut_doors(module: str, cwd: str | None) -> tuple[str, ...]:
    """Flags that shut the server's front doors a benchmark does not use, if
    it has them (the reference chat program has none): left on their
    defaults they would bind fixed ports (8080), which something else may
    hold, failing the run, and an unused door is noise. Every door a
    benchmark does use it binds on a free port."""
    text = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(x for flag in ("--stream-address",) if flag in text for x in (flag, "none"))


def free_port() -> int:
    """A free TCP port on 127.0.0.1: bound to port 0, read, closed (a door for the hub)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit() -> None:
    """Open files up to the hard limit: every client connection is a descriptor."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def begin(args: argparse.Namespace, name: str) -> Path:
    """What every benchmark does first: room for its many sockets, the
    ``--py-spy`` folder, and a fresh folder for the servers' logs (``finish``
    removes it unless ``--keep-logs``)."""
    raise_fd_limit()
    if args.py_spy:
        Path(args.py_spy).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))


def attempt(
    label: str, run: Callable[[], Any], results: list[dict[str, Any]], key: str = "scenario"
) -> Any:
    """``run()``'s result, or None once its failure is printed and kept in
    ``results``: one run that cannot start does not end the suite."""
    try:
        return run()
    except Exception as error:
        print(f"== {label}: FAILED TO RUN: {type(error).__name__}: {error}", flush=True)
        results.append({key: label, "error": str(error)})
        return None


def server_env(items: Sequence[str]) -> dict[str, str]:
    """``--server-env KEY=VALUE`` options as a mapping."""
    return dict(item.partition("=")[::2] for item in items)


# -- client processes ---------------------------------------------------------


@dataclass
class Worker:
    """A benchmark's client process and the parent's end of its pipe.

    Messages on the pipe are tuples whose first item names their kind.
    """

    proc: Any
    conn: Connection
    kind: str = "worker"
    n: int = 0  # how many clients (streams, listeners) it runs
    ps: Any = None  # its psutil.Process, for CPU

    def start(self) -> None:
        import psutil

        self.proc.start()
        self.ps = psutil.Process(self.proc.pid)


def ask(workers: list[Worker], msg: Any, kind: str, timeout: float) -> list[Any]:
    """Send ``msg`` to every worker, then ``expect`` their answers of ``kind``."""
    for w in workers:
        w.conn.send(msg)
    return expect(workers, kind, timeout)


def expect(workers: list[Worker], kind: str, timeout: float) -> list[Any]:
    """One message of ``kind`` from every worker, in worker order."""
    deadline = time.monotonic() + timeout
    got: dict[int, Any] = {}
    while len(got) < len(workers):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"waiting for {kind!r} from {len(workers) - len(got)} workers")
        pending = {w.conn: i for i, w in enumerate(workers) if i not in got}
        for conn in wait(list(pending), min(left, 0.5)):
            i = pending[conn]  # type: ignore[index]
            try:
                msg = conn.recv()  # type: ignore[union-attr,call-arg]
            except EOFError:
                raise RuntimeError(f"{workers[i].kind} worker {i} died") from None
            if msg[0] != kind:
                raise RuntimeError(f"expected {kind!r} from worker {i}, got {msg!r}"[:300])
            got[i] = msg
        for i, w in enumerate(workers):
            if i not in got and not w.proc.is_alive() and not w.conn.poll():
                raise RuntimeError(f"{w.kind} worker {i} exited {w.proc.exitcode}")
    return [got[i] for i in range(len(workers))]


def workers_cpu(workers: list[Worker]) -> float:
    """CPU seconds, user + system, of the workers (those still there)."""
    total = 0.0
    for w in workers:
        with contextlib.suppress(Exception):
            t = w.ps.cpu_times()
            total += t.user + t.system
    return total


def spread(clients: int, procs: int) -> list[int]:
    """``clients`` split as evenly as can be over at most ``procs`` processes
    (at least one; never one with none)."""
    procs = max(1, min(procs, clients))
    return [clients // procs + (i < clients % procs) for i in range(procs)]


def start_spread(
    ctx: Any, target: Any, kind: str, clients: int, procs: int, cfg: dict[str, Any]
) -> list[Worker]:
    """``clients`` spread over ``procs`` processes, each running
    ``target(conn, cfg)`` with its share on top of ``cfg``: ``index``, ``n``
    (its clients) and ``first`` (the number of its first client); started."""
    workers: list[Worker] = []
    first = 0
    for i, n in enumerate(spread(clients, procs)):
        parent, child = ctx.Pipe()
        own = {"index": i, "n": n, "first": first, **cfg}
        first += n
        workers.append(
            Worker(ctx.Process(target=target, args=(child, own), daemon=True), parent, kind, n)
        )
    for w in workers:
        w.start()
    return workers


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel the client tasks and wait until each has ended, however it ends."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def end_workers(workers: list[Worker]) -> None:
    """Wait for each worker to exit (told to quit, or done); terminate a straggler."""
    for w in workers:
        w.proc.join(5)
        if w.proc.is_alive():
            w.proc.terminate()
            w.proc.join(5)


# -- options shared by every benchmark -----------------------------------------


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The quiet-machine, repeat, output, server and py-spy options."""
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="before each run, wait up to this long for the machine to be idle (0: don't)",
    )
    p.add_argument(
        "--quiet-pct",
        type=float,
        default=15.0,
        help="idle means below this much CPU (%% of one core) in total",
    )
    p.add_argument("--repeat", type=int, default=1, help="run each scenario this many times")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument(
        "--server-cwd",
        help="directory the server runs in (python -m puts it first on sys.path, "
        "so a copy of hub/ there is benchmarked instead)",
    )
    p.add_argument("--server-module", default="hub", help="module run as the server (-m)")
    p.add_argument(
        "--server-arg", action="append", default=[], help="extra server argument, repeatable"
    )
    p.add_argument(
        "--server-env", action="append", default=[], help="KEY=VALUE for the server, repeatable"
    )
    p.add_argument("--py-spy", metavar="DIR", help="record a py-spy profile of the server per run")
    p.add_argument("--py-spy-bin", default=shutil.which("py-spy") or "py-spy")
    p.add_argument(
        "--py-spy-format", default="flamegraph", choices=["flamegraph", "speedscope", "raw"]
    )
    p.add_argument("--py-spy-native", action="store_true", help="py-spy --native")
    p.add_argument("--keep-logs", action="store_true", help="keep the server logs and say where")


def start_py_spy(
    args: argparse.Namespace, pid: int, name: str, duration: float, *, rate: int | None = None
) -> subprocess.Popen[bytes]:
    """py-spy record of ``pid`` for ``duration`` s (or until SIGINT) into ``--py-spy``.

    Without ``--py-spy-native`` it samples without stopping the process
    (``--nonblocking``); with it, latency figures of the run mean nothing.
    """
    extension = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}[args.py_spy_format]
    return subprocess.Popen(
        [
            args.py_spy_bin,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(math.ceil(duration)),
            *(["--rate", str(rate)] if rate is not None else []),
            "--native" if args.py_spy_native else "--nonblocking",
            "--format",
            args.py_spy_format,
            "-o",
            str(Path(args.py_spy) / f"{name}.{extension}"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# -- audio scenarios (bench.tcp, bench.devices) -------------------------------------


@dataclass(frozen=True)
class AudioScenario:
    """N listeners on one room stream of ``frame_ms`` packets."""

    listeners: int
    frame_ms: float

    @property
    def label(self) -> str:
        return f"{self.listeners}@{self.frame_ms:g}ms"


def quietest_run(run: Callable[[], dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """``run()``, and again while its window had more other load than
    ``--noisy-pct`` (``--retry-noisy`` times at most): the run with the least
    other load, marked ``noisy`` if even that had too much."""
    res = run()
    retries = 0
    while res["other_load_pct"] > args.noisy_pct and retries < args.retry_noisy:
        retries += 1
        print(
            f"   ({res['scenario']}: other load {res['other_load_pct']:.0f}% of a"
            f" core during the window: running it again, {retries}/{args.retry_noisy})",
            flush=True,
        )
        again = run()
        if again["other_load_pct"] < res["other_load_pct"]:
            res = again
    res["noisy"] = res["other_load_pct"] > args.noisy_pct
    return res


def server_figures(m: dict[str, Any], window: float, listeners: int) -> dict[str, Any]:
    """The hub's CPU and memory over an audio scenario's window, from what
    ``run_scenario`` measured (``server_cpu``, ``server_peak_pct``,
    ``rss_peak``, ``vm_hwm``)."""
    return {
        "server_cpu_s": round(m["server_cpu"], 3),
        "server_cpu_pct": round(100 * m["server_cpu"] / window, 1),
        "server_cpu_peak_1s_pct": round(m["server_peak_pct"], 1),
        "server_cpu_per_listener_pct": round(100 * m["server_cpu"] / window / listeners, 4),
        "server_rss_peak_mb": round(m["rss_peak"] / 2**20, 1),
        "server_vmhwm_mb": round(m["vm_hwm"], 1) if m["vm_hwm"] is not None else None,
    }


def underrun_and_noise_lines(res: dict[str, Any]) -> list[str]:
    """The lines an audio scenario's description ends with, where they apply."""
    lines = []
    if res["underrun_instants"]:
        lines.append(
            "   underrun instants (listeners): "
            + ", ".join(str(c["listeners"]) for c in res["underrun_instants"])
        )
    if res.get("noisy"):
        lines.append(
            f"   NOISY: other processes used {res['other_load_pct']:.0f}% of a core"
            " during the window; figures are pessimistic"
        )
    return lines


# -- figures -------------------------------------------------------------------


def percentile(values: list[float], q: float, places: int) -> float | None:
    """The q-th percentile (linear between the nearest two), rounded; None if empty."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return round(s[lo] + (s[hi] - s[lo]) * (k - lo), places)


def latencies(values: list[float], places: int) -> dict[str, Any]:
    """Count, p50, p90, p99 and max of some latencies, rounded."""
    return {
        "n": len(values),
        "p50": percentile(values, 50, places),
        "p90": percentile(values, 90, places),
        "p99": percentile(values, 99, places),
        "max": round(max(values), places) if values else None,
    }


def underrun_clusters(times: list[int], frame_ns: int) -> list[dict[str, Any]]:
    """Underruns grouped by when they happened: many listeners at one instant
    point at the server (or the machine), scattered ones at the clients."""
    out: list[dict[str, Any]] = []
    for t in times:
        if out and t - out[-1]["_last"] <= 5 * frame_ns:
            out[-1]["listeners"] += 1
            out[-1]["_last"] = t
        else:
            out.append({"t_ns": t, "listeners": 1, "_last": t})
    for c in out:
        del c["_last"]
    return out[:20]


# -- output --------------------------------------------------------------------


def mark(res: dict[str, Any], key: str) -> str:
    """`` PASS`` or `` FAIL`` for a checked figure, nothing for an unchecked one."""
    ok = res["checks"].get(key)
    return "" if ok is None else (" PASS" if ok else " FAIL")


def ms(value: float | None, places: int = 1) -> str:
    return "-" if value is None else f"{value:.{places}f}"


def columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def hub_tree() -> dict[str, str]:
    """Which hub was measured: HEAD, and whether hub/ had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    out = {}
    for key, cmd in (("head", ["git", "rev-parse", "--short", "HEAD"]),
                     ("hub_changes", ["git", "status", "--short", "hub"])):  # fmt: skip
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out[key] = subprocess.run(
                cmd, cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
    return out


def finish(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    log_dir: Path,
    *,
    options: dict[str, Any] | None = None,
) -> None:
    """Write ``--json`` (machine, options, hub tree, results); keep or drop the logs."""
    if args.json:
        import grpc

        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": {
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "grpcio": grpc.__version__,
                        "platform": platform.platform(),
                    },
                    "args": options if options is not None else vars(args),
                    "hub_tree": hub_tree(),
                    "results": results,
                },
                indent=2,
            )
        )
        print(f"results written to {args.json}")
    if args.keep_logs:
        print(f"server logs in {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
