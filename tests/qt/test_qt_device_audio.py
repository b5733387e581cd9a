"""The audio player and its sinks, without Qt or a network."""

from __future__ import annotations

import logging
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_device_server import FRAME, GARBAGE, encode, sine, sine_fraction

from clients.qt_device.audio import (
    AudioPlayer,
    AudioUnavailable,
    NullSink,
    OutputStreamLike,
    RecordingSink,
    SpeakerFactory,
    WavSink,
    open_sounddevice,
)


def test_player_decodes_each_packet_as_it_comes() -> None:
    recording = RecordingSink()
    player = AudioPlayer([recording])
    packets = encode(sine(0.2))

    player.start_stream("kitchen")
    player.feed(packets[0])
    # Heard before the stream ends: the first packet is already decoded.
    assert player.current is not None and player.current.samples == FRAME
    for packet in packets[1:]:
        player.feed(packet)
    player.end_stream()

    assert recording.labels == ["kitchen"]
    [samples] = recording.streams
    assert len(samples) == len(packets) * FRAME
    assert sine_fraction(samples) > 0.95
    assert player.last is not None and player.last.packets == len(packets)


def test_an_undecodable_packet_is_skipped_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recording = RecordingSink()
    player = AudioPlayer([recording])
    packets = encode(sine(0.2))
    packets[3] = GARBAGE

    with caplog.at_level(logging.WARNING):
        player.start_stream("kitchen")
        for packet in packets:
            player.feed(packet)
        player.end_stream()

    assert player.last is not None and player.last.bad_packets == 1
    assert len(recording.streams[0]) == (len(packets) - 1) * FRAME
    assert sine_fraction(recording.streams[0]) > 0.9
    assert "undecodable" in caplog.text


def test_feed_without_start_opens_a_stream() -> None:
    sink = NullSink()
    player = AudioPlayer([sink])
    player.feed(encode(sine(0.02))[0], "late")
    assert player.playing
    player.close()
    assert not player.playing
    assert sink.samples == FRAME


def test_wav_sink_writes_one_file_per_stream(tmp_path: Path) -> None:
    wav = WavSink(tmp_path / "out")
    player = AudioPlayer([wav])
    for seconds in (0.1, 0.06):
        player.start_stream("kitchen/1")
        for packet in encode(sine(seconds)):
            player.feed(packet)
        player.end_stream()

    assert len(wav.files) == 2
    assert all(f.name.startswith("kitchen_1-") for f in wav.files)  # no path separators
    with wave.open(str(wav.files[0]), "rb") as first:
        assert (first.getnchannels(), first.getsampwidth(), first.getframerate()) == (1, 2, 48_000)
        assert first.getnframes() == 5 * FRAME
        samples = np.frombuffer(first.readframes(first.getnframes()), dtype="<i2")
    assert sine_fraction(samples) > 0.95


def test_two_recorders_of_one_device_never_overwrite_each_other(tmp_path: Path) -> None:
    sinks = [WavSink(tmp_path), WavSink(tmp_path)]
    for sink in sinks:
        sink.begin("kitchen")
        sink.write(sine(0.01))
        sink.end()
    assert len({*sinks[0].files, *sinks[1].files}) == 2


def test_without_a_sound_card_speakers_are_given_up_after_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = 0

    def no_card(fill: Callable[[Any, int], None]) -> OutputStreamLike:
        nonlocal attempts
        attempts += 1
        raise AudioUnavailable("Error querying device -1")

    factory = SpeakerFactory(opener=no_card)
    with caplog.at_level(logging.WARNING):
        assert factory.create() is None
        assert factory.create() is None
    assert attempts == 1
    assert caplog.text.count("no audio output") == 1


class FakeCard:
    """Stands in for a sounddevice OutputStream; the test plays the callback thread."""

    def __init__(self, fill: Callable[[Any, int], None]) -> None:
        self.fill = fill
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_speaker_plays_from_its_jitter_buffer() -> None:
    cards: list[FakeCard] = []

    def open_card(fill: Callable[[Any, int], None]) -> OutputStreamLike:
        cards.append(FakeCard(fill))
        return cards[-1]

    speaker = SpeakerFactory(prefill_ms=40, opener=open_card).create()
    assert speaker is not None
    block = np.ones((480, 1), dtype=np.int16)
    speaker.begin("kitchen")
    speaker.write(sine(0.02))
    cards[0].fill(block, 480)
    assert not block.any()  # 20 ms queued, 40 ms prefill: still silent
    speaker.write(sine(0.02))
    cards[0].fill(block, 480)
    np.testing.assert_array_equal(block[:, 0], sine(0.01))
    speaker.close()
    speaker.close()
    assert cards[0].closed


def test_the_real_sound_card_fails_only_as_audio_unavailable() -> None:
    # Whatever this machine has (no PortAudio, no device, a real card), the
    # only failure the simulator has to handle is AudioUnavailable.
    try:
        stream = open_sounddevice(lambda out, frames: out.fill(0))
    except AudioUnavailable:
        return
    stream.close()
