"""Listener processes for ``python -m bench.tcp`` (see bench/README.md, "TCP streaming").

Each process runs one asyncio loop holding many raw TCP connections to the
hub's streaming door (docs/protocol.md), one ``Listener`` (an
``asyncio.Protocol``) and one ``hub.tcp.codec.Connection(Role.CLIENT)`` each.

The hot path is lean: ``data_received`` splits the bytes into frames itself
and reads an AUDIO frame's stream id and seq with one ``struct`` call (about
0.4 us), checking the id against the codec's open downlink stream; every
other frame goes through the codec, which keeps the connection's state
(AUDIO moves no state, so the codec stays exact). ``--parse codec`` sends
every frame through the codec instead (about 9 us a frame: 0.45 s of CPU a
second at 1,000 listeners x 50 frames/s, taken from the server's two cores).
Only ``decode`` listeners per process decode their Opus packets (opuslib), as
a validity sample.

Reading (``--io``): with ``epoll`` (default) the process's sockets are
registered in an epoll set of their own, whose descriptor the asyncio loop
watches: one loop callback per wake-up reads every ready socket (one
``recv`` each) and hands the bytes to its ``Listener.data_received``. With
``protocol`` each socket is an asyncio transport with the ``Listener`` as its
protocol: one loop callback, selector entry and ``_read_ready`` per frame
received, which at 1,000 listeners costs the listeners about as much CPU as
the server spends sending (they then read late, and the gaps they measure are
their own).

Commands come from the coordinator over a pipe (read by the loop itself) and
every answer is one message back. Times are ``time.monotonic_ns()``, one
clock for every process on Linux.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import select
import socket
import struct
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from hub.tcp import codec as proto

_LEN = struct.Struct("!I")
_AUDIO_HEAD = struct.Struct("!II")  # stream id, seq (after length and type)
AUDIO = 0x21
HEADER = 4
AUDIO_PAYLOAD_AT = HEADER + 1 + 8
U32 = 1 << 32
_mono = time.monotonic_ns


class Listener(asyncio.Protocol):
    """One TCP listener: its codec, its stream, and what it measured."""

    def __init__(self, index: int, frame_ns: int, gap_ns: int, lean: bool) -> None:
        self.index = index
        self.frame_ns = frame_ns
        self.gap_ns = gap_ns
        self.lean = lean
        self.codec = proto.Connection(proto.Role.CLIENT)
        self.transport: Any = None  # an asyncio transport, or a RawTransport
        self.buf = b""
        self.decoder: Any = None
        self.decoded = self.decode_errors = 0
        # Connection and control state.
        self.welcomed = asyncio.get_running_loop().create_future()
        self.joined: str | None = None
        self.lost = False
        self.tracks: list[proto.TrackInfo] = []
        self.listed = False
        self.errors: list[tuple[str, bool, str]] = []
        self.violations: list[str] = []
        self.stream: int | None = None  # open downlink stream (mirrors the codec)
        self.stream_track: int | None = None
        self.starts = self.ends = 0
        self.end_reasons: Counter[str] = Counter()
        self.first_audio_streams = 0  # streams whose first AUDIO arrived
        self.bad_audio = 0  # AUDIO for a stream that is not the open one
        # Per stream: seq continuity and arrival gaps.
        self.audio_stream: int | None = None
        self.next_seq = 0
        self.last = 0  # arrival of the last AUDIO
        # Window counters (reset by ``reset``).
        self.frames = self.bytes = self.underruns = self.seq_gaps = self.max_gap = 0
        self.gap_list: list[tuple[int, int]] = []
        # Latency probes: PLAY sent at ``probe_sent`` for ``probe_track``.
        self.probe_track: int | None = None
        self.probe_sent = 0
        self.probe_stream: int | None = None
        self.probe_start_at = 0
        self.probe_done: asyncio.Future[int] | None = None
        self.end_waiter: asyncio.Future[str] | None = None

    # -- transport ----------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.send(proto.Hello(proto.PROTOCOL_VERSION, f"bench-{self.index}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError(f"lost before WELCOME: {exc}"))
        for fut in (self.probe_done, self.end_waiter):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("connection lost"))

    def eof_received(self) -> bool:
        self._feed_codec(b"", _mono())
        self.close()
        return False

    def send(self, message: proto.Message) -> None:
        if self.transport is not None:
            self.transport.write(self.codec.send(message))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- receiving: the hot path ---------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = _mono()
        if not self.lean:
            self._feed_codec(data, now)
            return
        if self.buf:
            data = self.buf + data
            self.buf = b""
        end = len(data)
        pos = 0
        unpack_len = _LEN.unpack_from
        while end - pos > HEADER:
            length = unpack_len(data, pos)[0]
            if length == 0 or length > proto.DEFAULT_MAX_FRAME_SIZE:
                self._feed_codec(data[pos:], now)  # the codec reports the violation
                return
            stop = pos + HEADER + length
            if stop > end:
                break
            if data[pos + HEADER] == AUDIO and length > 9:
                stream, seq = _AUDIO_HEAD.unpack_from(data, pos + HEADER + 1)
                if stream != self.stream:
                    self.bad_audio += 1
                else:
                    self.on_audio(stream, seq, length + HEADER, now)
                    if self.decoder is not None:
                        self._decode(data[pos + AUDIO_PAYLOAD_AT : stop])
            else:
                self._feed_codec(data[pos:stop], now)
            pos = stop
        if pos < end:
            self.buf = data[pos:]

    def on_audio(self, stream: int, seq: int, size: int, now: int) -> None:
        if stream == self.audio_stream:
            gap = now - self.last
            if gap > self.max_gap:
                self.max_gap = gap
            if gap > self.gap_ns:
                self.underruns += 1
                if len(self.gap_list) < 20:
                    self.gap_list.append((now, gap))
            if seq != self.next_seq:
                self.seq_gaps += (seq - self.next_seq) % U32
        else:
            self.audio_stream = stream
            self.first_audio_streams += 1
            if stream == self.probe_stream:
                self.probe_stream = None
                done = self.probe_done
                if done is not None and not done.done():
                    done.set_result(now)
        self.next_seq = (seq + 1) % U32
        self.last = now
        self.frames += 1
        self.bytes += size

    def _decode(self, packet: bytes) -> None:
        try:
            pcm = self.decoder.decode(packet, 5760)
            if len(pcm) != self.frame_ns * 48 // 1_000_000 * 2:
                raise ValueError(len(pcm))
            self.decoded += 1
        except Exception:
            self.decode_errors += 1

    def _feed_codec(self, data: bytes, now: int) -> None:
        codec = self.codec
        codec.receive_data(data)
        for event in codec.events():
            if isinstance(event, proto.Audio):
                self.on_audio(event.stream_id, event.seq, len(event.packet) + AUDIO_PAYLOAD_AT, now)
                if self.decoder is not None:
                    self._decode(event.packet)
            else:
                self._on_event(event, now)

    def _on_event(self, event: proto.Event, now: int) -> None:
        if isinstance(event, proto.StreamStart):
            self.stream = event.stream_id
            self.stream_track = event.track_id
            self.starts += 1
            if self.probe_track is not None and event.track_id == self.probe_track:
                self.probe_track = None
                self.probe_stream = event.stream_id
                self.probe_start_at = now
        elif isinstance(event, proto.StreamEnd):
            self.stream = None
            self.ends += 1
            self.end_reasons[event.reason.name.lower()] += 1
            waiter = self.end_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(event.reason.name.lower())
        elif isinstance(event, proto.Welcome):
            if not self.welcomed.done():
                self.welcomed.set_result(now)
        elif isinstance(event, proto.Joined):
            self.joined = event.room
        elif isinstance(event, proto.Left):
            if self.joined == event.room:
                self.joined = None
        elif isinstance(event, proto.ListResult):
            self.tracks.extend(event.tracks)
            self.listed = not event.more
        elif isinstance(event, proto.Error):
            self.errors.append((event.code.label, event.fatal, event.text[:100]))
        elif isinstance(event, proto.ProtocolViolation):
            self.violations.append(f"{event.code.label}: {event.text[:100]}")
            if self.transport is not None:
                self.transport.write(self.codec.error_frame())
                self.transport.close()
        elif isinstance(event, proto.ConnectionClosed):
            self.close()
        # PING from the server would need a PONG; the hub does not ping.
        elif isinstance(event, proto.Ping):
            self.send(proto.Pong(event.nonce))

    # -- measurement ---------------------------------------------------------

    def reset(self) -> None:
        self.frames = self.bytes = self.underruns = self.seq_gaps = self.max_gap = 0
        self.gap_list = []

    def snapshot(self, now: int) -> tuple[int, int, int, int, int, int]:
        """(frames, bytes, underruns, seq gaps, max gap, open gap at the end)."""
        open_gap = now - self.last if self.last else now
        underruns = self.underruns + (open_gap > self.gap_ns)
        return (
            self.frames,
            self.bytes,
            underruns,
            self.seq_gaps,
            max(self.max_gap, open_gap),
            open_gap,
        )

    # -- latency probes ------------------------------------------------------

    async def play(self, track: int, timeout: float) -> tuple[int, int]:
        """PLAY ``track``: (ns to its STREAM_START, ns to its first AUDIO)."""
        loop = asyncio.get_running_loop()
        self.probe_done = loop.create_future()
        self.probe_track = track
        self.probe_stream = None
        self.probe_sent = sent = _mono()
        self.send(proto.Play(track))
        first = await asyncio.wait_for(self.probe_done, timeout)
        return self.probe_start_at - sent, first - sent

    async def stop(self, timeout: float) -> str:
        if self.stream is None:
            return "idle"
        self.end_waiter = asyncio.get_running_loop().create_future()
        self.send(proto.Stop())
        return await asyncio.wait_for(self.end_waiter, timeout)


# -- raw sockets under one epoll set ----------------------------------------------


class EpollReader:
    """Sockets in an epoll set of their own; the loop watches its descriptor."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.entries: dict[int, tuple[socket.socket, Listener]] = {}
        self.wakeups = 0
        loop.add_reader(self.epoll.fileno(), self._ready)

    def add(self, sock: socket.socket, listener: Listener) -> None:
        self.entries[sock.fileno()] = (sock, listener)
        self.epoll.register(sock.fileno(), select.EPOLLIN)

    def remove(self, fd: int) -> None:
        if self.entries.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)

    def _ready(self) -> None:
        self.wakeups += 1
        entries = self.entries
        for fd, _ in self.epoll.poll(0):
            entry = entries.get(fd)
            if entry is None:
                continue
            sock, listener = entry
            try:
                data = sock.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as error:
                assert listener.transport is not None
                listener.transport.abort(error)
                continue
            if data:
                listener.data_received(data)
            else:
                listener.eof_received()

    def close(self) -> None:
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()


class RawTransport:
    """The few transport methods a Listener uses, on a raw non-blocking socket."""

    def __init__(self, sock: socket.socket, reader: EpollReader, listener: Listener) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.reader = reader
        self.listener = listener
        self.pending = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.pending:
            self.pending += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            self.abort(error)
            return
        if sent < len(data):
            self.pending = data[sent:]
            self.reader.loop.add_writer(self.fd, self._flush)

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.abort(error)
            return
        self.pending = self.pending[sent:]
        if not self.pending:
            self.reader.loop.remove_writer(self.fd)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.abort(None)

    def abort(self, error: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.pending:
            self.reader.loop.remove_writer(self.fd)
        self.reader.remove(self.fd)
        self.sock.close()
        self.listener.connection_lost(error)


async def open_raw(reader: EpollReader, host: str, port: int, listener: Listener) -> None:
    loop = reader.loop
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    transport = RawTransport(sock, reader, listener)
    reader.add(sock, listener)
    listener.connection_made(transport)


# -- the worker process -------------------------------------------------------


def worker_process(conn: Connection, cfg: dict[str, Any]) -> None:
    if cfg.get("nice"):
        os.nice(cfg["nice"])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_worker_main(conn, cfg))


def _inbox(conn: Connection) -> asyncio.Queue[Any]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def readable() -> None:
        try:
            queue.put_nowait(conn.recv())
        except EOFError:
            loop.remove_reader(conn.fileno())
            queue.put_nowait(("quit",))

    loop.add_reader(conn.fileno(), readable)
    return queue


async def _lag_monitor(lags: list[tuple[int, int]], period: float = 0.01) -> None:
    """Records (time, lag) whenever this loop wakes more than 10 ms late."""
    while True:
        before = _mono()
        await asyncio.sleep(period)
        lag = _mono() - before - int(period * 1e9)
        if lag > 10_000_000:
            lags.append((_mono(), lag))


async def _keepalive(listeners: list[Listener], every: float) -> None:
    """PING each connection every ``every`` s (the protocol asks a third of
    the idle timeout), spread over the period."""
    nonce = 0
    while True:
        step = every / max(1, len(listeners))
        for lst in listeners:
            await asyncio.sleep(step)
            if lst.transport is not None and lst.codec.state is proto.State.READY:
                nonce += 1
                lst.send(proto.Ping(nonce))


async def _until(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _sleep_until_ns(t_ns: int) -> None:
    delay = (t_ns - _mono()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


async def _probe_round(
    lst: Listener, at_ns: int, first: int, second: int, hold: float, timeout: float
) -> dict[str, Any]:
    """PLAY ``first`` at ``at_ns``; after ``hold`` s of it, PLAY ``second``
    (a switch); after ``hold`` s more, STOP."""
    out: dict[str, Any] = {}
    await _sleep_until_ns(at_ns)
    try:
        out["play_start"], out["play_audio"] = await lst.play(first, timeout)
        await asyncio.sleep(hold)
        out["switch_start"], out["switch_audio"] = await lst.play(second, timeout)
        await asyncio.sleep(hold)
        out["stop"] = await lst.stop(timeout)
    except (TimeoutError, ConnectionError) as error:
        out["failed"] = f"{type(error).__name__} {error}"
    return out


async def _worker_main(conn: Connection, cfg: dict[str, Any]) -> None:
    import opuslib

    loop = asyncio.get_running_loop()
    inbox = _inbox(conn)
    n = cfg["n"]
    frame_ns = int(cfg["frame_ms"] * 1e6)
    gap_ns = int(cfg["gap_factor"] * frame_ns)
    host, port = cfg["address"].rsplit(":", 1)
    lean = cfg["parse"] == "lean"
    reader = EpollReader(loop) if cfg["io"] == "epoll" else None
    listeners: list[Listener] = []
    lags: list[tuple[int, int]] = []
    tasks = [asyncio.create_task(_lag_monitor(lags))]
    window_t0 = 0
    rng = random.Random(cfg["index"])
    try:
        while True:
            cmd = await inbox.get()
            op = cmd[0]
            if op == "connect":
                t0 = _mono()

                async def open_one(i: int) -> Listener:
                    if reader is None:
                        _, lst = await loop.create_connection(
                            lambda: Listener(cfg["first"] + i, frame_ns, gap_ns, lean),
                            host,
                            int(port),
                        )
                    else:
                        lst = Listener(cfg["first"] + i, frame_ns, gap_ns, lean)
                        await open_raw(reader, host, int(port), lst)
                    await asyncio.wait_for(lst.welcomed, cfg["setup_timeout"])
                    return lst

                failed: Counter[str] = Counter()
                for batch in range(0, n, cfg["connect_batch"]):
                    got = await asyncio.gather(
                        *(open_one(i) for i in range(batch, min(n, batch + cfg["connect_batch"]))),
                        return_exceptions=True,
                    )
                    for item in got:
                        if isinstance(item, Listener):
                            listeners.append(item)
                        else:
                            failed[f"{type(item).__name__}: {item}"[:120]] += 1
                for lst in listeners[: cfg["decode"]]:
                    lst.decoder = opuslib.Decoder(48_000, 1)
                tracks: list[tuple[int, str, int | None]] = []
                if listeners:
                    probe = listeners[0]
                    probe.send(proto.ListTracks())
                    await _until(lambda p=probe: p.listed, cfg["setup_timeout"])
                    tracks = [(t.track_id, t.title, t.duration_ms) for t in probe.tracks]
                tasks.append(asyncio.create_task(_keepalive(listeners, cfg["ping_every"])))
                conn.send(("connected", len(listeners), dict(failed), tracks, _mono() - t0))
            elif op == "join":
                room = cmd[1]
                for lst in listeners:
                    lst.send(proto.Join(room))
                ok = await _until(
                    lambda room=room: all(lst.joined == room for lst in listeners),
                    cfg["setup_timeout"],
                )
                conn.send(("joined", sum(lst.joined == room for lst in listeners), ok))
            elif op == "wait_audio":
                # Every listener in a stream whose first AUDIO arrived.
                _, k, timeout = cmd
                t0 = _mono()
                await _until(
                    lambda k=k: all(lst.first_audio_streams >= k for lst in listeners), timeout
                )
                done = sum(lst.first_audio_streams >= k for lst in listeners)
                conn.send(("waited", done, _mono() - t0))
            elif op == "wait_end":
                _, k, timeout = cmd
                await _until(lambda k=k: all(lst.ends >= k for lst in listeners), timeout)
                conn.send(("ended", sum(lst.ends >= k for lst in listeners)))
            elif op == "window_start":
                for lst in listeners:
                    lst.reset()
                window_t0 = _mono()
                conn.send(("started", window_t0))
            elif op == "window_end":
                now = _mono()
                snaps = [lst.snapshot(now) for lst in listeners]
                conn.send(
                    (
                        "window",
                        {
                            "t0": window_t0,
                            "t1": now,
                            "per_listener": snaps,
                            "gap_lists": [lst.gap_list for lst in listeners if lst.gap_list],
                            "lags": [lag for t, lag in lags if t >= window_t0],
                        },
                    )
                )
            elif op == "probe_round":
                # One latency round: every listener PLAYs a track at t0 (burst)
                # or at t0 + a random offset in [0, spread) s.
                _, t0_ns, spread, track_ids, hold, timeout = cmd
                coros = []
                for lst in listeners:
                    first, second = rng.sample(track_ids, 2)
                    offset = int(rng.random() * spread * 1e9) if spread > 0 else 0
                    coros.append(_probe_round(lst, t0_ns + offset, first, second, hold, timeout))
                results = await asyncio.gather(*coros)
                conn.send(("probed", results))
            elif op == "collect":
                errors: Counter[str] = Counter()
                for lst in listeners:
                    for code, fatal, text in lst.errors:
                        errors[f"{code}{' (fatal)' if fatal else ''}: {text}"] += 1
                conn.send(
                    (
                        "collected",
                        {
                            "connected": len(listeners),
                            "lost": sum(lst.lost for lst in listeners),
                            "errors": dict(errors),
                            "violations": [v for lst in listeners for v in lst.violations][:20],
                            "bad_audio": sum(lst.bad_audio for lst in listeners),
                            "starts": sum(lst.starts for lst in listeners),
                            "ends": sum(lst.ends for lst in listeners),
                            "end_reasons": dict(
                                sum((lst.end_reasons for lst in listeners), Counter())
                            ),
                            "decoded": sum(lst.decoded for lst in listeners),
                            "decode_errors": sum(lst.decode_errors for lst in listeners),
                            "lags": lags,
                        },
                    )
                )
            elif op == "quit":
                break
            else:
                conn.send(("error", f"unknown command {op!r}"))
    finally:
        for task in tasks:
            task.cancel()
        for lst in listeners:
            lst.close()
        await asyncio.sleep(0.05)
        if reader is not None:
            reader.close()
