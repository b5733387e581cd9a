"""Core events: what the hub publishes, independent of any wire format."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class LeaveReason(enum.Enum):
    LOGOUT = "logout"  # the user called Logout
    GONE = "gone"  # every stream closed and the grace period ran out
    EXPIRED = "expired"  # the token's lifetime ran out


@dataclass(frozen=True, slots=True)
class UserJoined:
    name: str
    session_id: str


@dataclass(frozen=True, slots=True)
class UserLeft:
    name: str
    session_id: str
    reason: LeaveReason


@dataclass(frozen=True, slots=True)
class UserMessage:
    name: str
    session_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ServerShutdown:
    pass


ChatEvent = UserJoined | UserLeft | UserMessage | ServerShutdown


# -- device rooms --------------------------------------------------------


class StreamEnd(enum.Enum):
    FINISHED = "finished"  # the sound ran out
    STOPPED = "stopped"  # Stop was pressed
    SWITCHED = "switched"  # Play was pressed again: another stream follows
    ERROR = "error"  # the sound could not be read or encoded
    CLOSED = "closed"  # the room closed (hub shutdown, room expired)


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One Opus packet of one stream; ``is_start``/``is_end`` mark its edges.

    Every frame, the start and end ones included, carries exactly one valid
    Opus packet: the stock device decodes every ``data`` it gets.
    """

    stream_id: int
    seq: int
    data: bytes
    is_start: bool = False
    is_end: bool = False
    title: str = ""
    duration: float | None = None  # of the whole sound, when known
    frame_seconds: float = 0.02  # what each packet of the stream plays for
    end_reason: StreamEnd | None = None


@dataclass(frozen=True, slots=True)
class LedFrame:
    """The room's full six-LED frame (0xRRGGBBAA each)."""

    leds: tuple[int, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class RoomNotice:
    """Something people watching a room want to read about."""

    room: str
    text: str


# -- between hubs ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """A session ended (for ``reason``): every hub ends its streams of it.

    Published on the control channel by the one hub that ended the session,
    and received by every hub, that one included.
    """

    session_id: str
    reason: LeaveReason
