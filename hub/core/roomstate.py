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
    IDLE/ERROR ENDED/FAILED  same -  (a stale stream's news: ignored)

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
}


def step(state: RoomState, given: Input) -> tuple[RoomState, tuple[Action, ...]]:
    """The next state and the actions to take; stale news changes nothing."""
    return TRANSITIONS.get((state, given), (state, ()))


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """What every hub must agree on about a room: one record, changed by ``advance``."""

    mode: int = 0
    state: RoomState = RoomState.IDLE
    stream_id: int | None = None  # the stream playing, if any


def advance(
    record: RoomRecord,
    given: Input,
    stream_id: int | None,
    *,
    next_mode: Callable[[int], int],
    new_stream_id: Callable[[], int],
) -> tuple[RoomRecord, tuple[Action, ...]]:
    """One step of the room: its next record and the actions the room must take.

    ``stream_id`` names the stream that ``ENDED`` or ``FAILED`` speaks of: news
    of a stream that is no longer the room's changes nothing. Pure apart from
    the two functions it is given, so a store can run it under one lock (or
    one Redis transaction) and every hub sees whole steps only.
    """
    if given in (Input.ENDED, Input.FAILED) and stream_id != record.stream_id:
        return record, ()
    state, actions = step(record.state, given)
    mode, current = record.mode, record.stream_id
    for action in actions:
        if action is Action.NEXT_MODE:
            mode = next_mode(mode)
        elif action is Action.END_STREAM:
            current = None
        else:  # START_STREAM, START_LIVE
            current = new_stream_id()
    return RoomRecord(mode, state, current), actions
