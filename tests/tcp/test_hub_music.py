"""The ``hub-music`` command as users run it: a real process, a real signal."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from cli_helpers import Proc
from raw_client import RawClient
from tcp_helpers import write_tone

from hub.tcp.codec import Audio, ListResult, ListTracks, Play, StreamStart

pytestmark = pytest.mark.asyncio

HUB_MUSIC = str(Path(sys.executable).with_name("hub-music"))


async def test_hub_music_exits_quietly_after_playing_resampled_tracks(tmp_path: Path) -> None:
    """44.1 kHz files go through soxr; LIST starts encoding every one and PLAY
    reads one part of the way. The SIGTERM that follows must leave nothing on
    standard error but the log: no ``nanobind: leaked ...`` report of
    resamplers still alive at exit, no traceback."""
    folder = tmp_path / "music"
    folder.mkdir()
    for n in range(3):
        write_tone(folder / f"{n} - tone.wav", 440.0 + 100 * n, 3.0, samplerate=44_100)
    server = Proc([HUB_MUSIC, "0", str(folder), "--host", "127.0.0.1"])
    try:
        address = server.expect(r".* streaming on (127\.0\.0\.1:\d+)", 20).group(1)
        client = await RawClient.connect(address)
        await client.hello()
        client.send(ListTracks())
        assert len((await client.next(ListResult)).tracks) == 3
        client.send(Play(1))
        await client.next(StreamStart)
        await client.next(Audio)
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
        client.close()
        client.check()
    finally:
        server.stop()
    assert not [line for line in server.lines if "nanobind" in line], server.lines
    assert not [line for line in server.lines if "Traceback" in line], server.lines
