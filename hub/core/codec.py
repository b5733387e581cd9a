"""The wire form of core events between hubs: pure functions, bytes <-> event.

No I/O here. A broker that carries publications out of the process encodes
each event once with ``encode`` and every receiving hub decodes it once with
``decode``. Chat events, room notices, LED frames and session ends are small
JSON objects tagged by ``"t"``; an ``AudioFrame`` (fifty a second per playing
room) is a compact binary header followed by its Opus packet. The first byte
tells the two apart: ``{`` for JSON, ``A`` for audio.
"""

from __future__ import annotations

import json
import struct
from typing import Any

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

Event = (
    UserJoined
    | UserLeft
    | UserMessage
    | ServerShutdown
    | SessionClosed
    | LedFrame
    | RoomNotice
    | AudioFrame
)


class CodecError(ValueError):
    """Bytes that are not an event of this codec (another version, or damage)."""


_AUDIO_TAG = b"A"
# tag, flags, stream id, seq, frame seconds, duration (NaN: unknown),
# end reason index (0: none), title length; then the title and the packet.
_AUDIO = struct.Struct("!cBIidfBH")
_START, _END, _HAS_DURATION = 1, 2, 4
_END_REASONS = list(StreamEnd)


def encode(event: Event) -> bytes:
    """``event``'s bytes; raises ``TypeError`` for anything that is not an event."""
    if isinstance(event, AudioFrame):
        return _encode_audio(event)
    fields: dict[str, Any]
    if isinstance(event, UserMessage):
        fields = {"t": "msg", "n": event.name, "s": event.session_id, "x": event.text}
    elif isinstance(event, UserJoined):
        fields = {"t": "in", "n": event.name, "s": event.session_id}
    elif isinstance(event, UserLeft):
        fields = {"t": "out", "n": event.name, "s": event.session_id, "r": event.reason.value}
    elif isinstance(event, SessionClosed):
        fields = {"t": "end", "s": event.session_id, "r": event.reason.value}
    elif isinstance(event, ServerShutdown):
        fields = {"t": "bye"}
    elif isinstance(event, LedFrame):
        fields = {"t": "led", "l": list(event.leds)}
    elif isinstance(event, RoomNotice):
        fields = {"t": "note", "r": event.room, "x": event.text}
    else:
        raise TypeError(f"no wire form between hubs for {event!r}")
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def decode(data: bytes) -> Event:
    """The event ``data`` encodes; raises ``CodecError`` for anything else."""
    if data[:1] == _AUDIO_TAG:
        return _decode_audio(data)
    try:
        fields = json.loads(data)
        kind = fields["t"]
        if kind == "msg":
            return UserMessage(name=fields["n"], session_id=fields["s"], text=fields["x"])
        if kind == "in":
            return UserJoined(name=fields["n"], session_id=fields["s"])
        if kind == "out":
            reason = LeaveReason(fields["r"])
            return UserLeft(name=fields["n"], session_id=fields["s"], reason=reason)
        if kind == "end":
            return SessionClosed(session_id=fields["s"], reason=LeaveReason(fields["r"]))
        if kind == "bye":
            return ServerShutdown()
        if kind == "led":
            leds = tuple(int(v) for v in fields["l"])
            if len(leds) != 6:
                raise CodecError("an LED frame has six LEDs")
            return LedFrame(leds)  # type: ignore[arg-type,unused-ignore]  # length checked above
        if kind == "note":
            return RoomNotice(room=fields["r"], text=fields["x"])
    except CodecError:
        raise
    except (ValueError, KeyError, TypeError) as error:
        raise CodecError(f"not an event: {error}") from None
    raise CodecError(f"unknown event kind {kind!r}")


def _encode_audio(frame: AudioFrame) -> bytes:
    title = frame.title.encode()
    flags = (
        (_START if frame.is_start else 0)
        | (_END if frame.is_end else 0)
        | (_HAS_DURATION if frame.duration is not None else 0)
    )
    reason = 0 if frame.end_reason is None else _END_REASONS.index(frame.end_reason) + 1
    header = _AUDIO.pack(
        _AUDIO_TAG,
        flags,
        frame.stream_id,
        frame.seq,
        frame.frame_seconds,
        frame.duration if frame.duration is not None else 0.0,
        reason,
        len(title),
    )
    return b"".join((header, title, frame.data))


def _decode_audio(data: bytes) -> AudioFrame:
    try:
        _, flags, stream_id, seq, frame_seconds, duration, reason, title_len = _AUDIO.unpack_from(
            data
        )
        start = _AUDIO.size
        title = data[start : start + title_len].decode()
        end_reason = _END_REASONS[reason - 1] if reason else None
    except (struct.error, UnicodeDecodeError, IndexError) as error:
        raise CodecError(f"not an audio frame: {error}") from None
    if len(data) < start + title_len:
        raise CodecError("audio frame cut short")
    return AudioFrame(
        stream_id,
        seq,
        data[start + title_len :],
        is_start=bool(flags & _START),
        is_end=bool(flags & _END),
        title=title,
        duration=duration if flags & _HAS_DURATION else None,
        frame_seconds=frame_seconds,
        end_reason=end_reason,
    )
