"""One exception tree for everything the hub refuses.

Each front door maps these to its own wire form in one place: gRPC status
codes in ``hub.rpc.status``, error frames in the TCP adapter. The message is
meant for the peer: it never carries tracebacks, tokens or secrets.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """What kind of refusal this is; each adapter maps it to its wire code."""

    INVALID_ARGUMENT = "invalid_argument"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"


class HubError(Exception):
    """Root of every error the hub reports to a peer."""

    code: Code = Code.FAILED_PRECONDITION

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(HubError):
    code = Code.INVALID_ARGUMENT


class Unauthenticated(HubError):
    code = Code.UNAUTHENTICATED
    # Why, in one bounded word (a metrics label): never the token itself.
    reason = "invalid_token"


class MissingToken(Unauthenticated):
    reason = "missing_token"


class TokenExpired(Unauthenticated):
    reason = "token_expired"


class WrongPassword(Unauthenticated):
    reason = "wrong_password"


class PermissionDenied(HubError):
    code = Code.PERMISSION_DENIED


class NotFound(HubError):
    code = Code.NOT_FOUND


class ResourceExhausted(HubError):
    code = Code.RESOURCE_EXHAUSTED


class SlowConsumer(ResourceExhausted):
    """A subscriber fell behind past its queue bound and was disconnected."""


class RateLimited(ResourceExhausted):
    """A session sent faster than its token bucket allows."""


class Unavailable(HubError):
    code = Code.UNAVAILABLE


class ShuttingDown(Unavailable):
    """The hub is stopping: nothing new starts. Every door refuses with this
    one error: gRPC as ``UNAVAILABLE``, the TCP door as its ``shutdown`` code."""

    def __init__(self, message: str = "the server is shutting down") -> None:
        super().__init__(message)


class SessionEnded(HubError):
    """The session behind a stream was logged out or expired: end it cleanly."""

    code = Code.UNAUTHENTICATED
