"""Reading the hub's LED scheme back from a frame (docs/leds.md, hub/core/leds.py).

The panel says what the LEDs say, nothing more: ``led_1`` is the room's state
and ``led_2``..``led_5`` its mode, exactly as the hub paints them. A frame
that is not a picture of that scheme (another server, a fake, a bug) reads as
``None`` and the panel falls back to naming the colours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hub.core import leds as scheme


@dataclass(frozen=True)
class HubReading:
    state: str  # "idle", "playing", "error", or "connect flash"
    mode: int  # 0-based; people are shown mode + 1, as in docs/leds.md


_STATES = {rgba: state.value for state, rgba in scheme.STATE_COLOURS.items()}
_STATES[scheme.FLASH] = "connect flash"


def read_frame(leds: Sequence[int]) -> HubReading | None:
    """The hub's state and mode shown by six LEDs, or None if they show neither."""
    if len(leds) != 6 or leds[1] not in _STATES:
        return None
    mode_leds = list(leds[2 : 2 + scheme.MODE_LEDS])
    lit = sum(1 for rgba in mode_leds if rgba != scheme.OFF)
    colour = mode_leds[0]
    # A mode lights a prefix of the mode LEDs, all in one palette colour.
    if lit == 0 or colour not in scheme.MODE_COLOURS:
        return None
    if mode_leds != [colour] * lit + [scheme.OFF] * (scheme.MODE_LEDS - lit):
        return None
    mode = scheme.MODE_COLOURS.index(colour) * scheme.MODE_LEDS + lit - 1
    return HubReading(_STATES[leds[1]], mode)
