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
    ERROR    MODE        IDLE     next mode
    ERROR    PLAY        PLAYING  start stream
    ERROR    STOP        IDLE     -
    IDLE/ERROR ENDED/FAILED  same -  (a stale stream's news: ignored)
"""

from __future__ import annotations

import enum


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


class Action(enum.Enum):
    NEXT_MODE = "next_mode"
    END_STREAM = "end_stream"
    START_STREAM = "start_stream"


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
}


def step(state: RoomState, given: Input) -> tuple[RoomState, tuple[Action, ...]]:
    """The next state and the actions to take; stale news changes nothing."""
    return TRANSITIONS.get((state, given), (state, ()))
