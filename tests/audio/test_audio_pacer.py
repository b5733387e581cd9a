"""Pacer: real-time release on a virtual clock, no drift, immediate stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest
from fake_clock import FakeClock

from hub.audio.cache import PacketCache
from hub.audio.library import SoundLibrary
from hub.audio.opus import OpusSettings
from hub.audio.pacer import pace
from hub.audio.testing import best_correlation, decode_packets, read_all, tone

FRAME = 0.02
LEAD = 0.06


async def settle() -> None:
    """Let every ready task run until it blocks (no real time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


def packets(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


async def release_times(
    source: list[bytes], clock: FakeClock, **kwargs: float | None
) -> list[float]:
    times: list[float] = []
    async with aclosing(pace(source, FRAME, clock, **kwargs)) as paced:  # type: ignore[arg-type]
        async for index, packet in paced:
            assert packet == source[index]
            times.append(clock.monotonic())
    return times


@pytest.mark.asyncio
async def test_releases_each_packet_at_its_time() -> None:
    clock = FakeClock(100.0)
    times = await release_times(packets(50), clock)
    assert len(times) == 50
    for n, t in enumerate(times):
        assert t == pytest.approx(max(100.0, 100.0 + n * FRAME - LEAD), abs=1e-9)
    # The lead: the first lead/frame + 1 packets leave at once.
    assert times[:4] == [100.0] * 4 and times[4] > 100.0


@pytest.mark.asyncio
async def test_no_drift_over_10000_packets() -> None:
    clock = FakeClock(0.0)
    times = await release_times(packets(10_000), clock, lead=0.0)
    assert times[-1] == pytest.approx(9_999 * FRAME, abs=1e-9)
    assert max(abs(t - n * FRAME) for n, t in enumerate(times)) < 1e-9
    assert clock.sleep_calls == 10_000


@pytest.mark.asyncio
async def test_a_slow_consumer_does_not_push_the_schedule_back() -> None:
    clock = FakeClock(0.0)
    times: list[float] = []
    async with aclosing(pace(packets(1_000), FRAME, clock, lead=LEAD)) as paced:
        async for index, _ in paced:
            times.append(clock.monotonic())
            clock.advance(0.015 if index % 2 else 0.005)  # work that takes time
    assert times[-1] == pytest.approx(999 * FRAME - LEAD, abs=1e-9)


@pytest.mark.asyncio
async def test_stops_at_once_when_cancelled() -> None:
    clock = FakeClock(0.0, auto_advance=False)
    closed = asyncio.Event()
    received: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"\xf8\xff\xfe"
        finally:
            closed.set()

    async def play() -> None:
        async for index, _ in pace(endless(), FRAME, clock):
            received.append(index)

    task = asyncio.create_task(play())
    await settle()
    assert received == [0, 1, 2, 3] and clock.sleepers == 1  # the lead's burst
    clock.set(4 * FRAME - LEAD)  # packet 4's release time
    await settle()
    assert received == [0, 1, 2, 3, 4]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()  # the source was closed with the pacer
    assert received == [0, 1, 2, 3, 4] and clock.sleepers == 0
    clock.advance(10.0)
    await settle()
    assert received == [0, 1, 2, 3, 4]


@pytest.mark.asyncio
async def test_closing_the_pacer_closes_the_source(library: SoundLibrary) -> None:
    entry = PacketCache().get(library[0], OpusSettings())
    clock = FakeClock(0.0)
    reader = entry.reader()
    async with aclosing(pace(reader, FRAME, clock)) as paced:
        async for index, _ in paced:
            if index == 10:
                break
    with pytest.raises(StopAsyncIteration):
        await anext(reader)


@pytest.mark.asyncio
async def test_restarts_schedule_after_a_long_stall() -> None:
    clock = FakeClock(0.0)
    times: list[float] = []
    async with aclosing(pace(packets(20), FRAME, clock, lead=0.0)) as paced:
        async for index, _ in paced:
            times.append(clock.monotonic())
            if index == 9:
                clock.advance(5.0)  # the loop was stuck for five seconds
    assert times[10] == pytest.approx(9 * FRAME + 5.0)
    # Not a burst of 250 late packets: the next ones keep their spacing.
    assert times[11] - times[10] == pytest.approx(FRAME)
    assert times[19] - times[10] == pytest.approx(9 * FRAME)


@pytest.mark.asyncio
async def test_without_max_late_it_catches_up() -> None:
    clock = FakeClock(0.0)
    times: list[float] = []
    async with aclosing(pace(packets(20), FRAME, clock, lead=0.0, max_late=None)) as paced:
        async for index, _ in paced:
            times.append(clock.monotonic())
            if index == 9:
                clock.advance(5.0)
    assert times[10] == times[19]  # all late, all released at once


@pytest.mark.asyncio
async def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        await anext(pace([], 0.0, FakeClock(0.0)))
    with pytest.raises(ValueError):
        await anext(pace([], FRAME, FakeClock(0.0), lead=-1.0))


@pytest.mark.asyncio
async def test_cache_to_pacer_to_decoder(library: SoundLibrary) -> None:
    # The whole path: sound -> cache -> pacer -> what a device decodes.
    settings = OpusSettings(frame_ms=10)
    entry = PacketCache().get(library[1], settings)
    clock = FakeClock(0.0)
    got: list[bytes] = []
    async with aclosing(pace(entry.reader(), settings.frame_seconds, clock)) as paced:
        async for _, packet in paced:
            got.append(packet)
    assert got == list(entry.packets) and entry.complete
    assert clock.monotonic() == pytest.approx((len(got) - 1) * 0.01 - LEAD)
    assert best_correlation(decode_packets(got), read_all(library[1])) > 0.9


@pytest.mark.asyncio
async def test_fake_clock_wakes_sleepers_in_order() -> None:
    clock = FakeClock(0.0, auto_advance=False)
    woke: list[str] = []

    async def sleeper(name: str, deadline: float) -> None:
        await clock.sleep_until(deadline)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper(n, d)) for n, d in (("b", 2.0), ("a", 1.0))]
    await asyncio.sleep(0)
    assert clock.sleepers == 2
    clock.advance(1.5)
    await asyncio.sleep(0)
    assert woke == ["a"]
    clock.set(2.0)
    await asyncio.gather(*tasks)
    assert woke == ["a", "b"]
    with pytest.raises(ValueError):
        clock.set(1.0)


def test_best_correlation_finds_the_opus_delay() -> None:
    signal = tone(440.0, 0.5)
    delayed = tone(440.0, 0.5)
    delayed[312:] = signal[:-312]
    delayed[:312] = 0.0
    assert best_correlation(delayed, signal) > 0.99
    assert best_correlation(tone(440.0, 0.5), tone(1000.0, 0.5), max_lag=0) < 0.1


@pytest.mark.asyncio
async def test_reports_how_late_each_packet_was_released() -> None:
    clock = FakeClock(0.0)
    lateness: list[float] = []
    async with aclosing(
        pace(packets(10), FRAME, clock, lead=0.0, on_release=lateness.append)
    ) as paced:
        async for index, _ in paced:
            if index == 4:
                clock.advance(0.05)  # a consumer that held the loop for 50 ms
    # Packet 5 was due at 0.10 and left at 0.13; packet 6, due 0.12, too.
    assert lateness == pytest.approx([0.0] * 5 + [0.03, 0.01] + [0.0] * 3, abs=1e-9)
