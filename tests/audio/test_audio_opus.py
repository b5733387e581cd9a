"""Opus: one valid, non-empty packet per frame, whatever the block sizes."""

from __future__ import annotations

import math

import numpy as np
import opuslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.audio.library import SoundLibrary
from hub.audio.opus import OpusEncoder, OpusSettings, encode_blocks, silence_packet
from hub.audio.sources import SAMPLE_RATE
from hub.audio.testing import best_correlation, decode_packets, read_all, tone

TONAL_MODES = (1, 2, 3, 5)  # as people number them; library index = mode - 1


def test_defaults() -> None:
    s = OpusSettings()
    assert (s.bitrate, s.complexity, s.frame_ms) == (64_000, 5, 20.0)
    assert s.frame_samples == 960 and s.frame_seconds == 0.02
    assert OpusSettings(frame_ms=2.5).frame_samples == 120
    assert OpusSettings(frame_ms=60).frame_samples == 2880
    assert hash(OpusSettings()) == hash(OpusSettings(frame_ms=20))


@pytest.mark.parametrize(
    "kwargs", [{"frame_ms": 25}, {"frame_ms": 120}, {"bitrate": 100}, {"complexity": 11}]
)
def test_rejects_invalid_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OpusSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", [1, 2, 3, 4, 5])
def test_every_mode_packet_decodes_and_matches(library: SoundLibrary, mode: int) -> None:
    sound = library[mode - 1]
    reference = read_all(sound)
    packets = list(encode_blocks(sound.blocks(), OpusSettings()))
    assert len(packets) == math.ceil(len(reference) / 960)
    assert all(len(p) > 0 for p in packets)
    for packet in packets:  # each decodes on its own, with a fresh decoder
        assert len(opuslib.Decoder(SAMPLE_RATE, 1).decode(packet, 5760)) == 960 * 2
    decoded = decode_packets(packets)
    assert len(decoded) == len(packets) * 960
    threshold = 0.9 if mode in TONAL_MODES else 0.6
    assert best_correlation(decoded, reference) > threshold


@pytest.mark.parametrize("frame_ms", [2.5, 10.0, 20.0, 60.0])
def test_frame_durations(library: SoundLibrary, frame_ms: float) -> None:
    s = OpusSettings(frame_ms=frame_ms)
    reference = read_all(library[0])
    packets = list(encode_blocks(library[0].blocks(), s))
    assert len(packets) == math.ceil(len(reference) / s.frame_samples)
    assert all(packets)
    decoded = decode_packets(packets)
    assert len(decoded) == len(packets) * s.frame_samples
    assert best_correlation(decoded, reference) > 0.9


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=9600), max_size=8))
def test_block_sizes_do_not_change_packets(cuts: list[int]) -> None:
    signal = tone(440.0, 0.2)  # 9,600 samples, 10 frames
    pieces = np.split(signal, sorted(cuts))
    assert list(encode_blocks(pieces, OpusSettings())) == list(
        encode_blocks([signal], OpusSettings())
    )


def test_last_partial_frame_is_padded() -> None:
    s = OpusSettings()
    assert list(encode_blocks([], s)) == []
    assert len(list(encode_blocks([np.ones(1, np.float32) * 0.1], s))) == 1
    packets = list(encode_blocks([tone(440.0, 1.0)[:961]], s))
    assert len(packets) == 2 and all(packets)
    assert len(decode_packets(packets)) == 2 * 960


def test_loud_input_is_clipped_not_wrapped() -> None:
    loud = tone(440.0, 0.2, amplitude=3.0)
    decoded = decode_packets(encode_blocks([loud], OpusSettings()))
    # Wrap-around in the int16 conversion would flip signs: the result would
    # not look like a (clipped) sine any more.
    assert best_correlation(decoded, np.clip(loud, -1.0, 1.0)) > 0.9


def test_encode_frame_checks_size() -> None:
    encoder = OpusEncoder(OpusSettings())
    with pytest.raises(ValueError, match="960 samples"):
        encoder.encode_frame(np.zeros(100, np.float32))


@pytest.mark.parametrize("frame_ms", [2.5, 20.0, 60.0])
def test_silence_packet(frame_ms: float) -> None:
    s = OpusSettings(frame_ms=frame_ms)
    packet = silence_packet(s)
    assert packet and silence_packet(s) is packet  # encoded once, reused
    decoded = decode_packets([packet])
    assert len(decoded) == s.frame_samples
    assert np.max(np.abs(decoded)) < 1e-3
