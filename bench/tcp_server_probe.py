"""The hub server with timing probes, for ``python -m bench.tcp``.

    HUB_BENCH_PROBE=/tmp/probe.json python -m bench.tcp_server_probe -s ...

Runs the hub's ``main`` (hub/__main__.py) after wrapping three things, and
writes what they saw to ``$HUB_BENCH_PROBE`` (JSON) when the server exits:

- ``Hub._deliver`` for room audio (``room:*:audio``): per publication, the
  stream id, seq, and ``time.monotonic_ns()`` before and after the
  synchronous fan-out to every subscriber (for TCP listeners: the last
  ``transport.write`` has returned), and the subscriber count. That is when
  the server handed each frame to the kernel, independent of when the
  listeners, which share the machine's cores, got round to reading it.
- the event loop: a task that sleeps 5 ms in a loop and records every wake-up
  more than 5 ms late (time, lag).
- the garbage collector: every collection's start time, duration and
  generation (``gc.callbacks``).

Two clock reads and a tuple per room frame, not per listener: the probe's
own cost does not grow with the number of listeners.

``BENCH_TCP_VARIANT`` (comma list) patches in proposed changes to the hub, to
measure them before anyone touches hub/ (``python -m bench.tcp --server-env
BENCH_TCP_VARIANT=yield,fastdeliver``):

- ``yield``: ``SystemClock.sleep_until`` yields to the loop (``sleep(0)``)
  when the deadline has passed, so a room player that runs behind schedule
  no longer sends frame after frame without letting the loop poll.
- ``fastdeliver``: ``RoomListener.deliver`` writes a prepared AUDIO frame of
  the listener's current stream straight to ``ClientConnection._write`` once
  the codec state says READY with that stream open (the checks
  ``Connection.send`` would make for it, without the generic rule lookup).
- ``prewarm``: ``LIST`` starts encoding the first chunk of every track it
  lists (in the encoder's worker thread, as a first PLAY would), so a first
  PLAY does not wait for its track's first second to be encoded.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import sys
import time
from typing import Any

_mono = time.monotonic_ns


def install(path: str) -> None:
    from hub.app import App
    from hub.core import hub as hub_module
    from hub.core.events import AudioFrame

    frames: list[tuple[int, int, int, int, int]] = []
    lags: list[tuple[int, int]] = []
    gcs: list[tuple[int, int, int]] = []
    original_deliver = hub_module.Hub._deliver

    def _deliver(self: Any, pub: Any) -> None:
        event = pub.event
        if type(event) is AudioFrame and pub.channel.endswith(":audio"):
            t0 = _mono()
            original_deliver(self, pub)
            frames.append(
                (
                    event.stream_id,
                    event.seq,
                    t0,
                    _mono(),
                    len(self._subscribers.get(pub.channel, ())),
                )
            )
        else:
            original_deliver(self, pub)

    hub_module.Hub._deliver = _deliver  # type: ignore[method-assign]

    async def lag_monitor(period_ns: int = 5_000_000) -> None:
        while True:
            before = _mono()
            await asyncio.sleep(period_ns / 1e9)
            lag = _mono() - before - period_ns
            if lag > period_ns:
                lags.append((_mono(), lag))

    original_run = App.run

    async def run(self: Any, *args: Any, **kwargs: Any) -> None:
        task = asyncio.get_running_loop().create_task(lag_monitor())
        try:
            await original_run(self, *args, **kwargs)
        finally:
            task.cancel()

    App.run = run  # type: ignore[method-assign]

    gc_start = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[0] = _mono()
        else:
            gcs.append((gc_start[0], _mono() - gc_start[0], info.get("generation", -1)))

    gc.callbacks.append(on_gc)

    def dump() -> None:
        with open(path, "w") as out:
            json.dump({"frames": frames, "lags": lags, "gcs": gcs}, out)

    atexit.register(dump)


def install_variants(variants: set[str]) -> None:
    if "yield" in variants:
        from hub import clock

        async def sleep_until(self: Any, deadline: float) -> None:
            delay = deadline - time.monotonic()
            await asyncio.sleep(delay if delay > 0 else 0)

        clock.SystemClock.sleep_until = sleep_until  # type: ignore[method-assign]
    if "fastdeliver" in variants:
        from hub.tcp import codec as proto
        from hub.tcp import downlink

        original_deliver = downlink.RoomListener.deliver
        ready = proto.State.READY
        tcp_audio = downlink.tcp_audio

        def deliver(self: Any, pub: Any) -> None:
            frame = pub.event
            if frame.stream_id == self._gate.current and not frame.is_end:
                client = self._client
                codec = client.codec
                if codec._state is ready and codec._slots[0] == frame.stream_id:
                    client._write(pub.encoded(tcp_audio).data, droppable=pub.droppable)
                    return
            original_deliver(self, pub)

        downlink.RoomListener.deliver = deliver  # type: ignore[method-assign]
    if "prewarm" in variants:
        from hub.tcp import server as tcp_server

        original_list = tcp_server.ClientConnection._list

        async def _list(self: Any) -> None:
            await original_list(self)
            music = self.server.music
            rooms = self.hub.rooms
            for track in [] if music is None else list(music._tracks.values()):
                entry = rooms.encoded(track.sound)
                if entry.shared and not entry.packets and not entry.complete:
                    entry._start_fill(entry.chunk_packets)

        tcp_server.ClientConnection._list = _list  # type: ignore[method-assign]


def main() -> int:
    path = os.environ.get("HUB_BENCH_PROBE")
    if path:
        install(path)
    variants = {v for v in os.environ.get("BENCH_TCP_VARIANT", "").split(",") if v}
    if variants:
        install_variants(variants)
    from hub.__main__ import main as hub_main

    return hub_main()


if __name__ == "__main__":
    sys.exit(main())
