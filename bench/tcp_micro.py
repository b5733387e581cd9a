"""Micro-benchmark of the TCP server's room fan-out: ``python -m bench.tcp_micro``.

What one room AUDIO frame costs the hub per TCP listener, in-process, with
real loopback TCP connections: a real ``StreamServer`` and hub, N plain
sockets that send HELLO and JOIN, then frames published on the room's audio
channel the way the room's player does (``Hub._deliver``). Only the
synchronous fan-out is timed (``hub.broker.publish`` to the last
``transport.write``); the listeners' sockets are drained, untimed, between
frames. Variants (``--variant``, comma list), each timed in turn, interleaved
``--rounds`` times so a busy machine disturbs them alike:

- ``current``: the hub as it is (``RoomListener.deliver`` ->
  ``ClientConnection.send_frame`` -> ``Connection.send`` -> ``write``).
- ``fastsend``: the same, but ``Connection.send`` takes a fast path for a
  prepared AUDIO frame of the open downlink stream in READY (the state check
  is the same; it skips the generic rule lookup): a proposal.
- ``fastdeliver``: ``RoomListener.deliver`` writes a prepared AUDIO frame of
  the listener's current stream straight to ``write`` after the same checks
  (state READY, downlink = the frame's stream): a proposal.
- ``write``: only ``transport.write`` of the bytes to every listener (the
  floor: the asyncio transport and the kernel's loopback TCP).
- ``send``: only ``socket.send`` of the bytes on every listener's socket (the
  kernel's share alone).
- ``write2``: ``transport.write`` of two frames at once to every listener,
  counted per frame: what coalescing two 20 ms frames per write would cost
  (a proposal: the room's fan-out writing every 40 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from typing import Any

from hub.core.events import AudioFrame
from hub.core.hub import Hub
from hub.core.publication import Publication
from hub.settings import Settings
from hub.tcp import codec as proto
from hub.tcp import downlink
from hub.tcp import server as tcp_server

ROOM = "micro"


def _fast_send(original: Any) -> Any:
    audio_type = proto.FrameType.AUDIO
    ready = proto.State.READY

    def send(self: proto.Connection, message: Any) -> bytes:
        if (
            type(message) is proto.Prepared
            and message.message.TYPE is audio_type
            and self.role is proto.Role.SERVER
            and self._state is ready
            and self._slots[0] == message.message.stream_id  # type: ignore[union-attr]
        ):
            return message.data
        return original(self, message)  # type: ignore[no-any-return]

    return send


def _fast_deliver(original: Any) -> Any:
    ready = proto.State.READY

    def deliver(self: downlink.RoomListener, pub: Publication) -> None:
        frame = pub.event
        if frame.stream_id == self._gate.current and not frame.is_end:
            client = self._client
            codec = client.codec
            if codec._state is ready and codec._slots[0] == frame.stream_id:
                if client._transport is not None:
                    client.write(pub.encoded(downlink.tcp_audio).data, droppable=pub.droppable)
                return
        original(self, pub)

    return deliver


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    hub = Hub(Settings(), secret=b"m" * 40)
    await hub.broker.start(hub._deliver)
    server = tcp_server.StreamServer(hub, None)
    host, port = (await server.start("127.0.0.1:0")).rsplit(":", 1)
    hello = proto.encode(proto.Hello(1, "micro"))
    join = proto.encode(proto.Join(ROOM))
    socks: list[socket.socket] = []
    for i in range(args.listeners):
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, (host, int(port)))
        await loop.sock_sendall(s, hello)
        socks.append(s)
        if i % 50 == 49:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    for s in socks:
        await loop.sock_sendall(s, join)
    channel = f"room:{ROOM}:audio"
    for _ in range(1200):  # the hub keeps a count, not an event
        if hub.subscriber_count(channel) >= args.listeners:
            break
        await asyncio.sleep(0.05)
    packet = b"\xf8" + bytes(range(256))[: args.packet - 1]
    stream = 1
    clients = list(server.clients)
    sent_bytes = proto.encode(proto.Audio(stream, 0, packet))

    def drain() -> None:
        for s in socks:
            try:
                while s.recv(1 << 16):
                    pass
            except BlockingIOError:
                pass

    originals = (proto.Connection.send, downlink.RoomListener.deliver)

    def install(variant: str) -> None:
        proto.Connection.send, downlink.RoomListener.deliver = originals  # type: ignore[method-assign]
        if variant == "fastsend":
            proto.Connection.send = _fast_send(originals[0])  # type: ignore[method-assign]
        elif variant == "fastdeliver":
            downlink.RoomListener.deliver = _fast_deliver(originals[1])  # type: ignore[method-assign]

    seq = 0

    def publish_timed() -> float:
        nonlocal seq
        seq += 1
        pub = Publication(channel, AudioFrame(stream, seq, packet), 0.0, droppable=True)
        t = time.perf_counter()
        hub._deliver(pub)
        return time.perf_counter() - t

    # The stream's start (untimed): every listener's downlink opens.
    hub._deliver(Publication(channel, AudioFrame(stream, 0, packet, is_start=True), 0.0))
    await asyncio.sleep(0.05)
    drain()
    transports = [c._transport for c in clients]
    # The transport's own socket object (get_extra_info gives a wrapper
    # without send); a send of a few hundred bytes never blocks here.
    raw = [c._transport._sock for c in clients]  # type: ignore[union-attr]
    results: dict[str, list[float]] = {v: [] for v in args.variant}
    for _ in range(args.rounds):
        for variant in args.variant:
            install(variant)
            for _ in range(args.frames):
                if variant == "write":
                    t = time.perf_counter()
                    for tr in transports:
                        tr.write(sent_bytes)  # type: ignore[union-attr]
                    dt = time.perf_counter() - t
                elif variant == "write2":
                    two = sent_bytes * 2
                    t = time.perf_counter()
                    for tr in transports:
                        tr.write(two)  # type: ignore[union-attr]
                    dt = (time.perf_counter() - t) / 2
                elif variant == "send":
                    t = time.perf_counter()
                    for r in raw:
                        r.send(sent_bytes)
                    dt = time.perf_counter() - t
                else:
                    dt = publish_timed()
                results[variant].append(dt / args.listeners * 1e6)
                drain()
                await asyncio.sleep(0)
    install("current")
    skipped = sum(c.skipped for c in clients)
    print(
        f"{args.listeners} listeners, {args.packet}-byte packets, {args.frames} frames x"
        f" {args.rounds} rounds per variant; us per listener per frame (median, p10):"
    )
    base = statistics.median(results[args.variant[0]])
    for variant, values in results.items():
        med = statistics.median(values)
        p10 = sorted(values)[len(values) // 10]
        print(
            f"  {variant:12} {med:6.2f}  {p10:6.2f}   ({100 * (med - base) / base:+.0f}% vs"
            f" {args.variant[0]})"
        )
    print(f"  (frames skipped by the server's high-water check: {skipped})")
    for s in socks:
        s.close()
    await server.close()


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.tcp_micro", description=__doc__.split("\n")[0]
    )
    p.add_argument("--listeners", type=int, default=500)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--packet", type=int, default=160, help="Opus packet bytes (64 kb/s, 20 ms)")
    p.add_argument("--variant", default="current,fastsend,fastdeliver,write,write2,send")
    args = p.parse_args()
    args.variant = args.variant.split(",")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
