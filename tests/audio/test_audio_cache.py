"""Cache: each (sound, settings) is encoded once and read by everyone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import aclosing

import numpy as np
import pytest

from hub.audio.cache import EncodedSound, PacketCache, estimate_bytes
from hub.audio.library import SoundLibrary
from hub.audio.opus import OpusEncoder, OpusSettings, encode_blocks
from hub.audio.sources import GeneratedSound, Pcm, Sound, long_sound


class CountingEncoder:
    """Counts every Opus frame encoded, across all encoders."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = OpusEncoder.encode_frame

        def counting(encoder: OpusEncoder, frame: Pcm) -> bytes:
            self.calls += 1
            return original(encoder, frame)

        monkeypatch.setattr(OpusEncoder, "encode_frame", counting)


class FailingSound(Sound):
    title = "broken"
    duration = 10.0
    key = "test:broken"

    def blocks(self) -> Iterator[Pcm]:
        yield np.zeros(48_000, np.float32)
        raise OSError("disk on fire")


async def read(entry: EncodedSound, start: int = 0, limit: int | None = None) -> list[bytes]:
    out: list[bytes] = []
    async with aclosing(entry.reader(start)) as packets:
        async for packet in packets:
            out.append(packet)
            if limit is not None and len(out) == limit:
                break
    return out


@pytest.mark.asyncio
async def test_encoded_once_and_shared(
    library: SoundLibrary, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CountingEncoder(monkeypatch)
    cache = PacketCache()
    entry = cache.get(library[1], OpusSettings())
    assert cache.get(library[1], OpusSettings()) is entry
    assert entry.packets == [] and counter.calls == 0  # nothing encoded yet
    readers = await asyncio.gather(*(read(cache.get(library[1], OpusSettings())) for _ in range(5)))
    assert entry.complete
    assert counter.calls == len(entry.packets) == 300
    for packets in readers:
        assert packets == list(entry.packets)
        # The very same bytes objects: nothing copied per reader.
        assert all(a is b for a, b in zip(packets, entry.packets, strict=True))
    assert await read(entry, start=298) == list(entry.packets[298:])
    assert counter.calls == 300  # late readers encode nothing


@pytest.mark.asyncio
async def test_cached_packets_are_a_continuous_stream(library: SoundLibrary) -> None:
    # Chunked, threaded encoding yields exactly what one uninterrupted pass does.
    entry = PacketCache(chunk_seconds=0.3).get(library[4], OpusSettings())
    assert await read(entry) == list(encode_blocks(library[4].blocks(), OpusSettings()))


@pytest.mark.asyncio
async def test_settings_are_part_of_the_key(library: SoundLibrary) -> None:
    cache = PacketCache()
    a = await cache.preload(library[0], OpusSettings())
    b = await cache.preload(library[0], OpusSettings(frame_ms=60))
    assert a is not b and len(cache) == 2
    assert len(a.packets) == 300 and len(b.packets) == 100
    assert a.expected_packets == 300 and a.payload_bytes == sum(map(len, a.packets))


@pytest.mark.asyncio
async def test_long_sound_is_encoded_as_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CountingEncoder(monkeypatch)
    cache = PacketCache()
    entry = cache.get(long_sound(), OpusSettings())
    assert entry.shared and entry.expected_packets == 60_000
    first = await read(entry, limit=120)
    assert len(first) == 120
    await entry.idle()  # let a prefetch under way land before counting
    # At most the chunks read plus one prefetched: seconds, not 20 minutes.
    assert counter.calls == len(entry.packets) <= 120 + 2 * entry.chunk_packets
    assert not entry.complete
    # A second room starting now reads the same bytes, without re-encoding them.
    before = counter.calls
    assert await read(cache.get(long_sound(), OpusSettings()), limit=100) == first[:100]
    assert counter.calls == before


@pytest.mark.asyncio
async def test_cancelled_reader_does_not_disturb_others(library: SoundLibrary) -> None:
    entry = PacketCache().get(library[2], OpusSettings())
    task = asyncio.create_task(read(entry))
    await asyncio.sleep(0)  # the reader is now waiting for the first chunk
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await read(entry) == list(encode_blocks(library[2].blocks(), OpusSettings()))


@pytest.mark.asyncio
async def test_a_failing_source_fails_its_readers() -> None:
    cache = PacketCache()
    entry = cache.get(FailingSound(), OpusSettings())
    with pytest.raises(OSError, match="disk on fire"):
        await read(entry)
    assert entry.failed
    with pytest.raises(RuntimeError, match="cannot read 'broken'"):
        await read(entry)
    # The cache does not keep serving a failed entry: the next play retries.
    retry = cache.get(FailingSound(), OpusSettings())
    assert retry is not entry and not retry.failed and len(cache) == 1


@pytest.mark.asyncio
async def test_too_long_to_cache_is_streamed_per_reader(library: SoundLibrary) -> None:
    cache = PacketCache(max_bytes=estimate_bytes(6.0, OpusSettings()))  # 6 s > half the budget
    entry = cache.get(library[3], OpusSettings())
    assert not entry.shared and len(cache) == 0
    assert await read(entry) == list(encode_blocks(library[3].blocks(), OpusSettings()))
    assert entry.packets == []  # nothing retained
    assert (
        await read(entry, start=250)
        == list(encode_blocks(library[3].blocks(), OpusSettings()))[250:]
    )
    with pytest.raises(RuntimeError, match="too long"):
        await entry.fill()


@pytest.mark.asyncio
async def test_unknown_duration_is_not_retained() -> None:
    sound = GeneratedSound(
        "x", key="test:x", duration=0.1, render=lambda f, n: np.zeros(n, np.float32)
    )
    sound.duration = None
    entry = PacketCache().get(sound, OpusSettings())
    assert not entry.shared and entry.expected_packets is None
    assert len(await read(entry)) == 5


def test_cache_evicts_least_recently_used(library: SoundLibrary) -> None:
    budget = 2 * estimate_bytes(6.0, OpusSettings())
    cache = PacketCache(max_bytes=budget)
    one = cache.get(library[0], OpusSettings())
    cache.get(library[1], OpusSettings())
    assert cache.get(library[0], OpusSettings()) is one  # mode 1 is now the most recent
    cache.get(library[2], OpusSettings())  # evicts mode 2
    assert len(cache) == 2 and cache.estimated_bytes <= budget
    assert cache.get(library[0], OpusSettings()) is one


def test_memory_estimate() -> None:
    # 60,000 packets of 160 B payload + 41 B overhead: about 12 MB.
    assert estimate_bytes(20 * 60, OpusSettings()) == 60_000 * (160 + 41)


class OpenSound(Sound):
    """Ten seconds of silence whose source says when it is let go."""

    title = "open"
    duration = 10.0
    key = "test:open"

    def __init__(self) -> None:
        self.closed = 0

    def blocks(self) -> Iterator[Pcm]:
        try:
            for _ in range(10):
                yield np.zeros(48_000, np.float32)
        finally:
            self.closed += 1  # a real source closes its file, drops its resampler


@pytest.mark.asyncio
async def test_closing_the_cache_lets_go_of_sources_encoded_part_of_the_way() -> None:
    """A sound warmed (its first chunk encoded) but never played to the end
    holds its source open; the hub's exit must not leave that to the
    collector (soxr's resamplers, still alive at exit, are reported leaked)."""
    cache = PacketCache()
    sound, settings = OpenSound(), OpusSettings()
    entry = cache.get(sound, settings)
    entry.warm()
    await entry.idle()
    assert entry.packets and not entry.complete
    assert sound.closed == 0
    await cache.close()
    assert sound.closed == 1
    # Cut short, the entry cannot go on without a gap: it is replaced.
    assert entry.failed
    fresh = cache.get(sound, settings)
    assert fresh is not entry
    assert len(await read(fresh)) == 500
    assert fresh.complete and sound.closed == 2
