"""Sources: files of any rate, channel count and format become 48 kHz mono."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hub.audio.library import SoundLibrary, default_sounds_folder
from hub.audio.sources import SAMPLE_RATE, FileSound, GeneratedSound, Pcm, long_sound
from hub.audio.testing import best_correlation, read_all, tone


def test_mode_sounds_are_48k_mono_and_distinct(library: SoundLibrary) -> None:
    assert library.modes == [0, 1, 2, 3, 4]
    assert [library[m].title for m in library] == ["chord", "arpeggio", "bells", "rain", "melody"]
    pcms = [read_all(library[m]) for m in library]
    for mode, pcm in zip(library, pcms, strict=True):
        duration = library[mode].duration
        assert duration is not None and 5.0 <= duration <= 30.0
        assert pcm.dtype == np.float32 and pcm.ndim == 1
        assert len(pcm) == round(duration * SAMPLE_RATE)
        assert np.sqrt(np.mean(pcm**2)) > 0.05  # clearly audible
    # No two modes sound alike.
    for i in range(len(pcms)):
        for j in range(i + 1, len(pcms)):
            assert best_correlation(pcms[i], pcms[j], max_lag=0) < 0.5


def test_sounds_folder_is_small() -> None:
    files = sorted(default_sounds_folder().glob("*.flac"))
    assert len(files) == 5
    assert sum(f.stat().st_size for f in files) < 2_000_000


def test_resamples_44k1_stereo_to_48k_mono(tmp_path: Path) -> None:
    left = tone(440.0, 2.0, rate=44_100)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, np.column_stack((left, np.zeros_like(left))), 44_100)
    sound = FileSound(path, block_frames=4096)
    assert sound.source_rate == 44_100 and sound.channels == 2
    assert sound.duration == pytest.approx(2.0)
    blocks = list(sound.blocks())
    assert len(blocks) > 10  # read in blocks, not in one go
    pcm = np.concatenate(blocks)
    assert pcm.dtype == np.float32
    assert abs(len(pcm) - 2 * SAMPLE_RATE) <= 2  # the resampler's tail is flushed
    expected = tone(440.0, 2.0, amplitude=0.25)  # left only, averaged with silence
    assert best_correlation(pcm, expected, max_lag=200) > 0.99
    assert np.max(np.abs(pcm)) == pytest.approx(0.25, abs=0.01)


def test_48k_file_is_not_resampled(tmp_path: Path) -> None:
    signal = tone(300.0, 1.0)
    path = tmp_path / "plain.wav"
    sf.write(path, signal, SAMPLE_RATE, subtype="FLOAT")
    assert np.array_equal(read_all(FileSound(path)), signal)


@pytest.mark.parametrize(
    ("name", "fmt", "subtype"),
    [("sound.ogg", "OGG", "VORBIS"), ("sound.mp3", "MP3", "MPEG_LAYER_III")],
)
def test_compressed_formats_read(tmp_path: Path, name: str, fmt: str, subtype: str) -> None:
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}")
    signal = tone(523.25, 2.0, rate=44_100)
    path = tmp_path / name
    sf.write(path, signal, 44_100, format=fmt, subtype=subtype)
    pcm = read_all(FileSound(path))
    # Lossy codecs add their own delay and padding: compare shapes, not lengths.
    assert abs(len(pcm) - 2 * SAMPLE_RATE) < SAMPLE_RATE // 10
    assert best_correlation(pcm, tone(523.25, 1.5), max_lag=4000) > 0.95


def test_unreadable_file_fails_at_construction(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not audio")
    with pytest.raises(sf.SoundFileError):
        FileSound(path)


def test_library_skips_non_sound_files(tmp_path: Path) -> None:
    sf.write(tmp_path / "b.wav", tone(200.0, 0.5), SAMPLE_RATE)
    sf.write(tmp_path / "a.flac", tone(300.0, 0.5), SAMPLE_RATE)
    (tmp_path / "README.txt").write_text("hello")
    lib = SoundLibrary.from_folder(tmp_path)
    assert [lib[m].title for m in lib] == ["a", "b"]
    assert lib.next_mode(0) == 1 and lib.next_mode(1) == 0
    assert lib.long_sound().duration == 20 * 60
    with_long = SoundLibrary.from_folder(tmp_path, with_long=True)
    assert with_long.modes == [0, 1, 2]
    assert with_long[2] is with_long.long_sound()
    assert with_long.next_mode(2) == 0


def test_library_needs_a_folder_and_a_sound(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SoundLibrary.from_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least one"):
        SoundLibrary.from_folder(tmp_path)


def test_long_sound_is_long_audible_and_deterministic() -> None:
    sound = long_sound()
    assert sound.duration is not None and sound.duration >= 10 * 60
    assert sound.duration == 20 * 60
    assert long_sound().key == sound.key
    assert long_sound(12).key != sound.key
    render = sound.render
    for at_seconds in (0.0, 301.7, 600.0, 1199.0):
        first = round(at_seconds * SAMPLE_RATE)
        block = render(first, SAMPLE_RATE)
        assert np.array_equal(block, render(first, SAMPLE_RATE))
        assert np.sqrt(np.mean(block**2)) > 0.05
        assert np.max(np.abs(block)) <= 1.0
    # Rendering in different block sizes gives the same samples.
    whole = render(1000, 5000)
    assert np.array_equal(whole, np.concatenate([render(1000, 1234), render(2234, 3766)]))


def test_generated_sound_is_rendered_lazily() -> None:
    calls: list[tuple[int, int]] = []

    def render(first: int, count: int) -> Pcm:
        calls.append((first, count))
        return np.zeros(count, dtype=np.float32)

    sound = GeneratedSound("quiet", key="test:quiet", duration=3600.0, render=render)
    blocks = sound.blocks()
    first = next(blocks)
    assert len(first) == sound.block_frames
    assert calls == [(0, sound.block_frames)]  # one block rendered, not an hour


def test_generated_sound_ends_exactly_and_checks_render() -> None:
    sound = GeneratedSound(
        "short", key="test:short", duration=0.05, render=lambda f, n: np.ones(n, np.float32)
    )
    assert sum(len(b) for b in sound.blocks()) == round(0.05 * SAMPLE_RATE)
    bad = GeneratedSound(
        "bad", key="test:bad", duration=1.0, render=lambda f, n: np.ones(n + 1, np.float32)
    )
    with pytest.raises(ValueError, match="render returned"):
        next(bad.blocks())
