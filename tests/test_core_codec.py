"""The codec between hubs: every core event round-trips; bad bytes are refused by name."""

from __future__ import annotations

import pytest

from hub.core.codec import CodecError, Event, decode, encode
from hub.core.events import (
    AudioFrame,
    LeaveReason,
    LedFrame,
    RoomNotice,
    ServerShutdown,
    SessionClosed,
    StreamEnd,
    UserJoined,
    UserLeft,
    UserMessage,
)
from hub.core.roomstate import Action, Input, RoomRecord, RoomState, advance

EVENTS: list[Event] = [
    UserJoined("alice", "0a1b2c3d"),
    UserLeft("Zoë", "0a1b2c3d", LeaveReason.GONE),
    UserMessage("李雷", "0a1b2c3d", 'tab\there "quoted" 🙂'),
    ServerShutdown(),
    SessionClosed("0a1b2c3d", LeaveReason.LOGOUT),
    LedFrame((1, 2, 3, 4, 5, 0xFFFFFFFF)),
    RoomNotice("kitchen", "playing rain"),
    AudioFrame(7, 0, b"\xfc\xff", is_start=True, title="rain", duration=6.0),
    AudioFrame(7, 12, b"\x00" * 80),
    AudioFrame(2**32 - 1, -1, b"", is_end=True, end_reason=StreamEnd.SWITCHED, frame_seconds=0.01),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips(event: Event) -> None:
    assert decode(encode(event)) == event


def test_chat_events_are_small_json() -> None:
    assert encode(UserJoined("al", "0a1b2c3d")) == b'{"t":"in","n":"al","s":"0a1b2c3d"}'


def test_audio_frames_are_a_binary_header_then_title_then_packet() -> None:
    data = encode(AudioFrame(1, 2, b"OPUS", title="t"))
    assert data[:1] == b"A" and data.endswith(b"tOPUS")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b'{"t":"nope"}',
        b'{"t":"led","l":[1,2]}',
        b'{"t":"out","n":"a","s":"b","r":"x"}',
        b"A\x00",
        encode(AudioFrame(1, 2, b"", title="long title"))[:-3],
    ],
)
def test_bad_bytes_are_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


def test_anything_else_has_no_wire_form() -> None:
    with pytest.raises(TypeError):
        encode("text")  # type: ignore[arg-type]


def test_advance_is_one_whole_step_of_the_room() -> None:
    ids = iter([10, 11])
    kw = {"next_mode": lambda m: (m + 1) % 3, "new_stream_id": lambda: next(ids)}
    record = RoomRecord()
    record, actions = advance(record, Input.PLAY, None, **kw)  # type: ignore[arg-type]
    assert (record, actions) == (RoomRecord(0, RoomState.PLAYING, 10), (Action.START_STREAM,))
    record, _ = advance(record, Input.MODE, None, **kw)  # type: ignore[arg-type]
    assert record == RoomRecord(1, RoomState.PLAYING, 10)
    stale, actions = advance(record, Input.ENDED, 9, **kw)  # type: ignore[arg-type]
    assert (stale, actions) == (record, ())
    record, actions = advance(record, Input.PLAY, None, **kw)  # type: ignore[arg-type]
    assert record.stream_id == 11 and actions == (Action.END_STREAM, Action.START_STREAM)
    record, _ = advance(record, Input.ENDED, 11, **kw)  # type: ignore[arg-type]
    assert record == RoomRecord(1, RoomState.IDLE, None)
