"""The room state machine's table, pair by pair (no gRPC, no event loop)."""

from __future__ import annotations

import itertools

import pytest

from hub.core.roomstate import TRANSITIONS, Action, Input, RoomState, step

IDLE, PLAYING, ERROR = RoomState.IDLE, RoomState.PLAYING, RoomState.ERROR
NEXT, END, START, LIVE = (
    Action.NEXT_MODE,
    Action.END_STREAM,
    Action.START_STREAM,
    Action.START_LIVE,
)

# Written out independently of roomstate.py: every (state, input) pair.
EXPECTED: dict[tuple[RoomState, Input], tuple[RoomState, tuple[Action, ...]]] = {
    (IDLE, Input.MODE): (IDLE, (NEXT,)),
    (IDLE, Input.PLAY): (PLAYING, (START,)),
    (IDLE, Input.STOP): (IDLE, ()),
    (IDLE, Input.ENDED): (IDLE, ()),  # a stale stream's news
    (IDLE, Input.FAILED): (IDLE, ()),
    (IDLE, Input.LIVE): (PLAYING, (LIVE,)),
    # Mode while playing picks the next sound; the sound plays on.
    (PLAYING, Input.MODE): (PLAYING, (NEXT,)),
    # The end mark of the old stream goes out before the new stream starts.
    (PLAYING, Input.PLAY): (PLAYING, (END, START)),
    (PLAYING, Input.STOP): (IDLE, (END,)),
    (PLAYING, Input.ENDED): (IDLE, (END,)),
    (PLAYING, Input.FAILED): (ERROR, (END,)),
    (PLAYING, Input.LIVE): (PLAYING, (END, LIVE)),
    (ERROR, Input.MODE): (IDLE, (NEXT,)),
    (ERROR, Input.PLAY): (PLAYING, (START,)),
    (ERROR, Input.STOP): (IDLE, ()),
    (ERROR, Input.ENDED): (ERROR, ()),
    (ERROR, Input.FAILED): (ERROR, ()),
    (ERROR, Input.LIVE): (PLAYING, (LIVE,)),
    # Another hub takes over a room whose driver died: end, then the sound again.
    (IDLE, Input.RESUME): (IDLE, ()),
    (PLAYING, Input.RESUME): (PLAYING, (END, START)),
    (ERROR, Input.RESUME): (ERROR, ()),
    # This hub closes its copy of the room: a stream playing ends, nothing else.
    (IDLE, Input.CLOSE): (IDLE, ()),
    (PLAYING, Input.CLOSE): (IDLE, (END,)),
    (ERROR, Input.CLOSE): (ERROR, ()),
}


def test_the_expected_table_covers_every_pair() -> None:
    assert set(EXPECTED) == set(itertools.product(RoomState, Input))


@pytest.mark.parametrize(
    ("state", "given"),
    list(itertools.product(RoomState, Input)),
    ids=lambda v: str(v.value),
)
def test_step(state: RoomState, given: Input) -> None:
    assert step(state, given) == EXPECTED[state, given]


def test_the_table_lists_only_real_moves() -> None:
    """Pairs left out of TRANSITIONS are exactly the ones that change nothing."""
    for pair, outcome in EXPECTED.items():
        if pair not in TRANSITIONS:
            assert outcome == (pair[0], ()), pair


def test_a_stream_is_never_started_twice_without_an_end() -> None:
    """From any state, the actions keep at most one stream open."""
    for (state, _given), (after, actions) in EXPECTED.items():
        open_ = state is PLAYING
        for action in actions:
            if action is END:
                assert open_
                open_ = False
            elif action in (START, LIVE):
                assert not open_
                open_ = True
        assert open_ == (after is PLAYING)
