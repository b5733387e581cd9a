"""The sounds a device can choose with its Mode button, plus the long one.

Modes are indexed from 0 in the order of the sorted file names, so
``hub/sounds/1-chord.flac`` is mode index 0 (shown to people as "mode 1"); with
``with_long`` the long generated sound is the last mode. The folder is read
once, when the library is built: changing the sounds means restarting (or
building a new library), and the packet cache's keys include each file's size
and mtime, so stale packets are never served.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import soundfile as sf

from hub.audio.sources import FileSound, Sound, long_sound

log = logging.getLogger(__name__)


def default_sounds_folder() -> Path:
    """The bundled mode sounds: package data (``hub/sounds/``), found beside
    the package wherever it was installed (a checkout, a venv, a system or
    ``--user`` install), unlike a data-files prefix, which need not be
    ``sys.prefix``."""
    return Path(str(importlib.resources.files("hub").joinpath("sounds")))


def title_of(path: Path) -> str:
    """A file's title: its name less the extension and a leading track number,
    as in ``01 - Intro.mp3`` or ``1-chord.flac``."""
    return re.sub(r"^\d+\s*[-._ ]\s*", "", path.stem) or path.stem


class SoundLibrary:
    """Mode index (0, 1, ...) -> ``Sound``; iterate for the modes in order."""

    def __init__(self, sounds: Mapping[int, Sound], *, long: Sound | None = None) -> None:
        if not sounds:
            raise ValueError("a sound library needs at least one sound")
        self._sounds = dict(sorted(sounds.items()))
        self._long = long if long is not None else long_sound()

    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike[str] | None = None,
        *,
        with_long: bool = False,
        long: Sound | None = None,
    ) -> SoundLibrary:
        """Every file in ``folder`` (default: the bundled ``hub/sounds/``) that
        libsndfile can read, sorted by name, as modes 0, 1, ...

        ``with_long`` adds the long generated sound (``long``, default 20
        minutes) as the last mode.
        """
        path = Path(folder) if folder is not None else default_sounds_folder()
        if not path.is_dir():
            raise FileNotFoundError(f"no sounds folder at {path}")
        sounds: dict[int, Sound] = {}
        for file in sorted(p for p in path.iterdir() if p.is_file()):
            if file.name.startswith("."):
                continue
            try:
                sound = FileSound(file, title=title_of(file))
            except sf.SoundFileError as exc:  # what libsndfile cannot open
                log.debug("skipping %s: not a sound file (%s)", file, exc)
                continue
            sounds[len(sounds)] = sound
        log.info("sound library: %d sounds from %s", len(sounds), path)
        long = long if long is not None else long_sound()
        if with_long:
            sounds[len(sounds)] = long
        return cls(sounds, long=long)

    def __getitem__(self, mode: int) -> Sound:
        return self._sounds[mode]

    def __contains__(self, mode: object) -> bool:
        return mode in self._sounds

    def __len__(self) -> int:
        return len(self._sounds)

    def __iter__(self) -> Iterator[int]:
        return iter(self._sounds)

    @property
    def modes(self) -> list[int]:
        """Mode indexes in order."""
        return list(self._sounds)

    def next_mode(self, mode: int) -> int:
        """The mode after ``mode``, wrapping round (what a Mode press selects)."""
        modes = self.modes
        if mode not in self._sounds:
            return modes[0]
        return modes[(modes.index(mode) + 1) % len(modes)]

    def long_sound(self) -> Sound:
        """The long generated sound (20 minutes unless one was given)."""
        return self._long
