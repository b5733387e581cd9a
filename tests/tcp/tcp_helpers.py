"""Fixtures for the TCP streaming server tests: a real Hub, a StreamServer on
127.0.0.1 port 0 (and, for device rooms, a GrpcServer), raw clients over
loopback sockets.

- ``music``: a folder of small tones in wav, flac, ogg and mp3, plus a text
  file the server must skip (``TRACKS`` says what is in it).
- ``room_library``: the hub's mode sounds: mode 0 a 2 s tone, mode 1 a 1 s one.
- ``serve``: a factory, ``await serve(stream=StreamSettings(...), grpc=True)``,
  of running servers (``Served``), stopped at teardown.
- ``connect``: a factory of ``RawClient``s (HELLO/WELCOME done unless
  ``hello=False``), closed at teardown after checking the server never broke
  the protocol towards them.
- ``new_device``: a factory of connected ``StockDevice``s, checked for traps
  and disconnected at teardown.
- every test fails if the hub logged an error (a traceback).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
from chat_helpers import run_hub
from raw_client import RawClient
from stock_device import StockDevice

from hub.audio.library import SoundLibrary
from hub.audio.music import MusicFolder
from hub.audio.sources import SAMPLE_RATE, FileSound, GeneratedSound, Pcm
from hub.audio.testing import tone
from hub.clock import Clock
from hub.core.broker import Broker
from hub.core.hub import Hub
from hub.settings import DeviceSettings, Settings, StreamSettings
from hub.tcp.codec import ListResult, ListTracks
from hub.tcp.server import ClientConnection, StreamServer

SECRET = b"x" * 32


@dataclass(frozen=True, slots=True)
class TrackFile:
    name: str
    title: str
    freq: float
    seconds: float
    subtype: str | None = None


# Sorted by name, so the first scan gives them ids 1, 2, 3, 4.
TRACKS = (
    TrackFile("01 - Alpha.wav", "Alpha", 440.0, 3.0),
    TrackFile("02 - Bravo.flac", "Bravo", 660.0, 1.0),
    TrackFile("03 - Charlie.ogg", "Charlie", 550.0, 1.0, "VORBIS"),
    TrackFile("04 - Delta.mp3", "Delta", 330.0, 1.0),
)
ALPHA, BRAVO, CHARLIE, DELTA = 1, 2, 3, 4
ROOM_MODE_SECONDS = (2.0, 1.0)


def music_tone(freq: float, seconds: float, rate: int = SAMPLE_RATE) -> Pcm:
    """The music folder's tracks: a tone with 10 ms fades and a soft overtone."""
    return tone(freq, seconds, rate=rate, amplitude=0.4, fade=0.01, overtone=0.1)


def write_tone(
    path: Path,
    freq: float,
    seconds: float,
    subtype: str | None = None,
    *,
    samplerate: int = SAMPLE_RATE,
) -> Path:
    sf.write(path, music_tone(freq, seconds, samplerate), samplerate, subtype=subtype)
    return path


def noise_sound(seconds: float) -> GeneratedSound:
    """White noise: Opus spends its whole bitrate on it (for filling buffers fast)."""

    def render(first: int, count: int) -> Pcm:
        rng = np.random.default_rng(first)
        out: Pcm = (0.3 * rng.standard_normal(count)).astype(np.float32)
        return out

    return GeneratedSound("noise", key=f"test:noise:{seconds}", duration=seconds, render=render)


@pytest.fixture
def music(tmp_path: Path) -> Path:
    folder = tmp_path / "music"
    folder.mkdir()
    for track in TRACKS:
        write_tone(folder / track.name, track.freq, track.seconds, track.subtype)
    (folder / "notes.txt").write_text("not a sound\n")
    return folder


@pytest.fixture(scope="session")
def room_library(tmp_path_factory: pytest.TempPathFactory) -> SoundLibrary:
    folder = tmp_path_factory.mktemp("room-sounds")
    sounds = {
        mode: FileSound(write_tone(folder / f"mode-{mode}.wav", 300.0 + 200 * mode, seconds))
        for mode, seconds in enumerate(ROOM_MODE_SECONDS)
    }
    return SoundLibrary(sounds)


@dataclass(frozen=True, slots=True)
class Served:
    hub: Hub
    server: StreamServer
    address: str
    grpc_address: str | None


Serve = Callable[..., Awaitable[Served]]
Connect = Callable[..., Awaitable[RawClient]]
NewDevice = Callable[..., Awaitable[StockDevice]]


@pytest_asyncio.fixture
async def serve(music: Path, room_library: SoundLibrary) -> AsyncIterator[Serve]:
    async with AsyncExitStack() as stack:

        async def start(
            stream: StreamSettings | None = None,
            *,
            devices: DeviceSettings | None = None,
            library: SoundLibrary | None = None,
            grpc: bool = False,
            folder: Path | None = None,
            broker: Broker | None = None,
            clock: Clock | None = None,
        ) -> Served:
            settings = Settings(
                stream=stream or StreamSettings(), devices=devices or DeviceSettings()
            )
            hub = Hub(
                settings, secret=SECRET, library=library or room_library, broker=broker, clock=clock
            )
            grpc_address = None
            if grpc:
                grpc_address, _ = await run_hub(stack, hub)
            else:
                await hub.start()
                stack.push_async_callback(hub.close)
                stack.push_async_callback(hub.shutdown)
            server = StreamServer(hub, MusicFolder(folder or music))
            address = await server.start("127.0.0.1:0")
            stack.push_async_callback(server.close)
            return Served(hub, server, address, grpc_address)

        yield start


@pytest_asyncio.fixture
async def connect(serve: Serve) -> AsyncIterator[Connect]:
    """``await connect(address, hello=True, token=None, **options)``.

    Depends on ``serve`` so that clients go before their server.
    """
    made: list[RawClient] = []

    async def new(
        address: str, *, hello: bool = True, token: str | None = None, **options: Any
    ) -> RawClient:
        client = await RawClient.connect(address, **options)
        made.append(client)
        if hello:
            await client.hello(token)
        return client

    yield new
    for client in made:
        client.close()
    for client in made:
        client.check()


@pytest_asyncio.fixture
async def new_device(serve: Serve) -> AsyncIterator[NewDevice]:
    """``await new_device(grpc_address, room)``: a stock device, connected."""
    made: list[StockDevice] = []

    async def new(address: str, room: str) -> StockDevice:
        device = StockDevice(address, room)
        made.append(device)
        await device.connect()
        await device.wait_ready()
        return device

    yield new
    problems = []
    for device in made:
        try:
            device.check()
        except AssertionError as error:
            problems.append(str(error))
        await device.disconnect()
    assert not problems, problems


async def list_tracks(client: RawClient) -> list[tuple[int, str, int | None]]:
    """LIST, and every page of its answer: (id, title, duration in ms)."""
    client.send(ListTracks())
    tracks = []
    while True:
        page = await client.next(ListResult)
        tracks += [(t.track_id, t.title, t.duration_ms) for t in page.tracks]
        if not page.more:
            return tracks


def connection_of(server: StreamServer, client: RawClient) -> ClientConnection:
    """The server's side of ``client``'s connection (found by its session id)."""
    assert client.welcome is not None
    return next(c for c in server.clients if c.id == client.welcome.session_id)
