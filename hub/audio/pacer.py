"""Release packets at the rate they play, a little ahead of time.

Opus packets must reach a listener about as fast as they play: all at once
would flood every listener's queue (and the device) with a whole sound,
late would underrun it. The pacer schedules packet ``n`` against the start
time, ``start + n * frame - lead``, never by adding up sleeps, so rounding
and scheduling delays do not accumulate: after 10,000 packets it is exactly
as on time as after one.

It holds no per-listener state and does two float operations and one clock
read per packet: the room fans each released packet out to its listeners.
Stopping is just not iterating any more: cancel the consuming task, or close
the generator (``contextlib.aclosing``); the pending sleep is abandoned at
once and the source iterator is closed with it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable

from hub.clock import Clock

log = logging.getLogger(__name__)

# How far ahead of its play time a packet is released: 60 ms is three 20 ms
# packets of cushion against scheduling jitter on the hub and the network
# between it and the device, small enough that Stop and a listener joining
# mid-stream stay prompt. The first ``lead / frame + 1`` packets leave at once.
DEFAULT_LEAD = 0.06

# If the loop stalled (a GC pause, a suspended laptop) and the pacer finds
# itself this far behind, it starts a new schedule from now rather than
# bursting every missed packet to every listener at once.
DEFAULT_MAX_LATE = 1.0


async def pace(
    packets: AsyncIterable[bytes] | Iterable[bytes],
    frame_seconds: float,
    clock: Clock,
    *,
    lead: float = DEFAULT_LEAD,
    max_late: float | None = DEFAULT_MAX_LATE,
    on_release: Callable[[float], None] | None = None,
) -> AsyncGenerator[tuple[int, bytes], None]:
    """Yield ``(index, packet)``, packet ``n`` at ``start + n*frame_seconds - lead``.

    ``start`` is the clock's time when the first packet is asked for.
    ``max_late=None`` never re-anchors: every packet keeps its first schedule.
    ``on_release`` is told how late each packet was released, in seconds
    (0 or a little more when the loop keeps up): one more clock read a packet.
    """
    if frame_seconds <= 0:
        raise ValueError("frame_seconds must be positive")
    if lead < 0:
        raise ValueError("lead must not be negative")
    source = _aiter(packets)
    try:
        start = clock.monotonic()
        origin = 0  # index the current schedule counts from
        index = 0
        async for packet in source:
            due = start + (index - origin) * frame_seconds - lead
            if max_late is not None:
                now = clock.monotonic()
                if now - due > max_late:
                    log.warning(
                        "pacer %.3f s late at packet %d: restarting its schedule",
                        now - due,
                        index,
                    )
                    start, origin = now, index  # as if the sound started here
                    due = start - lead
            await clock.sleep_until(due)
            if on_release is not None:
                on_release(clock.monotonic() - due)
            yield index, packet
            index += 1
    finally:
        await source.aclose()


async def _aiter(
    packets: AsyncIterable[bytes] | Iterable[bytes],
) -> AsyncGenerator[bytes, None]:
    if isinstance(packets, AsyncIterable):
        iterator = aiter(packets)
        try:
            async for packet in iterator:
                yield packet
        finally:
            # ``async for`` does not close what it iterates: close the source
            # (say, a cache reader) as soon as the pacer stops.
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
    else:
        for packet in packets:
            yield packet  # a plain iterable: a list, or a generator that GC closes
