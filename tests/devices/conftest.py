"""Fixtures for the device tests: a real Hub and grpc.aio server, stock devices.

- ``device_library``: four modes: a 120 s generated sound (mode 0, for Stop)
  and three short tones written as WAV files (modes 1-3).
- ``device_settings``: the Settings ``served`` starts with; override per test
  with ``@pytest.mark.parametrize("device_settings", [...], indirect=True)``.
- ``start_hub``: a factory, ``await start_hub(settings)``, of served hubs.
- ``served``: one served hub (``DeviceHub``).
- ``new_device``: a factory of connected ``StockDevice``s; at teardown every
  device is checked for traps (anything that would hurt the real device),
  then disconnected, before any hub stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import soundfile as sf
from chat_helpers import SECRET, no_errors_logged, run_hub, settings_param  # noqa: F401
from device_helpers import DeviceHub, NewDevice, StartHub, device_hub_settings
from fake_clock import clock_from_now
from stock_device import StockDevice

from hub.audio.library import SoundLibrary
from hub.audio.sources import SAMPLE_RATE, FileSound, GeneratedSound, render_long_arpeggio
from hub.audio.testing import tone
from hub.clock import Clock
from hub.core.hub import Hub
from hub.settings import Settings

# (file name, Hz, seconds): distinct pitches, so each correlates with itself only.
TONES = (("tone-a", 523.25, 0.8), ("tone-b", 784.0, 0.6), ("tone-c", 330.0, 1.0))
LONG_SECONDS = 120.0


@pytest.fixture(scope="session")
def sound_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("device-sounds")
    paths = []
    for name, freq, seconds in TONES:
        path = folder / f"{name}.wav"
        sf.write(
            path,
            tone(freq, seconds, amplitude=0.4, fade=0.01, overtone=0.15),
            SAMPLE_RATE,
            subtype="PCM_16",
        )
        paths.append(path)
    return paths


@pytest.fixture
def device_library(sound_files: list[Path]) -> SoundLibrary:
    long = GeneratedSound(
        "long", key="test:long-arpeggio:120", duration=LONG_SECONDS, render=render_long_arpeggio
    )
    sounds = {0: long, **{i + 1: FileSound(path) for i, path in enumerate(sound_files)}}
    return SoundLibrary(sounds, long=long)


@pytest.fixture
def device_settings(request: pytest.FixtureRequest) -> Settings:
    return settings_param(request, device_hub_settings)


@pytest_asyncio.fixture
async def start_hub(device_library: SoundLibrary) -> AsyncIterator[StartHub]:
    async with AsyncExitStack() as stack:

        async def start(
            settings: Settings | None = None,
            *,
            library: SoundLibrary | None = None,
            clock: Clock | None = None,
        ) -> DeviceHub:
            hub = Hub(
                settings or device_hub_settings(),
                clock=clock,
                secret=SECRET,
                library=library or device_library,
            )
            address, server = await run_hub(stack, hub)
            return DeviceHub(hub, address, server)

        yield start


@pytest.fixture
def hub_clock(request: pytest.FixtureRequest) -> Clock | None:
    """The served hub's clock: the system's, or with ``indirect`` parameter
    "fake" the tests' ``FakeClock``, which moves only when the test says (so
    that a room's player waits for it too)."""
    if getattr(request, "param", None) == "fake":
        return clock_from_now(auto_advance=False)
    return None


@pytest_asyncio.fixture
async def served(
    start_hub: StartHub, device_settings: Settings, hub_clock: Clock | None
) -> DeviceHub:
    return await start_hub(device_settings, clock=hub_clock)


@pytest_asyncio.fixture
async def new_device(start_hub: StartHub) -> AsyncIterator[NewDevice]:
    """``await new_device(address, device_id, ..., check=True)``: a connected device.

    Depends on ``start_hub`` so that devices are torn down before any hub.
    """
    made: list[tuple[StockDevice, bool]] = []

    async def new(
        address: str,
        device_id: str | None = "test_client",
        *,
        check: bool = True,
        connect: bool = True,
        **options: Any,
    ) -> StockDevice:
        device = StockDevice(address, device_id, **options)
        made.append((device, check))
        if connect:
            await device.connect()
        return device

    yield new
    problems = []
    for device, check in made:
        if check:
            try:
                device.check()
            except AssertionError as error:
                problems.append(str(error))
        await device.disconnect()
        if check and device.traps:
            problems.append(f"{device!r} after disconnect: {device.traps}")
    assert not problems, problems
