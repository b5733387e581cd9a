"""The hub server with timing probes, for ``python -m bench.tcp``.

    HUB_BENCH_PROBE=/tmp/probe.json python -m bench.tcp_server_probe -s ...

Runs the hub's ``main`` (hub/__main__.py) after wrapping three things, and
writes what they saw to ``$HUB_BENCH_PROBE`` (JSON) when the server exits:

- ``Hub.publish`` of room audio (``room:*:audio``): per publication, the
  stream id, seq, and ``time.monotonic_ns()`` before and after, and the
  subscriber count. With the hub's own in-memory broker (one hub, as
  ``bench.tcp`` runs it) a publication is fanned out to every local
  subscriber before ``publish`` returns (for TCP listeners: the last
  ``transport.write`` has returned), so that is when the server handed each
  frame to the kernel, independent of when the listeners, which share the
  machine's cores, got round to reading it.
- the event loop: a task that sleeps 5 ms in a loop and records every wake-up
  more than 5 ms late (time, lag).
- the garbage collector: every collection's start time, duration and
  generation (``gc.callbacks``).

Two clock reads and a tuple per room frame, not per listener: the probe's
own cost does not grow with the number of listeners.

The proposals this module once patched in (``BENCH_TCP_VARIANT``: a pacer
that yields when behind, a direct write of room audio, LIST warming each
track's first second) were all measured and are in the hub now (commit
c5c52dd), so the variants are gone.
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
    original_publish = hub_module.Hub.publish

    async def publish(self: Any, channel: str, event: Any, **kwargs: Any) -> Any:
        if type(event) is not AudioFrame or not channel.endswith(":audio"):
            return await original_publish(self, channel, event, **kwargs)
        t0 = _mono()
        pub = await original_publish(self, channel, event, **kwargs)
        frames.append((event.stream_id, event.seq, t0, _mono(), self.subscriber_count(channel)))
        return pub

    hub_module.Hub.publish = publish  # type: ignore[method-assign]

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


def main() -> int:
    path = os.environ.get("HUB_BENCH_PROBE")
    if path:
        install(path)
    from hub.__main__ import main as hub_main

    return hub_main()


if __name__ == "__main__":
    sys.exit(main())
