"""The one paced player of rooms and TCP tracks: packets to a sink, the first
marked, failures told apart (a vanished file is news, anything else a bug)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import soundfile as sf
from fake_clock import FakeClock

from hub.audio.cache import EncodedSound
from hub.audio.opus import OpusSettings
from hub.audio.pacer import DEFAULT_LEAD
from hub.audio.player import play
from hub.audio.sources import SAMPLE_RATE, FileSound
from hub.audio.testing import tone

pytestmark = pytest.mark.asyncio


def tone_file(path: Path, seconds: float) -> FileSound:
    sf.write(path, tone(440.0, seconds), SAMPLE_RATE)
    return FileSound(path)


async def test_every_packet_reaches_the_sink_paced_the_first_marked(tmp_path: Path) -> None:
    settings = OpusSettings()
    encoded = EncodedSound(tone_file(tmp_path / "a.wav", 0.5), settings)
    clock = FakeClock(0.0)  # time moves only when the pacer sleeps
    heard: list[tuple[int, bool, float]] = []
    lateness: list[float] = []

    async def sink(seq: int, packet: bytes, is_start: bool) -> None:
        assert packet
        heard.append((seq, is_start, clock.monotonic()))

    assert await play(encoded, clock, sink, who="test", on_release=lateness.append)
    assert [seq for seq, _, _ in heard] == list(range(25))  # 0.5 s of 20 ms packets
    assert [start for _, start, _ in heard] == [True] + [False] * 24
    # Released at the rate they play, the pacer's lead ahead: the first at
    # once, the last 24 frames later less the lead.
    assert heard[0][2] == 0.0
    assert heard[-1][2] == pytest.approx(24 * settings.frame_seconds - DEFAULT_LEAD)
    assert len(lateness) == 25


async def test_a_file_gone_since_it_was_listed_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sound = tone_file(tmp_path / "gone.wav", 0.5)
    (tmp_path / "gone.wav").unlink()
    heard: list[int] = []

    async def sink(seq: int, packet: bytes, is_start: bool) -> None:
        heard.append(seq)

    encoded = EncodedSound(sound, OpusSettings(), shared=False)
    with caplog.at_level(logging.WARNING, logger="hub.audio.player"):
        assert not await play(encoded, FakeClock(0.0), sink, who="c1")
    assert not heard
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("c1: cannot play 'gone': ")


async def test_a_failing_sink_ends_the_stream_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    encoded = EncodedSound(tone_file(tmp_path / "a.wav", 0.5), OpusSettings())

    async def sink(seq: int, packet: bytes, is_start: bool) -> None:
        if seq == 3:
            raise RuntimeError("broken sink")

    with caplog.at_level(logging.ERROR, logger="hub.audio.player"):
        assert not await play(encoded, FakeClock(0.0), sink, who="room r")
    (record,) = caplog.records
    assert record.getMessage() == "room r: cannot play 'a'"
    assert record.exc_info is not None
    caplog.clear()  # expected here: the suite fails on an error logged elsewhere
