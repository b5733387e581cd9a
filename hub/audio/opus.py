"""PCM blocks in, one Opus packet per frame out.

The stock device decodes each ``AudioPacket.data`` on its own as exactly one
Opus packet at 48 kHz mono, and a single undecodable packet kills its audio
thread for the rest of the connection. So this module guarantees: one packet
per frame, every packet a real encoder output (never empty, never two glued
together), the last partial frame padded with silence rather than dropped or
sent short.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import opuslib

from hub.audio.sources import SAMPLE_RATE, Pcm

log = logging.getLogger(__name__)

# Frame durations Opus can encode (RFC 6716 section 2.1.4), in ms.
ALLOWED_FRAME_MS = (2.5, 5.0, 10.0, 20.0, 40.0, 60.0)


@dataclass(frozen=True)
class OpusSettings:
    """How sounds are encoded; part of the packet cache's key.

    Frozen and hashable: two rooms with equal settings share encoded packets.
    """

    # 64 kb/s: Opus's own guidance puts mono music at 48-64 kb/s for
    # near-transparent quality; it is 160 bytes per 20 ms packet, so 1,000
    # listeners cost 8 MB/s of egress, and packets stay far below any MTU.
    bitrate: int = 64_000
    # 5 of 0-10: the quality knee. Higher levels spend up to twice the CPU
    # for little audible gain at this bitrate; the long sound is encoded while
    # it plays, so encoding speed matters more than the last fraction of a dB.
    complexity: int = 5
    # Packet duration is the lever between latency and packet rate: 20 ms is
    # Opus's default and 50 packets/s; 60 ms cuts per-packet overhead (gRPC
    # framing, fan-out work for each listener) by 3x at +40 ms of latency;
    # 10 ms or less halves latency and doubles the packet rate.
    frame_ms: float = 20.0

    def __post_init__(self) -> None:
        if self.frame_ms not in ALLOWED_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {ALLOWED_FRAME_MS}, not {self.frame_ms}")
        if not 6_000 <= self.bitrate <= 510_000:
            raise ValueError(f"bitrate must be 6000..510000 b/s, not {self.bitrate}")
        if not 0 <= self.complexity <= 10:
            raise ValueError(f"complexity must be 0..10, not {self.complexity}")

    @property
    def frame_samples(self) -> int:
        """Samples per packet at 48 kHz (120 for 2.5 ms ... 2880 for 60 ms)."""
        return round(SAMPLE_RATE * self.frame_ms / 1000)

    @property
    def frame_seconds(self) -> float:
        return self.frame_ms / 1000


class OpusEncoder:
    """Turns PCM blocks of any size into whole Opus frames.

    Stateful (Opus predicts from the previous frame), so one instance encodes
    one stream, from one thread at a time.
    """

    def __init__(self, settings: OpusSettings) -> None:
        self.settings = settings
        self._encoder = opuslib.Encoder(SAMPLE_RATE, 1, opuslib.APPLICATION_AUDIO)
        self._encoder.bitrate = settings.bitrate
        self._encoder.complexity = settings.complexity
        self._pending = np.zeros(0, dtype=np.float32)  # less than one frame

    def encode_frame(self, frame: Pcm) -> bytes:
        """Encode exactly one frame of float samples (clipped to [-1, 1])."""
        size = self.settings.frame_samples
        if frame.shape != (size,):
            raise ValueError(f"a frame is {size} samples, got shape {frame.shape}")
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2")
        # opuslib bounds the output at len(pcm) bytes: 2 bytes per sample is
        # more than Opus ever needs at 510 kb/s, even for 2.5 ms frames.
        packet: bytes = self._encoder.encode(pcm.tobytes(), size)
        if not packet:
            raise RuntimeError("opus returned an empty packet")
        return packet

    def feed(self, block: Pcm) -> list[bytes]:
        """Buffer ``block``; return a packet for every frame now complete."""
        size = self.settings.frame_samples
        samples = np.concatenate((self._pending, block)) if self._pending.size else block
        whole = len(samples) // size * size
        packets = [self.encode_frame(samples[i : i + size]) for i in range(0, whole, size)]
        self._pending = np.array(samples[whole:], dtype=np.float32)
        return packets

    def flush(self) -> list[bytes]:
        """Pad what is left with silence to a full frame and encode it."""
        if not self._pending.size:
            return []
        frame = np.zeros(self.settings.frame_samples, dtype=np.float32)
        frame[: self._pending.size] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return [self.encode_frame(frame)]


def encode_blocks(blocks: Iterable[Pcm], settings: OpusSettings) -> Iterator[bytes]:
    """One Opus packet per frame of ``blocks``, the last one padded."""
    encoder = OpusEncoder(settings)
    for block in blocks:
        yield from encoder.feed(block)
    yield from encoder.flush()


# A pure memo of immutable bytes (settings are frozen), not shared mutable
# state: the silence packet is encoded once per settings and reused for every
# is_end marker of a stream that was cut.
@functools.lru_cache(maxsize=len(ALLOWED_FRAME_MS) * 4)
def silence_packet(settings: OpusSettings) -> bytes:
    """One valid Opus packet of ``settings.frame_ms`` of silence."""
    return OpusEncoder(settings).encode_frame(np.zeros(settings.frame_samples, dtype=np.float32))
