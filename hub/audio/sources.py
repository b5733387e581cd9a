"""Where audio comes from: files on disk and sounds computed as they play.

Everything after this module works on one format only, float32 mono PCM at
48 kHz (Opus's native rate), so a ``Sound`` does the converting: it reads in
blocks, downmixes to mono and resamples with soxr's streaming resampler. A
file of several hours is never held in memory, and a generated sound is never
stored anywhere: its samples exist only while they are being encoded.
"""

from __future__ import annotations

import abc
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000  # Opus's native rate: no resampling inside the codec.

# Samples per block read or generated: 1 s at 48 kHz is 192 KB of float32
# per channel, large enough that Python overhead per block is noise and
# small enough that memory stays flat whatever the sound's length.
DEFAULT_BLOCK_FRAMES = 48_000

# libsndfile reports this many frames when it cannot tell (some streams).
_UNKNOWN_FRAMES = 2**62

Pcm = npt.NDArray[np.float32]
# (first sample index, sample count) -> exactly ``count`` float32 samples.
Render = Callable[[int, int], Pcm]


class Sound(abc.ABC):
    """Something playable: a title, a length, and float32 mono 48 kHz blocks."""

    title: str
    duration: float | None  # seconds; None when the source cannot tell

    @property
    @abc.abstractmethod
    def key(self) -> str:
        """Identity for caching: equal keys mean identical samples."""

    @abc.abstractmethod
    def blocks(self) -> Iterator[Pcm]:
        """Yield the whole sound from its start, as 1-D float32 at 48 kHz.

        Blocks may have any length (never zero). Each call starts afresh, so
        a sound can be read by several consumers, one iterator each.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.title!r}, duration={self.duration!r})"


class FileSound(Sound):
    """Any file libsndfile reads: wav, flac, ogg/vorbis, mp3, ..."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        title: str | None = None,
        block_frames: int = DEFAULT_BLOCK_FRAMES,
    ) -> None:
        if block_frames < 1:
            raise ValueError("block_frames must be at least 1")
        self.path = Path(path).resolve()
        info = sf.info(str(self.path))  # fails here, not mid-stream, if unreadable
        stat = self.path.stat()
        self.title = title if title is not None else self.path.stem
        self.source_rate: int = info.samplerate
        self.channels: int = info.channels
        frames: int = info.frames
        known = 0 < frames < _UNKNOWN_FRAMES
        self.duration = frames / info.samplerate if known else None
        self.block_frames = block_frames
        # The file's size and mtime are part of its identity, so a cache keyed
        # on it never serves packets of a file that has since been rewritten.
        self._key = f"file:{self.path}:{stat.st_size}:{stat.st_mtime_ns}"

    @property
    def key(self) -> str:
        return self._key

    def blocks(self) -> Iterator[Pcm]:
        with sf.SoundFile(str(self.path)) as f:
            resampler = None
            if f.samplerate != SAMPLE_RATE:
                resampler = soxr.ResampleStream(f.samplerate, SAMPLE_RATE, 1, dtype="float32")
            for block in f.blocks(blocksize=self.block_frames, dtype="float32", always_2d=True):
                mono = _downmix(block)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono)
                if mono.size:
                    yield mono
            if resampler is not None:
                tail: Pcm = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                if tail.size:
                    yield tail


class GeneratedSound(Sound):
    """A sound computed block by block from a deterministic render function.

    ``render(first, count)`` returns samples ``first .. first+count-1``; being
    a pure function of the sample index, the sound is identical on every
    play and costs no storage, however long it is. It stays at hand as
    ``render``, for reading any stretch of the sound without playing it all.
    """

    def __init__(
        self,
        title: str,
        *,
        key: str,
        duration: float,
        render: Render,
        block_frames: int = DEFAULT_BLOCK_FRAMES,
    ) -> None:
        if duration <= 0:
            raise ValueError("duration must be positive")
        if block_frames < 1:
            raise ValueError("block_frames must be at least 1")
        self.title = title
        self.duration = duration
        self.total_samples = round(duration * SAMPLE_RATE)
        self.block_frames = block_frames
        self._key = key
        self.render = render

    @property
    def key(self) -> str:
        return self._key

    def blocks(self) -> Iterator[Pcm]:
        for first in range(0, self.total_samples, self.block_frames):
            count = min(self.block_frames, self.total_samples - first)
            block = np.ascontiguousarray(self.render(first, count), dtype=np.float32)
            if block.shape != (count,):
                raise ValueError(f"render returned shape {block.shape}, expected ({count},)")
            yield block


def long_sound(minutes: float = 20.0) -> GeneratedSound:
    """A slow arpeggio over a drone, ``minutes`` long, computed as it streams.

    Deterministic, clearly audible throughout (no silent stretch longer than
    a note's decay, and the drone never stops), and never written to disk.
    """
    if minutes <= 0:
        raise ValueError("minutes must be positive")
    return GeneratedSound(
        f"Long arpeggio ({minutes:g} min)",
        key=f"generated:long-arpeggio:v1:{minutes!r}",
        duration=minutes * 60.0,
        render=render_long_arpeggio,
    )


# The long sound's score: an Am - F - C - G progression, one chord every
# eight notes, each note 0.5 s, over an A drone. MIDI note numbers.
_NOTE_SECONDS = 0.5
_CHORDS = np.array(
    [
        [57, 60, 64, 69],  # A minor
        [57, 60, 65, 69],  # F over A
        [55, 60, 64, 67],  # C
        [55, 59, 62, 67],  # G
    ],
    dtype=np.int64,
)
# Which chord tone each of the eight notes plays; a new pattern every 32
# chords (64 s), so twenty minutes do not loop the same bar.
_PATTERNS = np.array(
    [
        [0, 1, 2, 3, 2, 1, 0, 2],
        [0, 2, 1, 3, 0, 2, 3, 1],
        [3, 2, 1, 0, 1, 2, 3, 2],
    ],
    dtype=np.int64,
)


def render_long_arpeggio(first: int, count: int) -> Pcm:
    """Samples ``first .. first+count-1`` of the long sound (see ``long_sound``)."""
    n = np.arange(first, first + count, dtype=np.int64)
    note_samples = round(_NOTE_SECONDS * SAMPLE_RATE)
    note = n // note_samples
    since = (n - note * note_samples) / SAMPLE_RATE  # seconds into this note
    chord = (note // 8) % len(_CHORDS)
    pattern = (note // 256) % len(_PATTERNS)
    step = _PATTERNS[pattern, note % 8]
    midi = _CHORDS[chord, step] + 12
    freq = 440.0 * 2.0 ** ((midi - 69) / 12.0)
    phase = 2.0 * math.pi * freq * since  # each note starts at phase 0, under its attack
    voice = np.sin(phase) + 0.3 * np.sin(2.0 * phase)
    envelope = np.minimum(since / 0.005, 1.0) * np.exp(-since / 0.35)
    t = n / SAMPLE_RATE
    swell = 0.8 + 0.2 * np.sin(2.0 * math.pi * 0.05 * t)
    drone = swell * (
        0.12 * np.sin(2.0 * math.pi * 110.0 * t) + 0.08 * np.sin(2.0 * math.pi * 165.0 * t)
    )
    out: Pcm = (0.35 * envelope * voice + drone).astype(np.float32)
    return out


def _downmix(block: npt.NDArray[np.float32]) -> Pcm:
    """(frames, channels) -> (frames,), averaging channels so it cannot clip."""
    if block.shape[1] == 1:
        return np.ascontiguousarray(block[:, 0])
    mono: Pcm = block.mean(axis=1, dtype=np.float32)
    return mono
