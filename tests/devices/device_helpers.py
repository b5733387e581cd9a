"""Helpers for the device tests: a served hub, expected packets, waits on the hub."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from chat_helpers import PASSWORD, ServedHub, eventually
from fake_clock import FakeClock
from stock_device import Played, StockDevice, wait_all

from hub.audio.sources import Pcm
from hub.audio.testing import best_correlation, read_all
from hub.core import leds
from hub.core.rooms import Room, audio_channel, status_channel
from hub.core.roomstate import RoomState
from hub.settings import ChatSettings, DeviceSettings, Settings

IDLE = RoomState.IDLE
PLAYING = RoomState.PLAYING

# The test library (conftest.device_library): mode 0 is long, the others short.
LONG = 0
TONE_A = 1  # 0.8 s
TONE_B = 2  # 0.6 s
TONE_C = 3  # 1.0 s
MODES = 4


def device_hub_settings(**devices: Any) -> Settings:
    """Settings for a device test hub: the chat password, and ``devices`` as given."""
    return Settings(chat=ChatSettings(password=PASSWORD), devices=DeviceSettings(**devices))


@dataclass(frozen=True, slots=True)
class DeviceHub(ServedHub):
    """A served hub (``chat_helpers.ServedHub``), and what the device tests
    ask of its rooms."""

    def room(self, room_id: str) -> Room:
        assert room_id in self.hub.rooms, f"no room {room_id}"
        return self.hub.rooms.get(room_id)

    def listeners(self, room_id: str) -> tuple[int, int]:
        """(status subscribers, audio subscribers) of a room."""
        return (
            self.hub.subscriber_count(status_channel(room_id)),
            self.hub.subscriber_count(audio_channel(room_id)),
        )

    async def ready(self, devices: Sequence[StockDevice]) -> None:
        """Until every device has its connect frames and the hub streams it audio.

        A device cannot tell when the hub has subscribed its ServerAudioStream;
        the test waits for the hub's count so that a Play pressed next is heard
        from its first packet.
        """
        clock = self.hub.clock
        if isinstance(clock, FakeClock):
            # The flash ends on the hub's clock: time moves when the test says.
            await wait_all(devices, lambda d: len(d.frames) >= 2, what="the flash")
            clock.advance(leds.FLASH_SECONDS)
        await wait_all(devices, lambda d: len(d.frames) >= 3, what="the connect frames")
        rooms: dict[str, int] = {}
        for device in devices:
            assert device.device_id is not None
            rooms[device.device_id] = rooms.get(device.device_id, 0) + 1
        for room_id, count in rooms.items():
            await eventually(
                lambda r=room_id, n=count: (  # type: ignore[misc]
                    r in self.hub.rooms and self.room(r).members >= n and self.listeners(r)[1] >= n
                ),
                f"{count} devices in room {room_id}",
            )

    def expected_stream(self, mode: int) -> list[bytes]:
        """The exact packets a whole stream of ``mode`` carries, end mark included."""
        rooms = self.hub.rooms
        encoded = rooms.encoded(rooms.library[mode])
        assert encoded.complete, "the sound is not fully encoded yet"
        return [*encoded.packets, rooms.silence]

    def reference(self, mode: int) -> Pcm:
        return read_all(self.hub.rooms.library[mode])

    def correlation(self, played: Played, mode: int) -> float:
        return best_correlation(played.pcm, self.reference(mode))


def frame(state: RoomState, mode: int) -> leds.Frame:
    return leds.frame(state, mode)


def percentiles(values: Sequence[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"p50 {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms, "
        f"min {min(ms):.1f} ms (n={len(ms)})"
    )


def prefix_correlation(played: Played, reference: Pcm) -> float:
    """Correlation of a cut stream (end mark left out) with the start of its sound."""
    pcm = np.concatenate(played.chunks[:-1]).astype(np.float32) / 32768.0
    return best_correlation(pcm, reference[: len(pcm)])


StartHub = Callable[..., Awaitable[DeviceHub]]
NewDevice = Callable[..., Awaitable[StockDevice]]


async def hearing_the_long_sound(
    served: DeviceHub, new_device: NewDevice, room_id: str, packets: int
) -> StockDevice:
    """A new device of ``room_id``, ready, that pressed Play in mode 0 (the long
    sound) and has heard ``packets`` packets of it."""
    device = await new_device(served.address, room_id)
    await served.ready([device])
    assert await device.play() is True
    await device.wait_for(lambda: len(device.packets) >= packets, what="the long sound")
    return device
