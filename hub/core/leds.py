"""The LED scheme: what a room's six LEDs show (see docs/leds.md).

- ``led_0`` belongs to the device (it lights it itself on Connect); the hub
  sends it dark and the stock client ignores it.
- ``led_1`` is the room's state: idle, playing, error.
- ``led_2``..``led_5`` are the mode: mode ``m`` lights the first
  ``m % 4 + 1`` of them in colour ``MODE_COLOURS[m // 4]``, so every mode up to
  ``4 * len(MODE_COLOURS)`` has its own picture, and with the default five
  modes they read as 1, 2, 3, 4 amber dots, then 1 cyan dot.

Colours are 0xRRGGBBAA; AA is the intensity.
"""

from __future__ import annotations

from hub.core.roomstate import RoomState

OFF = 0x00000000
STATE_COLOURS: dict[RoomState, int] = {
    RoomState.IDLE: 0x3050FF60,  # dim blue: awake, nothing playing
    RoomState.PLAYING: 0x00FF40FF,  # bright green
    RoomState.ERROR: 0xFF2020FF,  # red: the last sound could not be played
}
# Connect flash: the state LED goes white for a moment on the device that joins.
FLASH = 0xFFFFFFFF
FLASH_SECONDS = 0.25
MODE_COLOURS = (
    0xFFA000FF,  # amber
    0x00E0FFFF,  # cyan
    0xFF40C0FF,  # magenta
    0xA0FF00FF,  # lime
    0xFFFFFFFF,  # white
    0x8040FFFF,  # violet
)
MODE_LEDS = 4
MAX_MODES = MODE_LEDS * len(MODE_COLOURS)

Frame = tuple[int, int, int, int, int, int]


def frame(state: RoomState, mode: int) -> Frame:
    """The full six-LED frame for a room; every ``set`` sends all of it."""
    if not 0 <= mode < MAX_MODES:
        raise ValueError(f"mode {mode} has no LED picture (0..{MAX_MODES - 1})")
    lit, colour = mode % MODE_LEDS + 1, MODE_COLOURS[mode // MODE_LEDS]
    a, b, c, d = (colour if i < lit else OFF for i in range(MODE_LEDS))
    return (OFF, STATE_COLOURS[state], a, b, c, d)


def flashed(leds: Frame) -> Frame:
    return (leds[0], FLASH, leds[2], leds[3], leds[4], leds[5])
