#!/usr/bin/env python
"""Generate the mode sounds in ``hub/sounds/`` (package data) from code.

The sounds are committed, but made here rather than taken from anywhere, so
their licence is ours, they can be regenerated bit for bit (fixed seeds, no
timestamps), and each is clearly different from the others, which makes a
wrong mode obvious by ear and measurable by correlation in tests.

Each is 48 kHz mono 16-bit FLAC (no resampling on the hot path), 6 s long,
about 1 MB for all five.

    python scripts/make_sounds.py [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

log = logging.getLogger("make_sounds")

RATE = 48_000
SECONDS = 6.0
PEAK = 0.8  # headroom below full scale, so Opus's output does not clip

Signal = npt.NDArray[np.float64]


def _time() -> Signal:
    return np.arange(round(SECONDS * RATE)) / RATE


def _hz(midi: float) -> float:
    return 440.0 * math.pow(2.0, (midi - 69) / 12)


def _fades(x: Signal, fade_in: float = 0.02, fade_out: float = 0.3) -> Signal:
    n_in, n_out = round(fade_in * RATE), round(fade_out * RATE)
    x = x.copy()
    x[:n_in] *= np.linspace(0.0, 1.0, n_in)
    x[-n_out:] *= np.linspace(1.0, 0.0, n_out)
    return x


def _notes(
    pitches: Sequence[float], note_seconds: float, voice: Callable[[float, Signal], Signal]
) -> Signal:
    """Lay ``voice(freq, t_since_note)`` end to end, each note rung fully."""
    t = _time()
    out = np.zeros_like(t)
    step = round(note_seconds * RATE)
    for i, midi in enumerate(pitches):
        start = i * step
        if start >= len(t):
            break
        since = t[: len(t) - start]
        out[start:] += voice(_hz(midi), since)
    return out


def sine_chord() -> Signal:
    """Mode 1: a sustained C major seventh chord with a slow tremolo."""
    t = _time()
    chord = sum(np.sin(2 * math.pi * _hz(m) * t) for m in (60, 64, 67, 71))
    tremolo = 1.0 - 0.15 * (0.5 + 0.5 * np.sin(2 * math.pi * 4.0 * t))
    return _fades(chord * tremolo, fade_in=0.3, fade_out=1.0)


def arpeggio() -> Signal:
    """Mode 2: a plucked D minor arpeggio, up and down, four notes a second."""

    def pluck(freq: float, since: Signal) -> Signal:
        harmonics = sum(
            np.sin(2 * math.pi * k * freq * since) * np.exp(-since * (3.0 + 2.0 * k)) / k
            for k in range(1, 6)
        )
        return harmonics * np.minimum(since / 0.003, 1.0)

    pattern = [62, 65, 69, 74, 77, 74, 69, 65]
    return _fades(_notes(pattern * 3, 0.25, pluck))


def fm_bell() -> Signal:
    """Mode 3: FM bells (inharmonic 1:1.4 ratio), one strike a second."""

    def bell(freq: float, since: Signal) -> Signal:
        index = 5.0 * np.exp(-since / 0.8)
        modulator = index * np.sin(2 * math.pi * 1.4 * freq * since)
        carrier = np.sin(2 * math.pi * freq * since + modulator)
        return carrier * np.exp(-since / 1.2) * np.minimum(since / 0.002, 1.0)

    return _fades(_notes([76, 71, 80, 64, 73, 76], 1.0, bell))


def rain() -> Signal:
    """Mode 4: band-passed noise swelling up and down, with droplets."""
    rng = np.random.default_rng(4)
    t = _time()
    spectrum = np.fft.rfft(rng.standard_normal(len(t)))
    freqs = np.fft.rfftfreq(len(t), 1 / RATE)
    band = np.exp(-0.5 * ((np.log2(np.maximum(freqs, 1.0)) - math.log2(1500.0)) / 0.8) ** 2)
    noise = np.fft.irfft(spectrum * band, len(t))
    noise /= np.max(np.abs(noise))
    swell = np.sin(math.pi * t / SECONDS) ** 2
    drops = np.zeros_like(t)
    for start, freq in zip(
        rng.integers(0, len(t) - RATE // 10, 40), rng.uniform(1800.0, 4200.0, 40), strict=True
    ):
        since = t[: RATE // 10]
        drops[start : start + len(since)] += (
            np.sin(2 * math.pi * freq * since) * np.exp(-since / 0.015) * 0.6
        )
    return _fades(0.6 * noise * swell + drops)


def square_melody() -> Signal:
    """Mode 5: a chiptune melody on a band-limited square wave."""

    def square(freq: float, since: Signal) -> Signal:
        # Odd harmonics below 8 kHz: the square's sound without its aliasing.
        wave = sum(
            np.sin(2 * math.pi * k * freq * since) / k for k in range(1, int(8000 / freq) + 1, 2)
        )
        gate = (since < 0.22).astype(np.float64)  # short gap between notes
        return wave * gate * np.minimum(since / 0.003, 1.0)

    tune = [64, 64, 65, 67, 67, 65, 64, 62, 60, 60, 62, 64, 64, 62, 62, 62]
    return _fades(_notes(tune * 2, 0.25, square))


SOUNDS: dict[str, Callable[[], Signal]] = {
    "1-chord.flac": sine_chord,
    "2-arpeggio.flac": arpeggio,
    "3-bells.flac": fm_bell,
    "4-rain.flac": rain,
    "5-melody.flac": square_melody,
}


def write_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in SOUNDS.items():
        signal = make()
        signal = signal * (PEAK / np.max(np.abs(signal)))
        path = out / name
        sf.write(path, signal.astype(np.float32), RATE, format="FLAC", subtype="PCM_16")
        log.info("%s: %.1f s, %d bytes", path, SECONDS, path.stat().st_size)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "hub" / "sounds"
    parser.add_argument("--out", type=Path, default=default, help=f"default: {default}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_all(args.out)


if __name__ == "__main__":
    main()
