"""Sessions: who is logged in, with which token, and whether they are still here.

A session is born at login and ends in one of three ways, each announced once:
``Logout`` (revocation: its open streams end too), its token's expiry, or
departure — every stream of it gone for longer than the grace period. A
reconnect within the grace keeps the session, and nobody is told anything.

What every hub must agree on lives behind two protocols, each with a memory
implementation here (one process: today's behaviour) and a Redis one in
``hub.backplane`` (several hubs):

- ``SessionStore``: the records (id, name, expiry), the rate budget, and the
  one atomic step that ends a session, so that it ends exactly once.
- ``PresenceStore``: which hubs hold streams of a session, and the clocks that
  say when a session is due to end (expiry, departure after the grace).

``Sessions`` is this hub's registry: the streams it holds of each session and
the local copy of each record it has seen. A session ended anywhere reaches
every hub as ``closed`` (through the hub's control channel), which ends that
hub's streams of it.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from hub.clock import Clock, Timer
from hub.core.events import LeaveReason
from hub.core.ratelimit import TokenBucket
from hub.core.tokens import TokenIssuer
from hub.errors import HubError, NotFound, SessionEnded, Unauthenticated, Unavailable
from hub.settings import ChatSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What every hub knows of a session."""

    # 8 hex digits: what log lines show where the reference showed its token.
    id: str
    name: str
    expires: float  # wall-clock seconds


class SessionStore(Protocol):
    """The records every hub shares; ``end`` is the one place a session ends."""

    async def create(self, name: str, expires: float) -> SessionRecord:
        """A new live session, with an id no live session has."""

    async def get(self, session_id: str) -> SessionRecord | None:
        """The live session's record; None once it ended (or never was)."""

    async def end(self, session_id: str) -> SessionRecord | None:
        """End the session: its record for exactly one caller, None for every other."""

    async def allow(self, session_id: str) -> bool:
        """Spend one message of the session's rate budget, if there is one left."""


DueHandler = Callable[[str, LeaveReason], None]


class PresenceStore(Protocol):
    """Which hubs hold streams of a session; says when a session is due to end.

    A session is due when its token expires (``EXPIRED``), or when no stream
    of it has been open on any hub for the grace period (``GONE``). The store
    calls the handler given to ``start``; ``Sessions`` then ends the session
    through the ``SessionStore``, which makes that happen once.
    """

    def start(self, on_due: DueHandler) -> None: ...

    def track(self, record: SessionRecord) -> None:
        """A new session: its expiry runs, and its departure as if it had no stream."""

    def arrive(self, session_id: str) -> None:
        """This hub opened its first stream of the session."""

    def leave(self, session_id: str) -> None:
        """This hub closed its last stream of the session."""

    def forget(self, session_id: str) -> None:
        """The session ended: stop its clocks."""

    async def close(self) -> None: ...


class SessionStream(Protocol):
    """Anything a session keeps open: ended when the session ends."""

    def close(self, error: HubError | None = None) -> None: ...


class Session:
    """This hub's side of a session: its record and the streams open here."""

    __slots__ = ("id", "name", "streams")

    def __init__(self, record: SessionRecord) -> None:
        self.id = record.id
        self.name = record.name
        self.streams: set[SessionStream] = set()

    def __repr__(self) -> str:
        return f"Session({self.id} {self.name!r})"


EndHandler = Callable[[SessionRecord, LeaveReason], Awaitable[None]]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Sessions:
    """This hub's registry of sessions; the only place a session changes state."""

    def __init__(
        self,
        settings: ChatSettings,
        issuer: TokenIssuer,
        clock: Clock,
        on_end: EndHandler,
        *,
        spawn: Spawn,
        store: SessionStore | None = None,
        presence: PresenceStore | None = None,
    ) -> None:
        self._settings = settings
        self._issuer = issuer
        self._on_end = on_end
        self._spawn = spawn
        self._store = store or MemorySessionStore(settings, clock)
        self._presence = presence or MemoryPresenceStore(settings.grace, clock)
        self._presence.start(self._due)
        self._live: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._live)

    def _adopt(self, record: SessionRecord) -> Session:
        session = self._live.get(record.id)
        if session is None:
            session = self._live[record.id] = Session(record)
        return session

    async def create(self, name: str) -> tuple[Session, str]:
        expires = self._issuer.expiry()
        record = await self._store.create(name, expires)
        token = self._issuer.issue(record.id, name, expires)
        self._presence.track(record)
        return self._adopt(record), token

    async def authenticate(self, token: str) -> Session:
        claims = self._issuer.verify(token)
        session = self._live.get(claims.session_id)
        if session is not None:
            return session
        # Logged in at another hub: ask the store whether it still lives.
        record = await self._store.get(claims.session_id)
        if record is None:
            raise Unauthenticated("invalid token")
        return self._adopt(record)

    async def revoke(self, token: str) -> Session:
        """Logout: end the token's session and every stream it has open, on every hub."""
        try:
            session = await self.authenticate(token)
        except Unauthenticated:
            raise NotFound("token not found") from None
        if not await self.end(session.id, LeaveReason.LOGOUT):
            raise NotFound("token not found")
        return session

    async def allow(self, session: Session) -> bool:
        return await self._store.allow(session.id)

    def attach(self, session: Session, stream: SessionStream) -> None:
        if session.id not in self._live:
            raise Unauthenticated("invalid token")
        first = not session.streams
        session.streams.add(stream)
        if first:
            self._presence.arrive(session.id)

    def detach(self, session: Session, stream: SessionStream) -> None:
        if stream not in session.streams:
            return
        session.streams.discard(stream)
        if not session.streams and session.id in self._live:
            self._presence.leave(session.id)

    def _due(self, session_id: str, reason: LeaveReason) -> None:
        self._spawn(self._end_due(session_id, reason))

    async def _end_due(self, session_id: str, reason: LeaveReason) -> None:
        try:
            await self.end(session_id, reason)
        except Unavailable as error:
            # The store is out of reach; it says again when it is back.
            log.warning("%s: cannot end the session (%s) now: %s", session_id, reason.value, error)

    async def end(self, session_id: str, reason: LeaveReason) -> bool:
        """End the session if it is live; True for the one caller that ended it."""
        record = await self._store.end(session_id)
        if record is None:
            return False
        self._presence.forget(session_id)
        # Its streams here end now, whatever happens to the announcement
        # (the store has ended it for good; ``closed`` may run again on the
        # news from the control channel, and then does nothing).
        self.closed(session_id, reason)
        await self._on_end(record, reason)
        return True

    def closed(self, session_id: str, reason: LeaveReason) -> None:
        """The session ended (here or at another hub): end its streams here."""
        session = self._live.pop(session_id, None)
        if session is None:
            return
        if session.streams:
            self._presence.leave(session_id)  # this hub holds none of it any more
        error: HubError | None = None
        if reason is LeaveReason.EXPIRED:
            error = SessionEnded("token expired")
        for stream in list(session.streams):
            # After Logout the streams end cleanly (the reference client exits
            # on its own); an expired token's streams end UNAUTHENTICATED.
            stream.close(error)
        session.streams.clear()

    def lost(self) -> None:
        """News of ended sessions may have been lost: check every local copy with the store."""
        self._spawn(self._recheck())

    async def _recheck(self) -> None:
        for session_id in list(self._live):
            try:
                record = await self._store.get(session_id)
            except Unavailable:
                record = None
            if record is None and (session := self._live.pop(session_id, None)) is not None:
                for stream in list(session.streams):
                    stream.close(Unavailable("the session was lost between hubs; log in again"))
                session.streams.clear()

    async def close(self) -> None:
        """Forget every session without announcing anything (process shutdown)."""
        await self._presence.close()
        self._live.clear()


class MemorySessionStore:
    """Sessions of one process: a dict, and a token bucket per session."""

    def __init__(self, settings: ChatSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._records: dict[str, tuple[SessionRecord, TokenBucket]] = {}

    async def create(self, name: str, expires: float) -> SessionRecord:
        session_id = secrets.token_hex(4)
        while session_id in self._records:
            session_id = secrets.token_hex(4)
        record = SessionRecord(session_id, name, expires)
        bucket = TokenBucket(self._settings.rate_per_second, self._settings.rate_burst, self._clock)
        self._records[session_id] = (record, bucket)
        return record

    async def get(self, session_id: str) -> SessionRecord | None:
        entry = self._records.get(session_id)
        return entry[0] if entry is not None else None

    async def end(self, session_id: str) -> SessionRecord | None:
        entry = self._records.pop(session_id, None)
        return entry[0] if entry is not None else None

    async def allow(self, session_id: str) -> bool:
        entry = self._records.get(session_id)
        return entry is not None and entry[1].take()


class MemoryPresenceStore:
    """One process holds every stream: two timers per session."""

    def __init__(self, grace: float, clock: Clock) -> None:
        self._grace = grace
        self._clock = clock
        self._on_due: DueHandler | None = None
        self._departures: dict[str, Timer] = {}
        self._expiries: dict[str, Timer] = {}

    def start(self, on_due: DueHandler) -> None:
        self._on_due = on_due

    def _fire(self, session_id: str, reason: LeaveReason) -> None:
        if self._on_due is not None:
            self._on_due(session_id, reason)

    def track(self, record: SessionRecord) -> None:
        self._expiries[record.id] = self._clock.call_later(
            record.expires - self._clock.wall(),
            functools.partial(self._fire, record.id, LeaveReason.EXPIRED),
        )
        # A session that never opens a stream is gone after the grace too.
        self.leave(record.id)

    def arrive(self, session_id: str) -> None:
        timer = self._departures.pop(session_id, None)
        if timer is not None:
            timer.cancel()

    def leave(self, session_id: str) -> None:
        if session_id not in self._expiries:
            return  # ended already
        self.arrive(session_id)
        self._departures[session_id] = self._clock.call_later(
            self._grace, functools.partial(self._fire, session_id, LeaveReason.GONE)
        )

    def forget(self, session_id: str) -> None:
        for timers in (self._departures, self._expiries):
            timer = timers.pop(session_id, None)
            if timer is not None:
                timer.cancel()

    async def close(self) -> None:
        for timers in (self._departures, self._expiries):
            for timer in timers.values():
                timer.cancel()
            timers.clear()
