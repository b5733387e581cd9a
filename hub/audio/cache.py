"""Encoded packets, computed once per (sound, settings) and shared.

A room with 1,000 listeners, or ten rooms playing the same mode sound, must
not encode it 1,000 or ten times: encoding costs CPU (about 6 ms per second
of audio at complexity 5) and an encoder per listener would also make each
listener's bytes differ. So an ``EncodedSound`` holds one list of packets
that every reader walks by index, and a ``PacketCache`` hands out one
``EncodedSound`` per ``(sound.key, settings)``.

The list is filled incrementally, in chunks of about a second, by a worker
thread (never on the event loop) and extended only on the loop, so readers
need no lock. A reader starts the next chunk when it gets within half a chunk
of the end, so steady-state playback never waits for the encoder: a 20-minute
generated sound starts playing after one chunk, not after 20 minutes of
encoding, and later readers reuse what the first one caused to be encoded.

Memory: a cached packet costs its payload, ``bitrate / 8 * frame_seconds``
bytes (160 B at 64 kb/s and 20 ms), plus about 41 B of Python overhead (a
33 B ``bytes`` header and an 8 B list slot): about 200 B x 50 packets/s,
10 KB per second of sound, 12 MB for the 20-minute long sound, 60 KB for a
6 s mode sound. Sounds whose estimate exceeds half the cache's budget, or
whose length is unknown, are not retained at all: each reader then runs its
own encoder, one chunk at a time (per room, not per listener: a room fans one
reader's bytes out to all its listeners).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from contextlib import aclosing

from hub.audio.opus import OpusEncoder, OpusSettings
from hub.audio.sources import SAMPLE_RATE, Pcm, Sound

log = logging.getLogger(__name__)

# Encode about this much audio per worker-thread call: ~6 ms of CPU at the
# defaults, so thread hops are rare and no chunk keeps a core busy for long.
DEFAULT_CHUNK_SECONDS = 1.0

# Total estimated bytes of retained packets across a cache. 64 MiB holds the
# five mode sounds and the 20-minute long sound (~12.3 MB together at the
# defaults) for several settings at once; any single sound up to ~55 minutes
# at the defaults (half the budget) is retained, longer ones are streamed.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# Python's cost per cached packet beyond its payload: bytes header + list slot.
PACKET_OVERHEAD_BYTES = 41


def estimate_bytes(duration: float, settings: OpusSettings) -> int:
    """Memory a fully cached sound of ``duration`` seconds will take."""
    packets = math.ceil(duration / settings.frame_seconds)
    payload = settings.bitrate / 8 * settings.frame_seconds
    return math.ceil(packets * (payload + PACKET_OVERHEAD_BYTES))


class _EncodingRun:
    """One pass over a sound: its block iterator and its encoder.

    Used from one worker thread at a time (callers guarantee it), and never
    touches any state a reader sees.
    """

    def __init__(self, sound: Sound, settings: OpusSettings) -> None:
        self._blocks: Iterator[Pcm] = sound.blocks()
        self._encoder = OpusEncoder(settings)

    def step(self, max_packets: int | None) -> tuple[list[bytes], bool]:
        """Encode up to about ``max_packets`` (None: all); True once finished."""
        out: list[bytes] = []
        while max_packets is None or len(out) < max_packets:
            block = next(self._blocks, None)
            if block is None:
                out.extend(self._encoder.flush())
                return out, True
            out.extend(self._encoder.feed(block))
        return out, False

    def close(self) -> None:
        """Let go of the source now: its open file and its resampler.

        Left to the collector, a run cut short lives as long as its cache,
        which is the process: its soxr resampler is then still alive when the
        interpreter exits, and nanobind (soxr's binding) reports it as leaked
        on standard error. Not while ``step`` runs in a worker thread.
        """
        if isinstance(self._blocks, Generator):
            self._blocks.close()


class EncodedSound:
    """The Opus packets of one sound at one setting, shared by all readers."""

    def __init__(
        self,
        sound: Sound,
        settings: OpusSettings,
        *,
        shared: bool = True,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    ) -> None:
        if chunk_seconds <= 0:
            raise ValueError("chunk_seconds must be positive")
        self.sound = sound
        self.settings = settings
        self.shared = shared  # False: not retained, each reader encodes for itself
        self.chunk_packets = max(1, math.ceil(chunk_seconds / settings.frame_seconds))
        self._packets: list[bytes] = []
        self._payload_bytes = 0
        self._done = False
        self._run: _EncodingRun | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return (
            f"EncodedSound({self.sound.title!r}, {self.settings}, "
            f"packets={len(self._packets)}, complete={self._done})"
        )

    @property
    def packets(self) -> Sequence[bytes]:
        """The packets encoded so far (all of them once ``complete``)."""
        return self._packets

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def failed(self) -> bool:
        """Encoding failed or was cut: readers raise, the cache replaces it."""
        return self._error is not None

    @property
    def payload_bytes(self) -> int:
        """Opus payload bytes retained so far (overhead not included)."""
        return self._payload_bytes

    @property
    def expected_packets(self) -> int | None:
        """Packet count: exact once complete, else estimated from the duration."""
        if self._done:
            return len(self._packets)
        if self.sound.duration is None:
            return None
        return math.ceil(self.sound.duration * SAMPLE_RATE / self.settings.frame_samples)

    async def fill(self) -> None:
        """Encode everything still missing, in one worker-thread call.

        For finite sounds that should be ready before anyone presses Play.
        """
        if not self.shared:
            raise RuntimeError(f"{self.sound.title!r} is too long to cache; read it instead")
        while not self._done:
            self._raise_if_failed()
            await asyncio.shield(self._start_fill(None))

    async def idle(self) -> None:
        """Wait until no encoding chunk is under way (say, before shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])

    async def reader(self, start: int = 0) -> AsyncGenerator[bytes, None]:
        """Yield packets from index ``start`` to the end, encoding as needed.

        Cancelling or closing a reader never disturbs other readers, nor an
        encoding chunk already under way.
        """
        if start < 0:
            raise ValueError("start must not be negative")
        if not self.shared:
            async with aclosing(self._private_reader(start)) as private:
                async for packet in private:
                    yield packet
            return
        index = start
        packets = self._packets
        low_water = self.chunk_packets // 2
        while True:
            self._raise_if_failed()
            if not self._done and len(packets) - index <= low_water:
                task = self._start_fill(self.chunk_packets)  # prefetch, or the chunk we need
                if index >= len(packets):
                    # shield: this reader's cancellation must not cancel a
                    # chunk that other readers are waiting for too.
                    await asyncio.shield(task)
                    continue
            if index >= len(packets):
                return  # complete, and past the end
            yield packets[index]
            index += 1

    async def close(self) -> None:
        """Release the encoding run of a sound not encoded to its end (once
        the chunk under way, if any, is done). The list can then no longer be
        extended without a gap, so the entry counts as failed: its readers
        raise, and the cache gives the next one a fresh entry."""
        await self.idle()
        run, self._run = self._run, None
        if run is not None:
            run.close()
            self._error = RuntimeError(f"encoding {self.sound.title!r} was closed")

    def warm(self) -> None:
        """Start encoding the first chunk in the background, if nothing is yet.

        For a sound someone is likely to play soon: its first packets are then
        ready when Play comes, instead of being encoded while the player waits.
        """
        if self.shared and not self._packets and not self._done:
            self._start_fill(self.chunk_packets)

    def _start_fill(self, max_packets: int | None) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                self._extend(max_packets), name=f"encode {self.sound.title}"
            )
            self._task.add_done_callback(_consume_exception)
        return self._task

    async def _extend(self, max_packets: int | None) -> None:
        if self._run is None:
            self._run = _EncodingRun(self.sound, self.settings)
        try:
            new, done = await asyncio.to_thread(self._run.step, max_packets)
        except asyncio.CancelledError:
            # The worker thread goes on with the encoder, and its packets are
            # lost: the list can no longer be extended without a gap.
            self._error = RuntimeError(f"encoding {self.sound.title!r} was cancelled")
            raise
        except Exception as exc:
            log.error("encoding %r failed: %s", self.sound.title, exc)
            self._error = exc
            raise
        self._packets.extend(new)
        self._payload_bytes += sum(map(len, new))
        if done:
            self._done = True
            self._run = None
            log.debug(
                "encoded %r: %d packets, %d payload bytes",
                self.sound.title,
                len(self._packets),
                self._payload_bytes,
            )

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"cannot read {self.sound.title!r}") from self._error

    async def _private_reader(self, start: int) -> AsyncGenerator[bytes, None]:
        run = _EncodingRun(self.sound, self.settings)
        index = 0
        done = False
        while not done:
            new, done = await asyncio.to_thread(run.step, self.chunk_packets)
            for packet in new:
                if index >= start:
                    yield packet
                index += 1


def _consume_exception(task: asyncio.Task[None]) -> None:
    # The failure is recorded on the EncodedSound and raised to its readers;
    # retrieving it here keeps asyncio from also reporting it as unhandled.
    if not task.cancelled():
        task.exception()


class PacketCache:
    """One ``EncodedSound`` per (sound, settings), within a memory budget.

    Entries are evicted least-recently-requested first once the estimated
    total passes ``max_bytes``. An evicted entry stays valid for the readers
    that hold it; it is only no longer handed to new ones.
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.chunk_seconds = chunk_seconds
        self._entries: OrderedDict[tuple[str, OpusSettings], tuple[EncodedSound, int]] = (
            OrderedDict()
        )
        self._estimated = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def estimated_bytes(self) -> int:
        """Estimated memory of all retained entries once fully encoded."""
        return self._estimated

    def get(self, sound: Sound, settings: OpusSettings) -> EncodedSound:
        """The shared entry for ``sound`` at ``settings``; encodes nothing yet."""
        key = (sound.key, settings)
        found = self._entries.get(key)
        if found is not None and not found[0].failed:
            self._entries.move_to_end(key)
            return found[0]
        if found is not None:  # give a failed sound a fresh start
            del self._entries[key]
            self._estimated -= found[1]
        estimate = None if sound.duration is None else estimate_bytes(sound.duration, settings)
        if estimate is None or estimate > self.max_bytes // 2:
            log.info(
                "%r is not cached (estimate %s bytes): each reader encodes it", sound, estimate
            )
            return EncodedSound(sound, settings, shared=False, chunk_seconds=self.chunk_seconds)
        entry = EncodedSound(sound, settings, chunk_seconds=self.chunk_seconds)
        self._entries[key] = (entry, estimate)
        self._estimated += estimate
        while self._estimated > self.max_bytes and len(self._entries) > 1:
            (_, old_settings), (old, old_estimate) = self._entries.popitem(last=False)
            self._estimated -= old_estimate
            log.info("evicted %r at %s from the packet cache", old.sound, old_settings)
        return entry

    async def close(self) -> None:
        """Release what the entries hold open (sources, resamplers) while they
        wait for readers that will not come: when the hub stops."""
        for entry, _ in list(self._entries.values()):
            await entry.close()

    async def preload(self, sound: Sound, settings: OpusSettings) -> EncodedSound:
        """``get``, then encode the whole sound (in a worker thread) if retained."""
        entry = self.get(sound, settings)
        if entry.shared:
            await entry.fill()
        return entry
