"""Sessions: who is logged in, with which token, and whether they are still here.

A session is born at login and ends in one of three ways, each announced once:
``Logout`` (revocation: its open streams end too), its token's expiry, or
departure — every stream of it gone for longer than the grace period. A
reconnect within the grace keeps the session, and nobody is told anything.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Protocol

from hub.clock import Clock
from hub.core.events import LeaveReason
from hub.core.ratelimit import TokenBucket
from hub.core.tokens import TokenIssuer
from hub.errors import HubError, NotFound, SessionEnded, Unauthenticated
from hub.settings import ChatSettings

log = logging.getLogger(__name__)


class SessionStream(Protocol):
    """Anything a session keeps open: ended when the session ends."""

    def close(self, error: HubError | None = None) -> None: ...


class Session:
    __slots__ = ("_departure", "_expiry", "bucket", "expires", "id", "name", "streams")

    def __init__(self, session_id: str, name: str, expires: float, bucket: TokenBucket) -> None:
        # 8 hex digits: what log lines show where the reference showed its token.
        self.id = session_id
        self.name = name
        self.expires = expires
        self.bucket = bucket
        self.streams: set[SessionStream] = set()
        self._departure: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"Session({self.id} {self.name!r})"


EndHandler = Callable[[Session, LeaveReason], None]


class Sessions:
    """The registry of live sessions; the only place a session changes state."""

    def __init__(
        self, settings: ChatSettings, issuer: TokenIssuer, clock: Clock, on_end: EndHandler
    ) -> None:
        self._settings = settings
        self._issuer = issuer
        self._clock = clock
        self._on_end = on_end
        self._live: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._live)

    def create(self, name: str) -> tuple[Session, str]:
        session_id = secrets.token_hex(4)
        while session_id in self._live:
            session_id = secrets.token_hex(4)
        token, expires = self._issuer.issue(session_id, name)
        bucket = TokenBucket(self._settings.rate_per_second, self._settings.rate_burst, self._clock)
        session = Session(session_id, name, expires, bucket)
        self._live[session_id] = session
        loop = asyncio.get_running_loop()
        session._expiry = loop.call_later(
            max(0.0, expires - self._clock.wall()), self.end, session, LeaveReason.EXPIRED
        )
        # A session that never opens a stream is gone after the grace too.
        self._schedule_departure(session)
        return session, token

    def authenticate(self, token: str) -> Session:
        claims = self._issuer.verify(token)
        session = self._live.get(claims.session_id)
        if session is None:
            raise Unauthenticated("invalid token")
        return session

    def revoke(self, token: str) -> Session:
        """Logout: end the token's session and every stream it has open."""
        try:
            session = self.authenticate(token)
        except Unauthenticated:
            raise NotFound("token not found") from None
        self.end(session, LeaveReason.LOGOUT)
        return session

    def attach(self, session: Session, stream: SessionStream) -> None:
        if session.id not in self._live:
            raise Unauthenticated("invalid token")
        session.streams.add(stream)
        if session._departure is not None:
            session._departure.cancel()
            session._departure = None

    def detach(self, session: Session, stream: SessionStream) -> None:
        session.streams.discard(stream)
        if not session.streams and session.id in self._live:
            self._schedule_departure(session)

    def _schedule_departure(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        session._departure = loop.call_later(
            self._settings.grace, self.end, session, LeaveReason.GONE
        )

    def end(self, session: Session, reason: LeaveReason) -> None:
        if self._live.pop(session.id, None) is None:
            return
        for timer in (session._departure, session._expiry):
            if timer is not None:
                timer.cancel()
        error: HubError | None = None
        if reason is LeaveReason.EXPIRED:
            error = SessionEnded("token expired")
        for stream in list(session.streams):
            # After Logout the streams end cleanly (the reference client exits
            # on its own); an expired token's streams end UNAUTHENTICATED.
            stream.close(error)
        session.streams.clear()
        self._on_end(session, reason)

    def close(self) -> None:
        """Forget every session without announcing anything (process shutdown)."""
        for session in self._live.values():
            for timer in (session._departure, session._expiry):
                if timer is not None:
                    timer.cancel()
        self._live.clear()
