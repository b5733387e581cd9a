"""TCP streaming benchmark: ``python -m bench.tcp`` (see bench/README.md, "TCP streaming").

Per scenario (N listeners, packet duration F ms): a fresh hub server
subprocess (``--long-sound --opus-frame-ms F --music DIR``, DIR a folder of
generated tones, one of them 90 s long); N raw-TCP listeners
(docs/protocol.md) spread over a few spawned processes (bench/tcp_client.py),
each one connection with its own ``hub.tcp.codec`` client state machine.

1. Room stream, one stream for N listeners: every listener JOINs room
   ``bench``; a chat user (gRPC ``chat.Chat/Login``, then ``chat.Rooms/Press``
   with ``x-chat-token``) presses Mode x5 (the long sound is mode 6 of 6) and
   Play. Once every listener has the stream's first AUDIO and ``--settle``
   s have passed, the window opens for ``--duration`` s: server CPU and RSS,
   bytes and frames delivered, underruns (an inter-AUDIO gap above
   ``--gap-factor`` x the frame duration) and seq gaps (frames the server
   skipped for a listener). Then Stop; every listener must get STREAM_END.
2. At ``--latency-at`` listeners (100): each listener plays tracks of its own
   on its own connection. A round: PLAY a track, ``--hold`` s later PLAY
   another (a switch), ``--hold`` s later STOP. ``--burst-rounds`` rounds
   with every listener's PLAY at the same instant, ``--spread-rounds`` with
   each at a random instant within ``--spread`` s. Measured: PLAY -> first
   AUDIO of the new stream, and the same for the switch.

Times are ``time.monotonic_ns()``, one clock for all processes on Linux.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    AudioScenario,
    HubProcess,
    Worker,
    add_common_options,
    ask,
    attempt,
    begin,
    columns,
    end_workers,
    finish,
    free_port,
    latencies,
    machine_busy,
    mark,
    ms,
    percentile,
    quietest_run,
    server_env,
    server_figures,
    start_py_spy,
    start_spread,
    underrun_and_noise_lines,
    underrun_clusters,
    wait_quiet,
    workers_cpu,
)
from bench.tcp_client import worker_process

ROOM = "bench"
PASSWORD = "bench"
LONG_MODE_PRESSES = 5  # five file modes (0..4), the long sound is mode 5 ("mode 6")

REALTIME_TARGET_AT = 1000  # 0 underruns (and 0 skipped frames)
LATENCY_TARGET_MS = 50.0  # PLAY -> first AUDIO, p99
LATENCY_TARGET_AT = 100

# The music folder: (file name, seconds, frequency). One at least 60 s long.
TONES = (
    ("01-tone-a3.flac", 8.0, 220.0),
    ("02-tone-e4.flac", 10.0, 329.63),
    ("03-tone-a4.flac", 12.0, 440.0),
    ("04-tone-c5.flac", 15.0, 523.25),
    ("05-tone-long-e5.flac", 90.0, 659.25),
)


def make_music(folder: Path) -> None:
    import numpy as np
    import soundfile as sf

    rate = 48_000
    for name, seconds, freq in TONES:
        t = np.arange(int(seconds * rate), dtype=np.float64) / rate
        # A tone with a slow tremolo and a fifth above: not pure silence to Opus.
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 1.5 * freq * t)
        wave *= 0.75 + 0.25 * np.sin(2 * np.pi * 0.5 * t)
        sf.write(folder / name, wave.astype(np.float32), rate, subtype="PCM_16")


# -- the server under test ------------------------------------------------------


class Server(HubProcess):
    """The hub for one TCP scenario: a music folder, a stream door, the long sound."""

    def __init__(self, args: argparse.Namespace, log_dir: Path, label: str, frame_ms: float):
        super().__init__(log_dir / f"server-{label}.log")
        self.args = args
        self.frame_ms = frame_ms
        self.stream_address = ""
        # The timing probe (bench/tcp_server_probe.py) wraps the hub's CLI.
        self.probe_path: Path | None = None
        self.module = args.server_module
        if args.server_probe and args.server_module == "hub":
            self.probe_path = log_dir / f"probe-{label}.json"
            self.module = "bench.tcp_server_probe"

    @property
    def grpc_address(self) -> str:
        return self.address

    def start(self, music: Path) -> None:  # type: ignore[override]
        env = server_env(self.args.server_env)
        if self.probe_path is not None:
            env["HUB_BENCH_PROBE"] = str(self.probe_path)
            root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
            with contextlib.suppress(OSError):
                self.probe_path.unlink()
        self.stream_address = f"127.0.0.1:{free_port()}"
        super().start(
            self.module,
            [
                "-s", "-p", PASSWORD, "-h", "127.0.0.1:0", "--device-address", "none",
                "--stream-address", self.stream_address, "--music", str(music),
                "--long-sound", "--opus-frame-ms", f"{self.frame_ms:g}",
                # Every listener comes from 127.0.0.1: lift the per-address
                # bound (64), which would refuse all but 64 of them.
                "--max-connections-per-peer", "4096", *self.args.server_arg,
            ],
            env=env,
            cwd=self.args.server_cwd,
        )  # fmt: skip

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in text if "WARNING" in line or "ERROR" in line][-lines:]

    def probe(self) -> dict[str, Any] | None:
        """What the timing probe wrote at exit (after ``stop``)."""
        if self.probe_path is None:
            return None
        try:
            return json.loads(self.probe_path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def stop(self) -> int | None:  # type: ignore[override]
        super().stop()
        return None if self.proc is None else self.proc.returncode


class Controller:
    """A chat user who presses the room's buttons over gRPC (chat.Rooms/Press)."""

    def __init__(self, address: str) -> None:
        import grpc

        from hub.proto import chat_pb2, chat_pb2_grpc

        self._pb = chat_pb2
        self.channel = grpc.insecure_channel(address)
        chat = chat_pb2_grpc.ChatStub(self.channel)  # type: ignore[no-untyped-call]
        self.rooms = chat_pb2_grpc.RoomsStub(self.channel)  # type: ignore[no-untyped-call]
        self.token = chat.Login(
            chat_pb2.LoginRequest(password=PASSWORD, name="bench-ctl"), timeout=10
        ).token
        self.presses: list[tuple[str, int, int, str]] = []

    def press(self, button: str) -> str:
        pb = self._pb
        code = {"mode": pb.PressRequest.MODE, "play": pb.PressRequest.PLAY,
                "stop": pb.PressRequest.STOP}[button]  # fmt: skip
        sent = time.monotonic_ns()
        state = self.rooms.Press(
            pb.PressRequest(room=ROOM, button=code),
            metadata=(("x-chat-token", self.token),),
            timeout=10,
        ).state
        self.presses.append((button, sent, time.monotonic_ns(), state))
        return str(state)

    def close(self) -> None:
        self.channel.close()


# -- workers ------------------------------------------------------------------------


def _softirq() -> float:
    """Machine-wide softirq time: loopback TCP's receive path runs there and
    is charged to no process (with IRQ time accounting)."""
    import psutil

    return float(psutil.cpu_times().softirq)


# -- a scenario ------------------------------------------------------------------


Scenario = AudioScenario


@dataclass
class _Rig:
    """One run's listener processes, the controller and the profiler, if any."""

    workers: list[Worker] = field(default_factory=list)
    controller: Controller | None = None
    spy: subprocess.Popen[bytes] | None = None

    def end(self) -> None:
        if self.controller is not None:
            self.controller.close()
        end_workers(self.workers)
        if self.spy is not None and self.spy.poll() is None:
            self.spy.kill()


def run_scenario(
    sc: Scenario, args: argparse.Namespace, log_dir: Path, music: Path
) -> dict[str, Any]:
    """One scenario on a fresh server; every figure lands in ``m`` for ``analyse``."""
    ctx = mp.get_context("spawn")
    background = wait_quiet(args.wait_quiet, args.quiet_pct)
    server = Server(args, log_dir, sc.label, sc.frame_ms)
    server.start(music)
    rig = _Rig()
    m: dict[str, Any] = {"background": background}
    try:
        _start_listeners(rig, ctx, server, sc, args)
        _connect_and_join(rig, args, m)
        rig.controller = Controller(server.grpc_address)
        _start_room_stream(rig, args, m)
        _measure_window(rig, server, sc, args, m)
        m["state_after_stop"] = rig.controller.press("stop")
        ended = ask(rig.workers, ("wait_end", 1, 30), "ended", 60)
        m["room_stream_ended"] = sum(e[1] for e in ended)
        m["probes"] = []
        if sc.listeners in args.latency_at and (args.burst_rounds or args.spread_rounds):
            _play_latencies(rig, server, sc, args, m)
        m["collected"] = [c[1] for c in ask(rig.workers, ("collect",), "collected", 60)]
        m["vm_hwm"] = server.vm_hwm_mb()
        m["rss_peak"] = server.rss_peak
        for w in rig.workers:
            w.conn.send(("quit",))
    finally:
        rig.end()
        m["server_warnings"] = server.log_tail()
        m["server_exit"] = server.stop()
        m["probe"] = server.probe()
    return analyse(sc, args, m)


def _start_listeners(
    rig: _Rig, ctx: Any, server: Server, sc: Scenario, args: argparse.Namespace
) -> None:
    """The listeners, spread over processes (not yet connected)."""
    cfg = {
        "address": server.stream_address,
        "frame_ms": sc.frame_ms,
        "gap_factor": args.gap_factor,
        "parse": args.parse,
        "decode": args.decode,
        "connect_batch": args.connect_batch,
        "setup_timeout": args.setup_timeout,
        "ping_every": args.ping_every,
        "nice": args.client_nice,
        "io": args.io,
    }
    rig.workers += start_spread(ctx, worker_process, "listener", sc.listeners, args.procs, cfg)


def _connect_and_join(rig: _Rig, args: argparse.Namespace, m: dict[str, Any]) -> None:
    """Connect (HELLO/WELCOME) and JOIN the room."""
    t_setup = time.monotonic()
    connected = ask(rig.workers, ("connect",), "connected", args.setup_timeout + 60)
    m["connected"] = sum(c[1] for c in connected)
    m["connect_failures"] = dict(sum((Counter(c[2]) for c in connected), Counter()))
    m["tracks"] = connected[0][3]
    m["connect_s"] = round(max(c[4] for c in connected) / 1e9, 2)
    joined = ask(rig.workers, ("join", ROOM), "joined", args.setup_timeout + 30)
    m["joined"] = sum(j[1] for j in joined)
    m["setup_s"] = round(time.monotonic() - t_setup, 2)


def _start_room_stream(rig: _Rig, args: argparse.Namespace, m: dict[str, Any]) -> None:
    """The controller: Mode x5 selects the long sound, then Play; until every
    listener has its first AUDIO, and then --settle more."""
    assert rig.controller is not None
    state = ""
    for _ in range(LONG_MODE_PRESSES):
        state = rig.controller.press("mode")
    m["state_after_mode_x5"] = state
    m["long_selected"] = "mode 6" in state
    play_state = rig.controller.press("play")
    m["state_after_play"] = play_state
    started = ask(
        rig.workers, ("wait_audio", 1, args.setup_timeout), "waited", args.setup_timeout + 30
    )
    m["room_stream_listeners"] = sum(s[1] for s in started)
    m["room_first_audio_s"] = round(max(s[2] for s in started) / 1e9, 3)
    time.sleep(args.settle)


def _measure_window(
    rig: _Rig, server: Server, sc: Scenario, args: argparse.Namespace, m: dict[str, Any]
) -> None:
    """The measured window: the listeners' own figures, CPU and memory."""
    workers = rig.workers
    busy0, soft0, t0 = machine_busy(), _softirq(), time.monotonic()
    m["window_ns"] = [time.monotonic_ns(), 0]
    cpu0, lcpu0 = server.cpu(), workers_cpu(workers)
    ask(workers, ("window_start",), "started", 30)
    if args.py_spy and not args.py_spy_probes:
        pid = server.proc.pid  # type: ignore[union-attr]
        rig.spy = start_py_spy(args, pid, f"tcp-{sc.label}", args.duration, rate=200)
    time.sleep(args.duration)
    windows = [w[1] for w in ask(workers, ("window_end",), "window", 60)]
    m["window_ns"][1] = time.monotonic_ns()
    t1 = time.monotonic()
    cpu1, lcpu1, busy1, soft1 = server.cpu(), workers_cpu(workers), machine_busy(), _softirq()
    m.update(
        window=t1 - t0,
        windows=windows,
        server_cpu=cpu1 - cpu0,
        server_peak_pct=server.peak_cpu_pct(t0, t1),
        listener_cpu=lcpu1 - lcpu0,
        machine_busy=busy1 - busy0,
        softirq=soft1 - soft0,
        rss_peak_window=server.rss_peak,
    )
    if rig.spy is not None:
        rig.spy.wait(args.duration + 30)
        rig.spy = None


def _play_latencies(
    rig: _Rig, server: Server, sc: Scenario, args: argparse.Namespace, m: dict[str, Any]
) -> None:
    """PLAY latencies: each listener its own tracks on its own connection."""
    track_ids = [t[0] for t in m["tracks"]]
    if len(track_ids) < 2:
        raise RuntimeError(f"the music folder lists {len(track_ids)} tracks, need 2")
    time.sleep(0.5)
    cpu_p0, t_p0 = server.cpu(), time.monotonic()
    if args.py_spy_probes:
        pid = server.proc.pid  # type: ignore[union-attr]
        rig.spy = start_py_spy(args, pid, f"tcp-{sc.label}-probes", 600, rate=200)
    # The first round finds every track's packets not yet encoded
    # (the hub encodes music on first play): reported apart.
    rounds = (
        [("cold", 0.0)] * (1 if args.cold_round else 0)
        + [("burst", 0.0)] * args.burst_rounds
        + [("spread", args.spread)] * args.spread_rounds
    )
    for r, (kind, spread_s) in enumerate(rounds):
        at = time.monotonic_ns() + 200_000_000
        timeout = args.probe_timeout
        got = ask(
            rig.workers,
            ("probe_round", at, spread_s, track_ids, args.hold, timeout),
            "probed",
            spread_s + 2 * args.hold + 3 * timeout + 30,
        )
        m["probes"].append({"round": r, "kind": kind, "results": [x for g in got for x in g[1]]})
        time.sleep(0.3)
    m["probe_server_cpu_pct"] = round(100 * (server.cpu() - cpu_p0) / (time.monotonic() - t_p0), 1)
    if rig.spy is not None and rig.spy.poll() is None:
        rig.spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        with contextlib.suppress(subprocess.TimeoutExpired):
            rig.spy.wait(30)


# -- figures ---------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    return percentile(values, q, 2)


def _lat(values: list[float]) -> dict[str, Any]:
    return latencies(values, 2)


LEAD_NS = 60_000_000  # hub/audio/pacer.py DEFAULT_LEAD: packets leave this far ahead


def server_side(
    probe: dict[str, Any] | None, window_ns: list[int], frame_ns: int, gap_ns: int
) -> dict[str, Any] | None:
    """The room stream as the server handed it to the kernel (the probe).

    Per frame k of the stream in the window: the fan-out's start and end.
    ``gap`` bounds every listener's inter-frame gap from above: from the
    start of frame k-1's fan-out (the earliest any listener got k-1) to the
    end of frame k's (the latest any listener got k). ``slack``: how long
    before its play time the last listener's copy of frame k was written,
    play time being the stream's first write + k x frame (a listener that
    plays from its first packet); below 0 such a listener would run dry
    even if it read instantly.
    """
    if probe is None:
        return None
    t0, t1 = window_ns
    frames = [f for f in probe["frames"] if t0 <= f[2] <= t1]
    if not frames:
        return {"frames": 0}
    stream = max({f[0] for f in frames}, key=lambda s: sum(f[0] == s for f in frames))
    whole = sorted((f for f in probe["frames"] if f[0] == stream), key=lambda f: f[1])
    origin = next((f[2] for f in whole if f[1] == 0), whole[0][2] - whole[0][1] * frame_ns)
    frames = [f for f in whole if t0 <= f[2] <= t1]
    fanout = [(f[3] - f[2]) / 1e6 for f in frames]
    gaps: list[float] = []
    for prev, cur in itertools.pairwise(whole):
        if t0 <= cur[2] <= t1 and cur[1] == prev[1] + 1:
            gaps.append((cur[3] - prev[2]) / 1e6)
    slack = [(origin + f[1] * frame_ns - f[3]) / 1e6 for f in frames]
    lags = [lag / 1e6 for t, lag in probe["lags"] if t0 <= t <= t1]
    gcs = [(d / 1e6, g) for t, d, g in probe["gcs"] if t0 <= t <= t1]
    seqs = [f[1] for f in frames]
    return {
        "frames": len(frames),
        "frames_per_s": round(len(frames) / ((t1 - t0) / 1e9), 2),
        "seq_missing": (max(seqs) - min(seqs) + 1 - len(set(seqs))) if seqs else 0,
        "subscribers": max(f[4] for f in frames),
        "fanout_ms": _lat(fanout),
        "fanout_us_per_listener": round(1000 * sum(fanout) / sum(f[4] for f in frames), 2),
        "gap_ms": _lat(gaps),
        "gaps_over_limit": sum(g > gap_ns / 1e6 for g in gaps),
        "slack_ms_min": round(min(slack), 2),
        "late_frames": sum(x < 0 for x in slack),
        "loop_lags_over_5ms": len(lags),
        "loop_lag_ms_max": round(max(lags), 1) if lags else 0.0,
        "gc": {
            "count": len(gcs),
            "gen2": sum(g == 2 for _, g in gcs),
            "max_ms": round(max(d for d, _ in gcs), 2) if gcs else 0.0,
        },
    }


def analyse(sc: Scenario, args: argparse.Namespace, m: dict[str, Any]) -> dict[str, Any]:
    n = sc.listeners
    frame_ns = int(sc.frame_ms * 1e6)
    window = m["window"]
    snaps = [s for w in m["windows"] for s in w["per_listener"]]
    frames = sum(s[0] for s in snaps)
    total_bytes = sum(s[1] for s in snaps)
    # Rates over each process's own window (they differ by a few ms).
    fps = sum(
        sum(s[0] for s in w["per_listener"]) / ((w["t1"] - w["t0"]) / 1e9) for w in m["windows"]
    )
    bps = sum(
        sum(s[1] for s in w["per_listener"]) / ((w["t1"] - w["t0"]) / 1e9) for w in m["windows"]
    )
    worker_window = max((w["t1"] - w["t0"]) / 1e9 for w in m["windows"])
    per_listener_frames = [s[0] for s in snaps]
    underruns = sum(s[2] for s in snaps)
    seq_gaps = sum(s[3] for s in snaps)
    max_gaps = [s[4] / 1e6 for s in snaps]
    gap_times = sorted(t for w in m["windows"] for gl in w["gap_lists"] for t, _ in gl)
    lags = [lag / 1e6 for w in m["windows"] for lag in w["lags"]]
    col = m["collected"]
    errors: Counter[str] = Counter()
    end_reasons: Counter[str] = Counter()
    for c in col:
        errors.update(c["errors"])
        end_reasons.update(c["end_reasons"])

    probes: dict[str, dict[str, list[float]]] = {}
    probe_failures: Counter[str] = Counter()
    keys = ("play_audio", "play_start", "switch_audio", "switch_start")
    for rnd in m["probes"]:
        bucket = probes.setdefault(rnd["kind"], {k: [] for k in keys})
        for probe in rnd["results"]:
            if "failed" in probe:
                probe_failures[probe["failed"][:100]] += 1
            for key, values in bucket.items():
                if key in probe:
                    values.append(probe[key] / 1e6)
    warm = [b for kind, b in probes.items() if kind != "cold"]
    all_play = [v for b in warm for v in b["play_audio"]]
    all_switch = [v for b in warm for v in b["switch_audio"]]

    nominal_fps = n * 1000 / sc.frame_ms
    res: dict[str, Any] = {
        "scenario": sc.label,
        "listeners": n,
        "frame_ms": sc.frame_ms,
        "listener_processes": len(m["windows"]),
        "parse": args.parse,
        "client_nice": args.client_nice,
        "io": args.io,
        "connected": m["connected"],
        "connect_failures": m["connect_failures"],
        "connect_s": m["connect_s"],
        "joined": m["joined"],
        "setup_s": m["setup_s"],
        "tracks": m["tracks"],
        "long_sound_selected": m["long_selected"],
        "state_after_mode_x5": m["state_after_mode_x5"],
        "state_after_play": m["state_after_play"],
        "room_stream_listeners": m["room_stream_listeners"],
        "room_play_to_all_first_audio_s": m["room_first_audio_s"],
        "window_s": round(window, 3),
        **server_figures(m, window, n),
        "server_us_per_frame": round(1e6 * m["server_cpu"] / frames, 2) if frames else None,
        "listener_cpu_pct": round(100 * m["listener_cpu"] / window, 1),
        "machine_busy_pct": round(100 * m["machine_busy"] / window, 1),
        "softirq_pct": round(100 * m["softirq"] / window, 1),
        "other_load_pct": round(
            100 * (m["machine_busy"] - m["server_cpu"] - m["listener_cpu"] - m["softirq"]) / window,
            1,
        ),
        "background_before_pct": round(m["background"], 1),
        "bytes_per_s_total": round(bps),
        "kbit_per_s_listener": round(8 * bps / n / 1000, 1),
        "frames_per_s_total": round(fps, 1),
        "frames_per_s_nominal": round(nominal_fps, 1),
        "frames_per_s_listener_min": round(min(per_listener_frames) / worker_window, 2)
        if snaps
        else 0,
        "frames_in_window": frames,
        "bytes_in_window": total_bytes,
        "underrun_gap_ms": args.gap_factor * sc.frame_ms,
        "underruns": underruns,
        "listeners_with_underruns": sum(s[2] > 0 for s in snaps),
        "seq_gaps": seq_gaps,
        "listeners_with_seq_gaps": sum(s[3] > 0 for s in snaps),
        "underrun_instants": underrun_clusters(gap_times, frame_ns),
        "max_gap_ms": {
            "p50": _pct(max_gaps, 50),
            "p99": _pct(max_gaps, 99),
            "max": round(max(max_gaps), 2) if max_gaps else None,
        },
        "client_loop_lag_ms": {"count": len(lags), "max": round(max(lags), 1) if lags else 0.0},
        "room_stream_ended": m["room_stream_ended"],
        "state_after_stop": m["state_after_stop"],
        "play_to_first_audio_ms": _lat(all_play),
        "switch_to_first_audio_ms": _lat(all_switch),
        "server_side": server_side(
            m.get("probe"), m["window_ns"], frame_ns, int(args.gap_factor * frame_ns)
        ),
        "probes": {
            kind: {key: _lat(values) for key, values in b.items()} for kind, b in probes.items()
        },
        "probe_rounds": len(m["probes"]),
        "probe_failures": dict(probe_failures),
        "probe_server_cpu_pct": m.get("probe_server_cpu_pct"),
        "stream_errors": dict(errors),
        "violations": [v for c in col for v in c["violations"]][:20],
        "bad_audio": sum(c["bad_audio"] for c in col),
        "connections_lost": sum(c["lost"] for c in col),
        "end_reasons": dict(end_reasons),
        "decoded_sample": sum(c["decoded"] for c in col),
        "decode_errors_sample": sum(c["decode_errors"] for c in col),
        "server_warnings": m["server_warnings"],
        "server_exit": m["server_exit"],
    }
    res["errors"] = (
        (n - res["connected"])
        + (n - res["joined"])
        + (n - res["room_stream_listeners"])
        + (n - res["room_stream_ended"])
        + len(res["violations"])
        + res["bad_audio"]
        + res["connections_lost"]
        + res["decode_errors_sample"]
        + sum(errors.values())
        + sum(probe_failures.values())
        + (0 if res["long_sound_selected"] else 1)
    )
    res["checks"] = check(res)
    res["pass"] = all(res["checks"].values())
    return res


def check(res: dict[str, Any]) -> dict[str, bool]:
    out = {"errors": res["errors"] == 0}
    out["realtime"] = (
        res["underruns"] == 0
        and res["seq_gaps"] == 0
        and res["room_stream_listeners"] == res["listeners"]
    )
    srv = res["server_side"]
    if srv and srv.get("frames"):
        out["server_realtime"] = (
            srv["gaps_over_limit"] == 0 and srv["late_frames"] == 0 and srv["seq_missing"] == 0
        )
    if res["listeners"] == LATENCY_TARGET_AT and res["probes"]:
        for kind, lat in res["probes"].items():
            p99 = lat["play_audio"]["p99"]
            out[f"play_{kind}"] = p99 is not None and p99 < LATENCY_TARGET_MS
    return out


# -- output ---------------------------------------------------------------------


def describe(res: dict[str, Any]) -> str:
    target = f" (target at {REALTIME_TARGET_AT})" if res["listeners"] == REALTIME_TARGET_AT else ""
    lines = [
        f"== {res['scenario']}: {res['listeners']} TCP listeners in room {ROOM!r}"
        f" ({res['listener_processes']} procs at nice {res['client_nice']}, io"
        f" {res['io']}, parse {res['parse']})" + "; connected"
        f" {res['connected']} in {res['connect_s']} s, joined {res['joined']};"
        f" long sound selected: {res['long_sound_selected']}",
        f"   server CPU       {res['server_cpu_pct']:.0f}% of a core over {res['window_s']:.1f} s"
        f" (busiest 1 s {res['server_cpu_peak_1s_pct']:.0f}%),"
        f" {res['server_cpu_per_listener_pct']:.3f}% per listener,"
        f" {res['server_us_per_frame']} us per frame delivered",
        f"   machine          busy {res['machine_busy_pct']:.0f}% (of 200%): listeners"
        f" {res['listener_cpu_pct']:.0f}%, other {res['other_load_pct']:.0f}%"
        f" (softirq {res['softirq_pct']:.0f}%, partly in the processes' own);"
        f" client loop lags >10 ms: {res['client_loop_lag_ms']['count']}"
        f" (max {res['client_loop_lag_ms']['max']} ms)",
        f"   server RSS       peak {res['server_rss_peak_mb']:.0f} MB"
        f" (VmHWM {res['server_vmhwm_mb']} MB)",
        f"   delivered        {res['bytes_per_s_total'] / 1e6:.2f} MB/s"
        f" ({res['kbit_per_s_listener']:.1f} kb/s per listener),"
        f" {res['frames_per_s_total']:.0f} frames/s (nominal {res['frames_per_s_nominal']:.0f},"
        f" slowest listener {res['frames_per_s_listener_min']:.2f}/s)",
        f"   underruns        {res['underruns']} gaps > {res['underrun_gap_ms']:g} ms in"
        f" {res['listeners_with_underruns']} listeners; seq gaps {res['seq_gaps']} in"
        f" {res['listeners_with_seq_gaps']} listeners; max gap p50/p99/max"
        f" {ms(res['max_gap_ms']['p50'])}/{ms(res['max_gap_ms']['p99'])}/"
        f"{ms(res['max_gap_ms']['max'])} ms" + mark(res, "realtime") + target,
    ]
    srv = res["server_side"]
    if srv and srv.get("frames"):
        lines.append(
            f"   server side      {srv['frames_per_s']:.1f} frames/s fanned out to"
            f" {srv['subscribers']}; fan-out p50/p99/max {ms(srv['fanout_ms']['p50'])}/"
            f"{ms(srv['fanout_ms']['p99'])}/{ms(srv['fanout_ms']['max'])} ms"
            f" ({srv['fanout_us_per_listener']} us per listener); worst listener gap"
            f" p99/max {ms(srv['gap_ms']['p99'])}/{ms(srv['gap_ms']['max'])} ms"
            f" ({srv['gaps_over_limit']} over {res['underrun_gap_ms']:g}); min slack"
            f" {srv['slack_ms_min']} ms ({srv['late_frames']} late); loop lags >5 ms"
            f" {srv['loop_lags_over_5ms']} (max {srv['loop_lag_ms_max']}); GC"
            f" {srv['gc']['count']} (gen2 {srv['gc']['gen2']}, max {srv['gc']['max_ms']} ms)"
            + mark(res, "server_realtime")
        )
    for kind, lat in res["probes"].items():
        pa, sa, ps = lat["play_audio"], lat["switch_audio"], lat["play_start"]
        lines.append(
            f"   PLAY->1st AUDIO  {kind:6} p50 {ms(pa['p50'])}  p99 {ms(pa['p99'])}"
            f"  max {ms(pa['max'])} ms (n={pa['n']}; ->STREAM_START p99 {ms(ps['p99'])})"
            + mark(res, f"play_{kind}")
        )
        lines.append(
            f"   switch->1st AUDIO {kind:5} p50 {ms(sa['p50'])}  p99 {ms(sa['p99'])}"
            f"  max {ms(sa['max'])} ms (n={sa['n']})"
        )
    if res["probes"]:
        lines.append(
            f"   latency rounds   {res['probe_rounds']} (cold = the first, tracks not yet"
            f" encoded); server CPU during them {res['probe_server_cpu_pct']}%"
        )
    lines.append(
        f"   checks           decoded {res['decoded_sample']} (errors"
        f" {res['decode_errors_sample']}); stream ends {res['end_reasons']};"
        f" errors {res['errors']}" + mark(res, "errors")
    )
    for key in ("stream_errors", "probe_failures", "connect_failures"):
        if res[key]:
            lines.append(f"   {key:16} {res[key]}")
    if res["violations"]:
        lines.append(f"   violations       {res['violations'][:5]}")
    if res["server_warnings"]:
        lines.append("   server log: " + " | ".join(res["server_warnings"][-3:])[:400])
    lines += underrun_and_noise_lines(res)
    lines.append(f"   => {'PASS' if res['pass'] else 'FAIL'}")
    return "\n".join(lines)


def _srv_cell(r: dict[str, Any]) -> str:
    srv = r.get("server_side")
    if not srv or not srv.get("frames"):
        return "-"
    return f"{ms(srv['gap_ms']['max'])}/{srv['slack_ms_min']:.0f}" + mark(r, "server_realtime")


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "scenario",
        "srv CPU",
        "/listener",
        "RSS MB",
        "MB/s",
        "frames/s",
        "underruns",
        "seq gaps",
        "srv gap max/slack",
        "play p50/p99 cold",
        "burst",
        "spread",
        "switch p50/p99",
        "verdict",
    )
    rows = [head]
    for r in results:
        pr = r["probes"]

        def lat(
            kind: str, key: str = "play_audio", pr: dict[str, Any] = pr, r: dict[str, Any] = r
        ) -> str:
            if kind not in pr:
                return "-"
            x = pr[kind][key]
            verdict = mark(r, f"play_{kind}") if key == "play_audio" else ""
            return f"{ms(x['p50'])}/{ms(x['p99'])}" + verdict

        sw = r["switch_to_first_audio_ms"]
        rows.append(
            (
                r["scenario"],
                f"{r['server_cpu_pct']:.0f}%",
                f"{r['server_cpu_per_listener_pct']:.3f}%",
                f"{r['server_rss_peak_mb']:.0f}",
                f"{r['bytes_per_s_total'] / 1e6:.2f}",
                f"{r['frames_per_s_total']:.0f}/{r['frames_per_s_nominal']:.0f}",
                f"{r['underruns']} ({r['listeners_with_underruns']})" + mark(r, "realtime"),
                f"{r['seq_gaps']} ({r['listeners_with_seq_gaps']})",
                _srv_cell(r),
                lat("cold"),
                lat("burst"),
                lat("spread"),
                f"{ms(sw['p50'])}/{ms(sw['p99'])}" if sw["n"] else "-",
                "PASS" if r["pass"] else "FAIL",
            )
        )
    return columns(rows)


# -- command line -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.tcp",
        description="TCP streaming benchmark: N raw-TCP listeners on one room stream, "
        "and PLAY latencies of listeners playing their own tracks.",
    )
    p.add_argument("--listeners", default="100,500,1000", help="comma list of listener counts")
    p.add_argument("--frame-ms", default="20", help="comma list of Opus frame durations (ms)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of the measured window")
    p.add_argument("--settle", type=float, default=1.0, help="seconds after the stream starts")
    p.add_argument("--procs", type=int, default=2, help="listener processes")
    p.add_argument(
        "--parse",
        choices=["lean", "codec"],
        default="lean",
        help="lean: AUDIO frames read with one struct call, the rest through the codec "
        "(default); codec: every frame through hub.tcp.codec",
    )
    p.add_argument(
        "--io",
        choices=["epoll", "protocol"],
        default="epoll",
        help="listeners' reading: epoll = the process's sockets in one epoll set whose "
        "descriptor the asyncio loop watches (default); protocol = an asyncio "
        "transport and protocol per socket",
    )
    p.add_argument(
        "--client-nice",
        type=int,
        default=10,
        help="niceness of the listener processes (default 10): the server under test, "
        "not the measuring clients, gets the CPU first, as if the listeners were on "
        "other machines; 0 to share it evenly",
    )
    p.add_argument("--decode", type=int, default=2, help="listeners per process that decode Opus")
    p.add_argument(
        "--gap-factor",
        type=float,
        default=3.0,
        help="an inter-AUDIO gap above this many frame durations is an underrun",
    )
    p.add_argument(
        "--latency-at",
        default=str(LATENCY_TARGET_AT),
        help="comma list of listener counts at which PLAY latencies are measured",
    )
    p.add_argument(
        "--burst-rounds",
        type=int,
        default=3,
        help="latency rounds with every listener's PLAY at the same instant",
    )
    p.add_argument(
        "--spread-rounds",
        type=int,
        default=5,
        help="latency rounds with PLAYs at random instants within --spread s",
    )
    p.add_argument("--spread", type=float, default=1.0)
    p.add_argument(
        "--no-cold-round",
        dest="cold_round",
        action="store_false",
        help="skip the first, cold-cache burst round (reported apart from the others)",
    )
    p.add_argument("--hold", type=float, default=0.4, help="seconds between PLAY, switch, STOP")
    p.add_argument("--probe-timeout", type=float, default=5.0)
    p.add_argument("--connect-batch", type=int, default=50, help="connections opened at once")
    p.add_argument("--ping-every", type=float, default=15.0, help="keepalive PING period (s)")
    p.add_argument("--noisy-pct", type=float, default=20.0)
    p.add_argument("--retry-noisy", type=int, default=1, help="reruns of a noisy scenario")
    p.add_argument("--setup-timeout", type=float, default=60.0)
    p.add_argument(
        "--no-server-probe",
        dest="server_probe",
        action="store_false",
        help="run the hub itself, not through bench/tcp_server_probe.py (no server-side "
        "frame timing)",
    )
    p.add_argument(
        "--py-spy-probes",
        action="store_true",
        help="with --py-spy: record the latency rounds instead of the window",
    )
    add_common_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.latency_at = {int(x) for x in str(args.latency_at).split(",") if x}
    scenarios = [
        Scenario(int(n), float(ms))
        for ms in args.frame_ms.split(",")
        for n in args.listeners.split(",")
    ]
    work = begin(args, "tcp")
    music = work / "music"
    music.mkdir()
    make_music(music)
    print(
        f"bench.tcp: {', '.join(s.label for s in scenarios)}; {args.duration:g} s window;"
        f" latencies at {sorted(args.latency_at)} listeners ({args.burst_rounds} burst +"
        f" {args.spread_rounds} spread rounds); {os.cpu_count()} CPUs, Python"
        f" {platform.python_version()}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for sc in scenarios:
        for _ in range(args.repeat):
            run = functools.partial(run_scenario, sc, args, work, music)
            res = attempt(sc.label, functools.partial(quietest_run, run, args), results)
            if res is None:
                continue
            print(describe(res), flush=True)
            results.append(res)
    ran = [r for r in results if "error" not in r]
    if ran:
        print("\n" + table(ran))
        print(
            f"\ntargets: {REALTIME_TARGET_AT} listeners with 0 underruns (and 0 seq gaps);"
            f" PLAY -> first AUDIO p99 < {LATENCY_TARGET_MS:g} ms at {LATENCY_TARGET_AT}"
            " listeners"
        )
    finish(args, results, work, options=dict(vars(args), latency_at=sorted(args.latency_at)))
    return 0  # a benchmark reports; it does not fail (see bench/README.md)


if __name__ == "__main__":
    sys.exit(main())
