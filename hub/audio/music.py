"""A music folder: every file libsndfile reads, with ids that stay put.

Ids are handed out in name order at the first scan; a later scan keeps the id
of every file still there (same path), gives new files the next free ids and
retires the ids of files that went away. So an id means the same track for as
long as its file stays, whatever else changes in the folder.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from hub.audio.library import title_of
from hub.audio.sources import FileSound

log = logging.getLogger(__name__)

# A folder is scanned on every `list`; a bound keeps one huge tree from
# making each request cost seconds and each answer megabytes.
MAX_TRACKS = 10_000


@dataclass(frozen=True, slots=True)
class Track:
    id: int
    title: str
    sound: FileSound

    @property
    def duration(self) -> float | None:
        return self.sound.duration


class MusicFolder:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._ids: dict[Path, int] = {}
        self._next_id = 1
        # What a file was when last read: (size, mtime) -> its Track, so a
        # rescan opens only files that are new or changed.
        self._known: dict[Path, tuple[tuple[int, int], Track]] = {}
        self._tracks: dict[int, Track] = {}
        # Scans run in worker threads, one per request: without this, two at
        # once could give one new file two ids, or retire one still in use.
        self._lock = threading.Lock()

    def scan(self) -> list[Track]:
        """Read the folder again (blocking: run it in a worker thread)."""
        with self._lock:
            return self._scan()

    def _scan(self) -> list[Track]:
        if not self.path.is_dir():
            raise FileNotFoundError(f"no music folder at {self.path}")
        files = sorted(
            p
            for p in self.path.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.path).parts)
        )
        tracks: dict[int, Track] = {}
        known: dict[Path, tuple[tuple[int, int], Track]] = {}
        for file in files:
            if len(tracks) >= MAX_TRACKS:
                log.warning("%s: more than %d tracks, listing the first", self.path, MAX_TRACKS)
                break
            stat = file.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            previous = self._known.get(file)
            if previous is not None and previous[0] == signature:
                track = previous[1]
            else:
                try:
                    sound = FileSound(file, title=self._title(file))
                except (sf.SoundFileError, RuntimeError, ValueError) as error:
                    log.debug("skipping %s: %s", file, error)
                    continue
                track_id = self._ids.get(file)
                if track_id is None:
                    track_id = self._ids[file] = self._next_id
                    self._next_id += 1
                track = Track(track_id, sound.title, sound)
            known[file] = (signature, track)
            tracks[track.id] = track
        for gone in self._ids.keys() - known.keys():
            del self._ids[gone]  # retired: a new file never gets its id
        self._known = known
        self._tracks = tracks
        return list(tracks.values())

    def get(self, track_id: int) -> Track | None:
        """The track with this id as of the last scan."""
        return self._tracks.get(track_id)

    def _title(self, file: Path) -> str:
        parent = file.parent.relative_to(self.path)
        title = title_of(file)
        return title if parent == Path(".") else f"{parent.as_posix()}/{title}"
