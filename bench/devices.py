"""Device audio fan-out benchmark: ``python -m bench.devices`` (see bench/README.md).

Per scenario (N listeners, packet duration F ms): a fresh hub server
subprocess with ``--long-sound --opus-frame-ms F``; one controller device (a
grpc.aio client that opens all three RPCs, as the stock client does, and
presses the buttons); N listener devices in one room, spread over a few
spawned processes that run one asyncio loop each.

Each listener is its own ServerAudioStream call with ``device_id`` metadata;
every ``--status-every``-th one also opens StatusStream and answers each
``set`` with ``status="success"``. The default client (``--client raw``,
bench/h2wire.py's GrpcMux on asyncio) puts ``--per-conn`` devices' calls on one HTTP/2
connection and reads them without a coroutine per message, so 1,000 listeners
at 50 packets/s cost the shared two cores little; ``--client aio`` uses a
grpc.aio channel per ``--per-conn`` devices instead. Listeners do not parse
protobuf: an AudioPacket starts with ``08 01`` if it is a start and with
``10 01`` (after the start tag, if any) if it is an end. ``--decode`` listeners
per process, and the controller for every packet, decode the Opus data.

Sequence: Mode x5 (the long sound is the last mode, index 5), a warm-up
Play/Stop (every listener must see its start: all streams are open), a long
Play held ``--duration`` s (CPU, underruns, packets/s), then ``--cycles``
Play/Stop cycles (latencies). Times are ``time.monotonic_ns()``, system-wide on
Linux, so a press in the controller and an arrival in a listener compare.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
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
    cancel_and_wait,
    columns,
    end_workers,
    expect,
    finish,
    latencies,
    machine_busy,
    mark,
    ms,
    percentile,
    quietest_run,
    server_env,
    server_figures,
    shut_doors,
    start_py_spy,
    start_spread,
    underrun_and_noise_lines,
    underrun_clusters,
    wait_quiet,
    workers_cpu,
)

SERVICE = "/com.opalcamera.test.DeviceService/"
AUDIO = SERVICE + "ServerAudioStream"
STATUS = SERVICE + "StatusStream"
EVENTS = SERVICE + "EventStream"
DEVICE_ID = "device_id"
ROOM = "bench-room"
PASSWORD = "bench"

START_REQUEST = b"\x08\x01"  # AudioStreamRequest(start=True)
SUCCESS = b"\x12\x07success"  # DeviceStatusResponse(status="success")
# DeviceEvent{button_event{button_id=B}} (event PRESS = 0 is the default):
# Mode is BUTTON_2, Stop BUTTON_3, Play BUTTON_4.
PRESSES = {"mode": b"\x0a\x02\x08\x01", "stop": b"\x0a\x02\x08\x02", "play": b"\x0a\x02\x08\x03"}
LONG_MODE_PRESSES = 5  # five file modes (0..4), the long sound is mode 5
# Mode 5's LED picture: two cyan dots (hub/core/leds.py).
CYAN = 0x00E0FFFF

# Each channel its own connection (grpc.aio): without a local subchannel pool,
# channels of one process with equal arguments share one TCP connection.
CLIENT_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]

FAR = 1 << 62


# -- what one listener sees --------------------------------------------------


class AudioListener:
    """One device's ServerAudioStream; ``on_message`` is the hot path.

    Per stream (is_start .. is_end) it keeps: start and end arrival, packets
    received (the end mark, which carries silence, not counted), inter-packet
    gaps above the underrun limit, the longest gap, and the least slack: for
    packet k, ``start + k * frame - arrival``, how far ahead of its play time
    it came for a device that plays from the first packet on. The pacer sends
    ``lead`` (60 ms) ahead, so slack sits near 60 ms; below 0 such a device
    ran dry.
    """

    __slots__ = (
        "count",
        "decode_errors",
        "decoded",
        "decoder",
        "double_starts",
        "end_status",
        "frame_ns",
        "gap_list",
        "gap_ns",
        "gaps",
        "in_stream",
        "last",
        "max_gap",
        "min_slack",
        "orphan_ends",
        "orphans",
        "start",
        "streams",
    )

    def __init__(self, frame_ns: int, gap_ns: int) -> None:
        self.frame_ns = frame_ns
        self.gap_ns = gap_ns
        self.streams: list[tuple[int, int, int, int, int, int]] = []
        self.in_stream = False
        self.start = self.last = self.count = self.gaps = self.max_gap = 0
        self.min_slack = FAR
        self.gap_list: list[tuple[int, int]] = []  # (arrival, gap) of the first underruns
        self.orphans = 0  # packets outside any stream
        self.orphan_ends = 0  # is_end without is_start: kills the stock client's audio thread
        self.double_starts = 0  # is_start inside a stream: the stock client drops its file
        self.end_status: tuple[str, str] | None = None
        self.decoder: Any = None
        self.decoded = self.decode_errors = 0

    def on_message(self, msg: bytes, now: int) -> None:
        if self.decoder is not None:
            self._decode(msg)
        first = msg[0]
        if first == 0x08:  # is_start
            if self.in_stream:
                self.double_starts += 1
                self._close(now)
            self.in_stream = True
            self.start = self.last = now
            self.count = 1
            self.gaps = self.max_gap = 0
            self.min_slack = FAR
            if msg[2] == 0x10:  # a stream of one packet
                self.count = 0
                self._close(now)
            return
        if first == 0x10:  # is_end
            if self.in_stream:
                self._close(now)
            else:
                self.orphan_ends += 1
            return
        if not self.in_stream:
            self.orphans += 1
            return
        gap = now - self.last
        if gap > self.max_gap:
            self.max_gap = gap
        if gap > self.gap_ns:
            self.gaps += 1
            if len(self.gap_list) < 20:
                self.gap_list.append((now, gap))
        slack = self.start + self.count * self.frame_ns - now
        if slack < self.min_slack:
            self.min_slack = slack
        self.count += 1
        self.last = now

    def _close(self, now: int) -> None:
        self.streams.append((self.start, now, self.count, self.gaps, self.max_gap, self.min_slack))
        self.in_stream = False

    def _decode(self, msg: bytes) -> None:
        # Field 3 (data) follows the optional start and end tags.
        pos = 0
        while pos < len(msg) and msg[pos] in (0x08, 0x10):
            pos += 2
        try:
            if msg[pos] != 0x1A:
                raise ValueError("no data field")
            length, shift = 0, 0
            pos += 1
            while True:
                byte = msg[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            data = msg[pos : pos + length]
            if len(data) != length or not data:
                raise ValueError("short or empty data")
            pcm = self.decoder.decode(data, 5760)  # up to 120 ms at 48 kHz
            if len(pcm) != self.frame_ns * 48 // 1_000_000 * 2:  # int16 mono samples
                raise ValueError(f"decoded {len(pcm)} bytes")
            self.decoded += 1
        except Exception:
            self.decode_errors += 1

    def started(self) -> int:
        return len(self.streams) + self.in_stream

    def on_end(self, status: str, message: str) -> None:
        self.end_status = (status, message)


class StatusAnswerer:
    """One device's StatusStream: answers every request as the stock client does."""

    __slots__ = ("end_status", "gets", "reply", "sets")

    def __init__(self) -> None:
        self.sets = self.gets = 0
        self.end_status: tuple[str, str] | None = None
        self.reply: Any = None  # sends one response message

    def on_message(self, msg: bytes, now: int) -> None:
        if msg[:1] == b"\x08":  # get
            self.gets += 1
            self.reply(b"\x0a\x00")  # state: an empty DeviceStatus
        else:  # anything else is a set, as for the stock client
            self.sets += 1
            self.reply(SUCCESS)

    def on_end(self, status: str, message: str) -> None:
        self.end_status = (status, message)


# -- listener processes --------------------------------------------------------


def listener_process(conn: Connection, cfg: dict[str, Any]) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        if cfg.get("uvloop"):
            import uvloop  # not a hub dependency: pip install uvloop, or PYTHONPATH

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_listener_main(conn, cfg))
        else:
            asyncio.run(_listener_main(conn, cfg))


def _inbox(conn: Connection) -> asyncio.Queue[Any]:
    """Commands from the coordinator, read off the pipe by a thread.

    Not ``loop.add_reader``: uvloop makes the fd non-blocking, and then a
    large ``conn.send`` (the results) fails with EAGAIN.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = ("quit",)
            loop.call_soon_threadsafe(queue.put_nowait, msg)
            if msg[0] == "quit":
                return

    threading.Thread(target=read, daemon=True).start()
    return queue


async def _lag_monitor(lags: list[tuple[int, int]], period: float = 0.01) -> None:
    """Records (time, lag) whenever this loop wakes more than 10 ms late."""
    mono = time.monotonic_ns
    while True:
        before = mono()
        await asyncio.sleep(period)
        lag = mono() - before - int(period * 1e9)
        if lag > 10_000_000:
            lags.append((mono(), lag))


async def _aio_audio(call: Any, listener: AudioListener, eof: Any, rpc_error: Any) -> None:
    read, on_message, mono = call.read, listener.on_message, time.monotonic_ns
    try:
        while True:
            msg = await read()
            if msg is eof:
                listener.on_end("OK", "")
                return
            on_message(msg, mono())
    except rpc_error as error:
        listener.on_end(error.code().name, error.details() or "")
    except asyncio.CancelledError:
        pass


async def _aio_status(call: Any, answerer: StatusAnswerer, eof: Any, rpc_error: Any) -> None:
    pending: list[bytes] = []
    answerer.reply = pending.append
    try:
        while True:
            msg = await call.read()
            if msg is eof:
                answerer.on_end("OK", "")
                return
            answerer.on_message(msg, 0)
            while pending:
                await call.write(pending.pop(0))
    except rpc_error as error:
        answerer.on_end(error.code().name, error.details() or "")
    except asyncio.CancelledError:
        pass


async def _listener_main(conn: Connection, cfg: dict[str, Any]) -> None:
    import grpc
    import opuslib

    from bench.devices_h2 import MuxProtocol
    from bench.h2wire import GrpcMux

    loop = asyncio.get_running_loop()
    inbox = _inbox(conn)
    n, first = cfg["n"], cfg["first"]
    frame_ns = int(cfg["frame_ms"] * 1e6)
    gap_ns = int(cfg["gap_factor"] * frame_ns)
    metadata = [(DEVICE_ID, cfg["room"])]
    listeners = [AudioListener(frame_ns, gap_ns) for _ in range(n)]
    for listener in listeners[: cfg["decode"]]:
        listener.decoder = opuslib.Decoder(48_000, 1)
    statuses = {
        i: StatusAnswerer()
        for i in range(n)
        if cfg["status_every"] and (first + i) % cfg["status_every"] == 0
    }
    lags: list[tuple[int, int]] = []
    lag_task = asyncio.create_task(_lag_monitor(lags))
    protocols: list[Any] = []
    channels: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    host, port = cfg["address"].rsplit(":", 1)
    per = max(1, cfg["per_conn"])
    groups = [list(range(i, min(n, i + per))) for i in range(0, n, per)]
    try:
        if cfg["client"] == "raw":

            async def connect(group: list[int]) -> None:
                mux = GrpcMux(cfg["address"])
                _, protocol = await loop.create_connection(
                    lambda: MuxProtocol(mux), host, int(port)
                )
                for i in group:
                    listener = listeners[i]
                    mux.open(
                        AUDIO,
                        metadata,
                        listener.on_message,
                        listener.on_end,
                        request=START_REQUEST,
                        half_close=True,
                    )
                    answerer = statuses.get(i)
                    if answerer is not None:
                        call = mux.open(STATUS, metadata, answerer.on_message, answerer.on_end)
                        answerer.reply = lambda msg, c=call, m=mux: m.send(c, msg)
                protocol.flush()
                protocols.append(protocol)

            for batch in range(0, len(groups), 50):
                await asyncio.gather(*(connect(g) for g in groups[batch : batch + 50]))
        else:
            for group in groups:
                channel = grpc.aio.insecure_channel(cfg["address"], options=CLIENT_OPTIONS)
                channels.append(channel)
                audio = channel.unary_stream(AUDIO)
                status = channel.stream_stream(STATUS)
                for i in group:
                    call = audio(START_REQUEST, metadata=metadata)
                    tasks.append(
                        asyncio.create_task(
                            _aio_audio(call, listeners[i], grpc.aio.EOF, grpc.aio.AioRpcError)
                        )
                    )
                    if i in statuses:
                        scall = status(metadata=metadata)
                        tasks.append(
                            asyncio.create_task(
                                _aio_status(scall, statuses[i], grpc.aio.EOF, grpc.aio.AioRpcError)
                            )
                        )
        # Each StatusStream opens with the room's frame: wait for them all.
        deadline = loop.time() + cfg["setup_timeout"]
        while any(a.sets + a.gets == 0 for a in statuses.values()):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        conn.send(("opened", sum(a.sets + a.gets > 0 for a in statuses.values()), len(statuses)))

        while True:
            cmd = await inbox.get()
            if cmd[0] == "wait":
                _, kind, k, timeout = cmd
                t0 = loop.time()
                while True:
                    if kind == "start":
                        done = sum(lst.started() >= k for lst in listeners)
                    else:
                        done = sum(len(lst.streams) >= k for lst in listeners)
                    if done == n or loop.time() - t0 > timeout:
                        break
                    await asyncio.sleep(0.01)
                conn.send(("waited", done, loop.time() - t0))
            elif cmd[0] == "collect":
                ends: Counter[str] = Counter()
                for lst in listeners:
                    if lst.end_status is not None:
                        ends[f"audio {lst.end_status[0]}: {lst.end_status[1][:80]}"] += 1
                for ans in statuses.values():
                    if ans.end_status is not None:
                        ends[f"status {ans.end_status[0]}: {ans.end_status[1][:80]}"] += 1
                conn.send(
                    (
                        "collected",
                        {
                            "streams": [lst.streams for lst in listeners],
                            "gap_lists": [lst.gap_list for lst in listeners],
                            "in_stream": sum(lst.in_stream for lst in listeners),
                            "orphans": sum(lst.orphans for lst in listeners),
                            "orphan_ends": sum(lst.orphan_ends for lst in listeners),
                            "double_starts": sum(lst.double_starts for lst in listeners),
                            "decoded": sum(lst.decoded for lst in listeners),
                            "decode_errors": sum(lst.decode_errors for lst in listeners),
                            "status_devices": len(statuses),
                            "status_sets": sum(a.sets for a in statuses.values()),
                            "status_min_sets": min((a.sets for a in statuses.values()), default=0),
                            "ended_calls": dict(ends),
                            "lags": lags,
                        },
                    )
                )
            elif cmd[0] == "quit":
                break
    finally:
        lag_task.cancel()
        for protocol in protocols:
            protocol.close()
        await cancel_and_wait(tasks)
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)


# -- the controller device ---------------------------------------------------


def controller_process(conn: Connection, cfg: dict[str, Any]) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_controller_main(conn, cfg))


async def _controller_main(conn: Connection, cfg: dict[str, Any]) -> None:
    """A stock-client-like device: all three RPCs, one response awaited per event."""
    import grpc
    import opuslib

    from hub.proto import comms_pb2

    inbox = _inbox(conn)
    metadata = ((DEVICE_ID, cfg["room"]),)
    channel = grpc.aio.insecure_channel(cfg["address"])
    frames: list[tuple[int, ...]] = []
    audio_stats: Counter[str] = Counter()
    first_frame = asyncio.Event()
    expected_bytes = int(cfg["frame_ms"] * 48) * 2

    async def status_loop(call: Any) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            while (msg := await call.read()) is not grpc.aio.EOF:
                request = comms_pb2.DeviceStatusRequest.FromString(msg)
                if request.WhichOneof("request") == "get":
                    await call.write(comms_pb2.DeviceStatusResponse(state={}).SerializeToString())
                    continue
                s = request.set
                frames.append(tuple(getattr(s, f"led_{i}").rgba for i in range(6)))
                first_frame.set()
                await call.write(SUCCESS)

    async def audio_loop(call: Any) -> None:
        # Every packet this device gets is decoded, as the stock client does.
        decoder = opuslib.Decoder(48_000, 1)
        in_stream = False
        try:
            while (msg := await call.read()) is not grpc.aio.EOF:
                packet = comms_pb2.AudioPacket.FromString(msg)
                audio_stats["packets"] += 1
                try:
                    pcm = decoder.decode(packet.data, 5760)
                    if len(pcm) != expected_bytes:
                        raise ValueError(len(pcm))
                    audio_stats["decoded"] += 1
                except Exception:
                    audio_stats["decode_errors"] += 1
                if packet.is_start:
                    audio_stats["starts"] += 1
                    if in_stream:
                        audio_stats["double_starts"] += 1
                    in_stream = True
                if packet.is_end:
                    audio_stats["ends"] += 1
                    if not in_stream:
                        audio_stats["orphan_ends"] += 1
                    in_stream = False
            audio_stats["stream ended by server"] += 1
        except grpc.aio.AioRpcError as error:
            audio_stats[f"audio error {error.code().name}"] += 1
        except asyncio.CancelledError:
            pass

    events = channel.stream_stream(EVENTS)(metadata=metadata)
    tasks = [
        asyncio.create_task(status_loop(channel.stream_stream(STATUS)(metadata=metadata))),
        asyncio.create_task(
            audio_loop(channel.unary_stream(AUDIO)(START_REQUEST, metadata=metadata))
        ),
    ]
    try:
        await asyncio.wait_for(first_frame.wait(), cfg["setup_timeout"])
        conn.send(("ready",))
        while True:
            cmd = await inbox.get()
            if cmd[0] == "press":
                sent = time.monotonic_ns()
                await events.write(PRESSES[cmd[1]])
                response = await events.read()
                acked = time.monotonic_ns()
                ack = comms_pb2.DeviceEventResponse.FromString(response).ack
                conn.send(("pressed", sent, acked, ack))
            elif cmd[0] == "frame":
                await asyncio.sleep(0.1)  # the frame follows the ack
                conn.send(("frame", frames[-1] if frames else None))
            elif cmd[0] == "collect":
                conn.send(("collected", dict(audio_stats), len(frames)))
            elif cmd[0] == "quit":
                break
    finally:
        await cancel_and_wait(tasks)
        await channel.close()


# -- the server under test -----------------------------------------------------


class Server(HubProcess):
    """The hub for one device scenario: the long sound, the packet duration."""

    def __init__(self, args: argparse.Namespace, log_dir: Path, label: str, frame_ms: float):
        super().__init__(log_dir / f"server-{label}.log")
        self.args = args
        self.frame_ms = frame_ms

    def start(self) -> None:  # type: ignore[override]
        super().start(
            self.args.server_module,
            [
                "-s", "-p", PASSWORD, "-h", "127.0.0.1:0", "--device-address", "none",
                "--long-sound", "--opus-frame-ms", f"{self.frame_ms:g}",
                *shut_doors(self.args.server_module, self.args.server_cwd), *self.args.server_arg,
            ],
            env=server_env(self.args.server_env),
            cwd=self.args.server_cwd,
        )  # fmt: skip


# -- scenarios and targets -----------------------------------------------------


Scenario = AudioScenario

LATENCY_TARGET_MS = 30.0  # Play -> first packet and Stop -> is_end, p99, at 100 listeners
LATENCY_TARGET_AT = 100
REALTIME_TARGET_AT = 1000  # 0 underruns, nothing dropped


@dataclass
class _Rig:
    """One run's client processes (the controller, then the listeners), what
    the controller pressed, and the profiler if one runs."""

    workers: list[Worker] = field(default_factory=list)
    presses: list[tuple[str, int, int, bool]] = field(default_factory=list)
    spy: subprocess.Popen[bytes] | None = None

    @property
    def ctrl(self) -> Worker:
        return self.workers[0]

    @property
    def listeners(self) -> list[Worker]:
        return self.workers[1:]

    def press(self, name: str) -> tuple[int, int]:
        """Press a button on the controller: (sent, acked) times."""
        _, sent, acked, ack = ask([self.ctrl], ("press", name), "pressed", 30)[0]
        self.presses.append((name, sent, acked, ack))
        return sent, acked

    def wait_all(self, kind: str, k: int, timeout: float) -> int:
        """Until every listener has seen its k-th stream ``kind``; how many did."""
        asked = ask(self.listeners, ("wait", kind, k, timeout), "waited", timeout + 30)
        return sum(m[1] for m in asked)

    def end(self) -> None:
        end_workers(self.workers)
        if self.spy is not None and self.spy.poll() is None:
            self.spy.kill()


def run_scenario(sc: Scenario, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    background = wait_quiet(args.wait_quiet, args.quiet_pct)
    server = Server(args, log_dir, sc.label, sc.frame_ms)
    server.start()
    rig = _Rig()
    try:
        _start_controller(rig, ctx, server, sc, args)
        frame, long_selected = _select_long_sound(rig)
        opened = _start_listeners(rig, ctx, server, sc, args)
        warm_started = _warm_up(rig, args)
        window = _long_stream(rig, server, sc, args)
        ended = _play_stop_cycles(rig, args)
        results = [m[1] for m in ask(rig.listeners, ("collect",), "collected", 60)]
        _, ctrl_audio, ctrl_frames = ask([rig.ctrl], ("collect",), "collected", 30)[0]
        vm_hwm = server.vm_hwm_mb()
        for w in rig.workers:
            w.conn.send(("quit",))
    finally:
        rig.end()
        server.stop()

    return analyse(
        sc,
        args,
        presses=rig.presses,
        results=results,
        **window,
        background=background,
        rss_peak=server.rss_peak,
        vm_hwm=vm_hwm,
        ctrl_audio=ctrl_audio,
        ctrl_frames=ctrl_frames,
        long_selected=long_selected,
        frame=frame,
        warm_started=warm_started,
        ended=ended,
        status_ready=sum(o[1] for o in opened),
        status_devices=sum(o[2] for o in opened),
        procs=len(rig.listeners),
    )


def _start_controller(
    rig: _Rig, ctx: Any, server: Server, sc: Scenario, args: argparse.Namespace
) -> None:
    """The device that presses the buttons, in a process of its own."""
    parent, child = ctx.Pipe()
    cfg = {
        "address": server.address,
        "room": ROOM,
        "frame_ms": sc.frame_ms,
        "setup_timeout": args.setup_timeout,
    }
    ctrl = Worker(
        ctx.Process(target=controller_process, args=(child, cfg), daemon=True),
        parent,
        "controller",
    )
    ctrl.start()
    rig.workers.append(ctrl)
    expect([ctrl], "ready", args.setup_timeout)


def _select_long_sound(rig: _Rig) -> tuple[Any, bool]:
    """Mode x5 selects the long sound: the LED frame then, and whether it says so."""
    for _ in range(LONG_MODE_PRESSES):
        rig.press("mode")
    frame = ask([rig.ctrl], ("frame",), "frame", 10)[0][1]
    return frame, frame is not None and frame[2:] == (CYAN, CYAN, 0, 0)


def _start_listeners(
    rig: _Rig, ctx: Any, server: Server, sc: Scenario, args: argparse.Namespace
) -> list[Any]:
    """The listening devices, spread over processes; each process's "opened"."""
    cfg = {
        "address": server.address,
        "room": ROOM,
        "frame_ms": sc.frame_ms,
        "gap_factor": args.gap_factor,
        "per_conn": args.per_conn,
        "status_every": args.status_every,
        "decode": args.decode,
        "client": args.client,
        "uvloop": args.client_uvloop,
        "setup_timeout": args.setup_timeout,
    }
    listeners = start_spread(ctx, listener_process, "listener", sc.listeners, args.procs, cfg)
    rig.workers += listeners
    return expect(listeners, "opened", args.setup_timeout + 30)


def _warm_up(rig: _Rig, args: argparse.Namespace) -> int:
    """Every listener must get a stream's start (so every stream is open at the
    server), and its end. How many got the start."""
    rig.press("play")
    warm_started = rig.wait_all("start", 1, args.setup_timeout)
    time.sleep(0.2)
    rig.press("stop")
    rig.wait_all("end", 1, 30)
    time.sleep(0.5)
    return warm_started


def _long_stream(
    rig: _Rig, server: Server, sc: Scenario, args: argparse.Namespace
) -> dict[str, Any]:
    """The long stream's measured window: CPU, underruns, packets/s."""
    long_play, _ = rig.press("play")
    rig.wait_all("start", 2, 30)
    time.sleep(args.settle)
    busy0, t0 = machine_busy(), time.monotonic()
    cpu0, lcpu0, ccpu0 = server.cpu(), workers_cpu(rig.listeners), workers_cpu([rig.ctrl])
    if args.py_spy:
        rig.spy = start_py_spy(
            args,
            server.proc.pid,  # type: ignore[union-attr]
            sc.label,
            args.duration,
            rate=200,
        )
    time.sleep(args.duration)
    t1 = time.monotonic()
    cpu1, lcpu1 = server.cpu(), workers_cpu(rig.listeners)
    ccpu1, busy1 = workers_cpu([rig.ctrl]), machine_busy()
    long_stop, _ = rig.press("stop")
    rig.wait_all("end", 2, 30)
    if rig.spy is not None:
        rig.spy.wait(args.duration + 30)
    return {
        "long_play": long_play,
        "long_stop": long_stop,
        "window": t1 - t0,
        "window_ns": (int(t0 * 1e9), int(t1 * 1e9)),
        "server_cpu": cpu1 - cpu0,
        "server_peak_pct": server.peak_cpu_pct(t0, t1),
        "listener_cpu": lcpu1 - lcpu0,
        "controller_cpu": ccpu1 - ccpu0,
        "machine_busy": busy1 - busy0,
    }


def _play_stop_cycles(rig: _Rig, args: argparse.Namespace) -> int:
    """Play/Stop cycles, for the latencies; how many listeners saw every end."""
    for _ in range(args.cycles):
        time.sleep(args.idle)
        rig.press("play")
        time.sleep(args.hold)
        rig.press("stop")
    return rig.wait_all("end", 2 + args.cycles, 30)


def _pct(values: list[float], q: float) -> float | None:
    return percentile(values, q, 3)


def analyse(sc: Scenario, args: argparse.Namespace, **m: Any) -> dict[str, Any]:
    n = sc.listeners
    frame_ns = int(sc.frame_ms * 1e6)
    plays = [sent for name, sent, _, _ in m["presses"] if name == "play"]
    stops = [sent for name, sent, _, _ in m["presses"] if name == "stop"]
    long_index = plays.index(m["long_play"])
    play_lat: list[float] = []
    stop_lat: list[float] = []
    long_streams: list[tuple[int, int, int, int, int, int]] = []
    missing_streams = 0
    gap_times: list[int] = []
    for r in m["results"]:
        for streams, gaps in zip(r["streams"], r["gap_lists"], strict=True):
            seen = set()
            for rec in streams:
                c = bisect.bisect_right(plays, rec[0]) - 1
                if c < 0 or c in seen:
                    continue
                seen.add(c)
                if c == long_index:
                    long_streams.append(rec)
                    gap_times += [t for t, _ in gaps if rec[0] <= t <= rec[1]]
                elif c > long_index:  # the latency cycles (not the warm-up)
                    play_lat.append((rec[0] - plays[c]) / 1e6)
                    stop_lat.append((rec[1] - stops[c]) / 1e6)
            missing_streams += len(plays) - len(seen)

    # The long stream: everything the pacer released before Stop reaches every
    # listener that keeps up (Stop cuts after what is queued). Released count:
    # packet k leaves at start + k*frame - lead, lead 60 ms.
    counts = [rec[2] for rec in long_streams]
    first_arrival = min((rec[0] for rec in long_streams), default=0)
    lead_ns = 60_000_000
    expected = (m["long_stop"] - first_arrival + lead_ns) // frame_ns + 1 if long_streams else 0
    best = max(counts, default=0)
    # Missing: behind the best listener (exact), or more than one packet
    # short of the pacer's count (the estimate of its start is +-1 packet).
    floor_ = max(best, expected - 1)
    missing = sum(floor_ - c for c in counts) + (n - len(long_streams)) * floor_
    # Per listener: packets over the time they span (the first ``lead`` of
    # them leave at once, so the span is start..end arrival plus the lead).
    rates = [
        rec[2] / ((rec[1] - rec[0] + lead_ns) / 1e9) for rec in long_streams if rec[1] > rec[0]
    ]
    underruns = sum(rec[3] for rec in long_streams)
    with_underruns = sum(rec[3] > 0 for rec in long_streams)
    max_gaps = [rec[4] / 1e6 for rec in long_streams]
    slacks = [rec[5] / 1e6 for rec in long_streams if rec[5] < FAR]
    lags = [
        lag / 1e6
        for r in m["results"]
        for t, lag in r["lags"]
        if m["window_ns"][0] <= t <= m["window_ns"][1] + 30e9
    ]
    ends: Counter[str] = Counter()
    for r in m["results"]:
        ends.update(r["ended_calls"])
    acks = [(acked - sent) / 1e6 for _, sent, acked, _ in m["presses"]]
    window = m["window"]
    res: dict[str, Any] = {
        "scenario": sc.label,
        "listeners": n,
        "frame_ms": sc.frame_ms,
        "client": args.client,
        "per_conn": args.per_conn,
        "listener_processes": m["procs"],
        "status_devices": m["status_devices"],
        "status_ready": m["status_ready"],
        "long_sound_selected": m["long_selected"],
        "led_frame_after_mode_x5": [f"{x:08X}" for x in m["frame"]] if m["frame"] else None,
        "warm_up_started": m["warm_started"],
        "window_s": round(window, 3),
        **server_figures(m, window, n),
        # CPU per packet delivered (robust to a machine too busy to keep up:
        # CPU time, not wall time), and what N listeners would need at the
        # nominal rate at that cost.
        "server_us_per_packet": round(1e6 * m["server_cpu"] / (sum(rates) * window), 2)
        if rates
        else None,
        "server_cores_needed": round(
            m["server_cpu"] / (sum(rates) * window) * n * 1000 / sc.frame_ms, 2
        )
        if rates
        else None,
        "listener_cpu_pct": round(100 * m["listener_cpu"] / window, 1),
        "listener_us_per_packet": round(1e6 * m["listener_cpu"] / (sum(rates) * window), 2)
        if rates
        else None,
        "client_uvloop": bool(args.client_uvloop),
        "controller_cpu_pct": round(100 * m["controller_cpu"] / window, 1),
        "machine_busy_pct": round(100 * m["machine_busy"] / window, 1),
        "other_load_pct": round(
            100
            * (m["machine_busy"] - m["server_cpu"] - m["listener_cpu"] - m["controller_cpu"])
            / window,
            1,
        ),
        "background_before_pct": round(m["background"], 1),
        "long_stream_listeners": len(long_streams),
        "packets_per_s_total": round(sum(rates), 1),
        "packets_per_s_listener_mean": round(sum(rates) / len(rates), 2) if rates else 0.0,
        "packets_per_s_listener_min": round(min(rates), 2) if rates else 0.0,
        "packets_per_s_nominal": round(1000 / sc.frame_ms, 2),
        "long_stream_s": round((m["long_stop"] - m["long_play"]) / 1e9, 2),
        "packets_expected": int(expected),
        "packets_max_received": best,
        "packets_min_received": min(counts, default=0),
        "packets_missing": int(missing),
        "listeners_missing_packets": sum(c < floor_ for c in counts) + (n - len(long_streams)),
        "underrun_gap_ms": args.gap_factor * sc.frame_ms,
        "underruns": underruns,
        "listeners_with_underruns": with_underruns,
        "underrun_instants": underrun_clusters(sorted(gap_times), frame_ns),
        "max_gap_ms": {
            "p50": _pct(max_gaps, 50),
            "p99": _pct(max_gaps, 99),
            "max": round(max(max_gaps), 2) if max_gaps else None,
        },
        "min_slack_ms": {
            "min": round(min(slacks), 2) if slacks else None,
            "p1": _pct(slacks, 1),
            "late_listeners": sum(s < 0 for s in slacks),
        },
        "play_to_first_packet_ms": _lat(play_lat),
        "stop_to_end_ms": _lat(stop_lat),
        "latency_cycles": args.cycles,
        "press_ack_ms": _lat(acks),
        "missing_streams": missing_streams,
        "client_loop_lag_ms": {"count": len(lags), "max": round(max(lags), 1) if lags else 0.0},
        "orphan_packets": sum(r["orphans"] for r in m["results"]),
        "orphan_ends": sum(r["orphan_ends"] for r in m["results"]),
        "double_starts": sum(r["double_starts"] for r in m["results"]),
        "left_in_stream": sum(r["in_stream"] for r in m["results"]),
        "decoded_sample": sum(r["decoded"] for r in m["results"]),
        "decode_errors_sample": sum(r["decode_errors"] for r in m["results"]),
        "controller_audio": m["ctrl_audio"],
        "controller_led_frames": m["ctrl_frames"],
        "status_sets_answered": sum(r["status_sets"] for r in m["results"]),
        "status_min_sets": min(
            (r["status_min_sets"] for r in m["results"] if r["status_devices"]), default=0
        ),
        "calls_ended": dict(ends),
    }
    res["errors"] = (
        res["orphan_ends"]
        + res["double_starts"]
        + res["decode_errors_sample"]
        + res["missing_streams"]
        + sum(ends.values())
        + res["left_in_stream"]
        + m["ctrl_audio"].get("decode_errors", 0)
        + m["ctrl_audio"].get("orphan_ends", 0)
        + (0 if res["long_sound_selected"] else 1)
    )
    res["checks"] = check(res)
    res["pass"] = all(res["checks"].values()) if res["checks"] else None
    return res


def _lat(values: list[float]) -> dict[str, Any]:
    return latencies(values, 3)


def check(res: dict[str, Any]) -> dict[str, bool]:
    out = {"errors": res["errors"] == 0}
    out["realtime"] = (
        res["underruns"] == 0
        and res["packets_missing"] == 0
        and res["long_stream_listeners"] == res["listeners"]
    )
    if res["listeners"] == LATENCY_TARGET_AT:
        for key in ("play_to_first_packet_ms", "stop_to_end_ms"):
            p99 = res[key]["p99"]
            out[key] = p99 is not None and p99 < LATENCY_TARGET_MS
    return out


# -- output --------------------------------------------------------------------


def describe(res: dict[str, Any]) -> str:
    pl, st = res["play_to_first_packet_ms"], res["stop_to_end_ms"]
    target = f" (target at {REALTIME_TARGET_AT})" if res["listeners"] == REALTIME_TARGET_AT else ""
    lines = [
        f"== {res['scenario']}: {res['listeners']} listeners ({res['listener_processes']} procs, "
        f"client {res['client']}{'+uvloop' if res['client_uvloop'] else ''},"
        f" {res['per_conn']}/conn, {res['status_devices']} with "
        f"StatusStream) + 1 controller; long sound selected: {res['long_sound_selected']}",
        f"   server CPU       {res['server_cpu_pct']:.0f}% of a core over {res['window_s']:.1f} s"
        f" (busiest 1 s {res['server_cpu_peak_1s_pct']:.0f}%),"
        f" {res['server_cpu_per_listener_pct']:.3f}% per listener;"
        f" {res['server_us_per_packet']} us per packet delivered"
        f" (=> {res['server_cores_needed']} cores at the nominal rate)",
        f"   machine          busy {res['machine_busy_pct']:.0f}% (of 200%): listeners"
        f" {res['listener_cpu_pct']:.0f}% ({res['listener_us_per_packet']} us/packet),"
        f" controller {res['controller_cpu_pct']:.0f}%,"
        f" other {res['other_load_pct']:.0f}%; client loop lags >10 ms:"
        f" {res['client_loop_lag_ms']['count']} (max {res['client_loop_lag_ms']['max']} ms)",
        f"   server RSS       peak {res['server_rss_peak_mb']:.0f} MB"
        f" (VmHWM {res['server_vmhwm_mb']} MB)",
        f"   packets/s        {res['packets_per_s_total']:.0f} total,"
        f" {res['packets_per_s_listener_mean']:.2f} per listener (min"
        f" {res['packets_per_s_listener_min']:.2f}, nominal {res['packets_per_s_nominal']:g})",
        f"   underruns        {res['underruns']} gaps > {res['underrun_gap_ms']:g} ms in"
        f" {res['listeners_with_underruns']} listeners; max gap p50/p99/max"
        f" {ms(res['max_gap_ms']['p50'])}/{ms(res['max_gap_ms']['p99'])}/"
        f"{ms(res['max_gap_ms']['max'])} ms; min slack {ms(res['min_slack_ms']['min'])} ms"
        + mark(res, "realtime")
        + target,
        f"   packets          {res['packets_expected']} released in {res['long_stream_s']} s;"
        f" received max {res['packets_max_received']} min {res['packets_min_received']};"
        f" missing {res['packets_missing']} in {res['listeners_missing_packets']} listeners",
        f"   Play->1st packet p50 {ms(pl['p50'])}  p99 {ms(pl['p99'])}  max {ms(pl['max'])} ms"
        f"  (n={pl['n']})" + mark(res, "play_to_first_packet_ms"),
        f"   Stop->is_end     p50 {ms(st['p50'])}  p99 {ms(st['p99'])}  max {ms(st['max'])} ms"
        f"  (n={st['n']})" + mark(res, "stop_to_end_ms"),
        f"   checks           decoded {res['decoded_sample']} (errors"
        f" {res['decode_errors_sample']}), controller {res['controller_audio']};"
        f" status sets answered {res['status_sets_answered']}; errors {res['errors']}"
        + mark(res, "errors"),
    ]
    if res["calls_ended"]:
        lines.append(f"   calls ended      {res['calls_ended']}")
    lines += underrun_and_noise_lines(res)
    if res["pass"] is not None:
        lines.append(f"   => {'PASS' if res['pass'] else 'FAIL'}")
    return "\n".join(lines)


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "scenario",
        "srv CPU",
        "/listener",
        "RSS MB",
        "pkt/s",
        "/listener",
        "underruns",
        "missing",
        "play p50/p99",
        "stop p50/p99",
        "verdict",
    )
    rows = [head]
    for r in results:
        pl, st = r["play_to_first_packet_ms"], r["stop_to_end_ms"]
        rows.append(
            (
                r["scenario"],
                f"{r['server_cpu_pct']:.0f}%",
                f"{r['server_cpu_per_listener_pct']:.3f}%",
                f"{r['server_rss_peak_mb']:.0f}",
                f"{r['packets_per_s_total']:.0f}",
                f"{r['packets_per_s_listener_mean']:.2f}",
                f"{r['underruns']} ({r['listeners_with_underruns']})" + mark(r, "realtime"),
                f"{r['packets_missing']}",
                f"{ms(pl['p50'])}/{ms(pl['p99'])}" + mark(r, "play_to_first_packet_ms"),
                f"{ms(st['p50'])}/{ms(st['p99'])}" + mark(r, "stop_to_end_ms"),
                "-" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL"),
            )
        )
    return columns(rows)


# -- command line ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.devices",
        description="Device audio fan-out benchmark: N devices in one room on the long sound.",
    )
    p.add_argument("--listeners", default="100,500,1000", help="comma list of listener counts")
    p.add_argument("--frame-ms", default="20", help="comma list of packet durations (ms)")
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        help="N@MS (e.g. 1000@60), repeatable or comma list; overrides the above",
    )
    p.add_argument(
        "--no-fallback",
        action="store_true",
        help="do not add a 60 ms run at 1000 listeners when 20 ms misses real time",
    )
    p.add_argument("--duration", type=float, default=12.0, help="seconds of the long stream window")
    p.add_argument("--settle", type=float, default=1.0, help="seconds after Play before the window")
    p.add_argument("--cycles", type=int, default=15, help="Play/Stop cycles for latencies")
    p.add_argument("--hold", type=float, default=0.5, help="seconds playing per cycle")
    p.add_argument("--idle", type=float, default=0.3, help="seconds idle between cycles")
    p.add_argument("--procs", type=int, default=2, help="listener processes")
    p.add_argument(
        "--client",
        choices=["raw", "aio"],
        default="raw",
        help="listeners' client: raw = minimal HTTP/2 (bench/devices_h2.py, default); "
        "aio = grpc.aio",
    )
    p.add_argument(
        "--client-uvloop",
        action="store_true",
        help="run the listener processes on uvloop (pip install uvloop, or put it on "
        "PYTHONPATH): several times less client CPU per packet with --client raw",
    )
    p.add_argument(
        "--per-conn",
        type=int,
        default=1,
        help="devices sharing one connection (raw) or channel (aio); 1 = as real devices",
    )
    p.add_argument(
        "--status-every",
        type=int,
        default=10,
        help="every K-th listener also opens StatusStream (0: none)",
    )
    p.add_argument("--decode", type=int, default=2, help="listeners per process that decode Opus")
    p.add_argument(
        "--gap-factor",
        type=float,
        default=3.0,
        help="an inter-packet gap above this many packet durations is an underrun",
    )
    p.add_argument(
        "--noisy-pct",
        type=float,
        default=20.0,
        help="a window with more other load than this (%% of a core) is noisy",
    )
    p.add_argument("--retry-noisy", type=int, default=2, help="reruns of a noisy scenario")
    p.add_argument("--setup-timeout", type=float, default=120.0)
    add_common_options(p)
    return p


def scenarios_from(args: argparse.Namespace) -> list[Scenario]:
    if args.scenario:
        out = []
        for item in args.scenario:
            for s in filter(None, item.split(",")):
                n, _, frame = s.partition("@")
                out.append(Scenario(int(n), float(frame.removesuffix("ms") or 20)))
        return out
    return [
        Scenario(int(n), float(frame))
        for frame in args.frame_ms.split(",")
        for n in args.listeners.split(",")
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scenarios = scenarios_from(args)
    log_dir = begin(args, "devices")
    print(
        f"bench.devices: {', '.join(s.label for s in scenarios)}; {args.duration:g} s window,"
        f" {args.cycles} Play/Stop cycles; {os.cpu_count()} CPUs, Python"
        f" {platform.python_version()}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    queue = list(scenarios)
    while queue:
        sc = queue.pop(0)
        for _ in range(args.repeat):
            run = functools.partial(run_scenario, sc, args, log_dir)
            res = attempt(sc.label, functools.partial(quietest_run, run, args), results)
            if res is None:
                continue
            print(describe(res), flush=True)
            results.append(res)
            fallback = Scenario(REALTIME_TARGET_AT, 60.0)
            if (
                not args.no_fallback
                and sc == Scenario(REALTIME_TARGET_AT, 20.0)
                and not res["checks"]["realtime"]
                and fallback not in scenarios
                and fallback not in queue
            ):
                print("   1000 listeners at 20 ms missed real time: adding 1000@60ms", flush=True)
                queue.append(fallback)
    ran = [r for r in results if "error" not in r]
    if ran:
        print("\n" + table(ran))
    finish(args, results, log_dir)
    return 0  # a benchmark reports; it does not fail (see bench/README.md)


if __name__ == "__main__":
    sys.exit(main())
