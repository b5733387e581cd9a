"""A device room's state machine: every transition lives in this table.

Inputs are button presses and the end of a sound; outputs are what the room
must do. ``Room`` (rooms.py) executes the actions; nothing else decides.

    state    input       next     actions
    IDLE     MODE        IDLE     next mode
    IDLE     PLAY        PLAYING  start stream
    IDLE     STOP        IDLE     -
    PLAYING  MODE        PLAYING  next mode (the sound plays on: Mode picks what
                                   the *next* Play plays, it does not cut audio)
    PLAYING  PLAY        PLAYING  end stream, start stream (the current mode's
                                   sound, from its start)
    PLAYING  STOP        IDLE     end stream
    PLAYING  ENDED       IDLE     end stream (the sound ran out)
    PLAYING  FAILED      ERROR    end stream
    IDLE     LIVE        PLAYING  start live stream
    PLAYING  LIVE        PLAYING  end stream, start live stream (newest wins)
    ERROR    MODE        IDLE     next mode
    ERROR    PLAY        PLAYING  start stream
    ERROR    STOP        IDLE     -
    ERROR    LIVE        PLAYING  start live stream
    PLAYING  RESUME      PLAYING  end stream, start stream (another hub takes
                                   over a room whose driver died mid-sound)
    PLAYING  CLOSE       IDLE     end stream (this hub closes its copy of the
                                   room; the stored record is not stepped)
    IDLE/ERROR ENDED/FAILED/RESUME/CLOSE  same -  (nothing plays: nothing to do)

A live stream is audio someone publishes into the room (a microphone, a
file sent over TCP); it ends like a sound does (ENDED when the publisher
finishes), and Stop or Play cut it like any other.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class RoomState(enum.Enum):
    IDLE = "idle"
    PLAYING = "playing"
    ERROR = "error"


class Input(enum.Enum):
    MODE = "mode"
    PLAY = "play"
    STOP = "stop"
    ENDED = "ended"  # the playing sound finished by itself
    FAILED = "failed"  # the playing sound could not be read or encoded
    LIVE = "live"  # someone starts publishing audio into the room
    # The hub that took over a room (its driver died) starts the sound again:
    # the old stream's end, then a new one, so every listener's stays well formed.
    RESUME = "resume"
    # This hub closes the room (forgotten after the linger, or at shutdown):
    # its copy stops playing; the stored record is the store's to keep.
    CLOSE = "close"


class Action(enum.Enum):
    NEXT_MODE = "next_mode"
    END_STREAM = "end_stream"
    START_STREAM = "start_stream"
    START_LIVE = "start_live"


TRANSITIONS: dict[tuple[RoomState, Input], tuple[RoomState, tuple[Action, ...]]] = {
    (RoomState.IDLE, Input.MODE): (RoomState.IDLE, (Action.NEXT_MODE,)),
    (RoomState.IDLE, Input.PLAY): (RoomState.PLAYING, (Action.START_STREAM,)),
    (RoomState.IDLE, Input.STOP): (RoomState.IDLE, ()),
    (RoomState.PLAYING, Input.MODE): (RoomState.PLAYING, (Action.NEXT_MODE,)),
    (RoomState.PLAYING, Input.PLAY): (
        RoomState.PLAYING,
        (Action.END_STREAM, Action.START_STREAM),
    ),
    (RoomState.PLAYING, Input.STOP): (RoomState.IDLE, (Action.END_STREAM,)),
    (RoomState.PLAYING, Input.ENDED): (RoomState.IDLE, (Action.END_STREAM,)),
    (RoomState.PLAYING, Input.FAILED): (RoomState.ERROR, (Action.END_STREAM,)),
    (RoomState.ERROR, Input.MODE): (RoomState.IDLE, (Action.NEXT_MODE,)),
    (RoomState.ERROR, Input.PLAY): (RoomState.PLAYING, (Action.START_STREAM,)),
    (RoomState.ERROR, Input.STOP): (RoomState.IDLE, ()),
    (RoomState.IDLE, Input.LIVE): (RoomState.PLAYING, (Action.START_LIVE,)),
    (RoomState.PLAYING, Input.LIVE): (
        RoomState.PLAYING,
        (Action.END_STREAM, Action.START_LIVE),
    ),
    (RoomState.ERROR, Input.LIVE): (RoomState.PLAYING, (Action.START_LIVE,)),
    (RoomState.PLAYING, Input.RESUME): (
        RoomState.PLAYING,
        (Action.END_STREAM, Action.START_STREAM),
    ),
    (RoomState.PLAYING, Input.CLOSE): (RoomState.IDLE, (Action.END_STREAM,)),
}

# Inputs that speak of one stream: news of another is stale.
ABOUT_A_STREAM = (Input.ENDED, Input.FAILED, Input.RESUME)


def step(state: RoomState, given: Input) -> tuple[RoomState, tuple[Action, ...]]:
    """The next state and the actions to take; stale news changes nothing."""
    return TRANSITIONS.get((state, given), (state, ()))


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """What every hub must agree on about a room: one record, changed by ``advance``."""

    mode: int = 0
    state: RoomState = RoomState.IDLE
    stream_id: int | None = None  # the stream playing, if any
    live: bool = False  # that stream is someone's publication, not a mode's sound
    # Counts the room's steps: of two copies of the record, the one with the
    # higher version is the newer (hubs hear of steps in any order).
    version: int = 0


def advance(
    record: RoomRecord,
    given: Input,
    stream_id: int | None,
    *,
    next_mode: Callable[[int], int],
    new_stream_id: Callable[[], int],
) -> tuple[RoomRecord, tuple[Action, ...]]:
    """One step of the room: its next record and the actions the room must take.

    ``stream_id`` names the stream that ``ENDED``, ``FAILED`` or ``RESUME``
    speaks of: news of a stream that is no longer the room's changes nothing,
    and a live stream is not resumed (its publisher pushes it, or nobody does
    and Stop ends it). Pure apart from
    the two functions it is given, so a store can run it under one lock (or
    one Redis transaction) and every hub sees whole steps only.
    """
    if given in ABOUT_A_STREAM and stream_id != record.stream_id:
        return record, ()
    if given is Input.RESUME and record.live:
        return record, ()
    state, actions = step(record.state, given)
    mode, current, live = record.mode, record.stream_id, record.live
    for action in actions:
        if action is Action.NEXT_MODE:
            mode = next_mode(mode)
        elif action is Action.END_STREAM:
            current, live = None, False
        else:  # START_STREAM, START_LIVE
            current, live = new_stream_id(), action is Action.START_LIVE
    return RoomRecord(mode, state, current, live, record.version + 1), actions
