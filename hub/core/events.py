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
