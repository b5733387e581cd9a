"""Micro-benchmark of the TCP server's room fan-out: ``python -m bench.tcp_micro``.

What one room AUDIO frame costs the hub per TCP listener, in-process, with
real loopback TCP connections: a real ``StreamServer`` and hub, N plain
sockets that send HELLO and JOIN, then frames published on the room's audio
channel the way the room's player does (``Hub.publish``, here ``local``: no
broker between). Only the synchronous fan-out is timed (``Hub.publish`` to
the last ``transport.write``); the listeners' sockets are drained, untimed,
between frames. Variants (``--variant``, comma list), each timed in turn,
interleaved ``--rounds`` times so a busy machine disturbs them alike:

- ``current``: the hub as it is (``RoomListener.deliver`` ->
  ``ClientConnection.write`` -> ``transport.write`` for AUDIO of the open
  stream).
- ``write``: only ``transport.write`` of the bytes to every listener (the
  floor: the asyncio transport and the kernel's loopback TCP).
- ``send``: only ``socket.send`` of the bytes on every listener's socket (the
  kernel's share alone).
- ``write2``: ``transport.write`` of two frames at once to every listener,
  counted per frame: what coalescing two 20 ms frames per write would cost
  (a proposal: the room's fan-out writing every 40 ms).

The proposals ``fastsend`` and ``fastdeliver`` (a fast path for a prepared
AUDIO frame in ``Connection.send``, or straight from ``RoomListener.deliver``
to the transport) were measured here; the second is how the hub sends room
audio now (commit c5c52dd), which leaves the first nothing to speed up, so
both variants are gone.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time

from hub.core.events import AudioFrame
from hub.core.hub import Hub
from hub.settings import Settings, StreamSettings
from hub.tcp import codec as proto
from hub.tcp import server as tcp_server

ROOM = "micro"


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    # Every connection comes from 127.0.0.1: lift the per-address bound (64).
    lifted = StreamSettings(max_connections_per_peer=max(64, args.listeners))
    hub = Hub(Settings(stream=lifted), secret=b"m" * 40)
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

    seq = 0

    async def publish_timed() -> float:
        nonlocal seq
        seq += 1
        frame = AudioFrame(stream, seq, packet)
        t = time.perf_counter()
        await hub.publish(channel, frame, droppable=True, local=True)
        return time.perf_counter() - t

    # The stream's start (untimed): every listener's downlink opens.
    await hub.publish(channel, AudioFrame(stream, 0, packet, is_start=True), local=True)
    await asyncio.sleep(0.05)
    drain()
    transports = [c.transport for c in clients if c.transport is not None]
    # A socket of each transport's own (get_extra_info gives a wrapper
    # without send; ``dup`` a socket on the same connection); a send of a few
    # hundred bytes never blocks here.
    raw = [t.get_extra_info("socket").dup() for t in transports]
    results: dict[str, list[float]] = {v: [] for v in args.variant}
    for _ in range(args.rounds):
        for variant in args.variant:
            for _ in range(args.frames):
                if variant == "write":
                    t = time.perf_counter()
                    for tr in transports:
                        tr.write(sent_bytes)
                    dt = time.perf_counter() - t
                elif variant == "write2":
                    two = sent_bytes * 2
                    t = time.perf_counter()
                    for tr in transports:
                        tr.write(two)
                    dt = (time.perf_counter() - t) / 2
                elif variant == "send":
                    t = time.perf_counter()
                    for r in raw:
                        r.send(sent_bytes)
                    dt = time.perf_counter() - t
                else:
                    dt = await publish_timed()
                results[variant].append(dt / args.listeners * 1e6)
                drain()
                await asyncio.sleep(0)
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
    for s in socks + raw:
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
    p.add_argument("--variant", default="current,write,write2,send")
    args = p.parse_args()
    args.variant = args.variant.split(",")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
