"""The chat room: its rules for names, lines and who may speak.

One room, as in the reference: every stream of every session receives every
event, the sender's own lines included.
"""

from __future__ import annotations

import hmac
import logging
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from hub.core.events import LeaveReason, ServerShutdown, UserJoined, UserLeft, UserMessage
from hub.core.fanout import Fanout
from hub.core.sessions import Session, SessionRecord, Sessions
from hub.core.subscription import Overflow, Subscription
from hub.errors import InvalidArgument, RateLimited, ShuttingDown, WrongPassword
from hub.settings import ChatSettings

log = logging.getLogger(__name__)

CHANNEL = "chat"


# Bidirectional-text controls: embeddings, overrides and isolates (U+202A-E,
# U+2066-9) and the marks (U+200E/F, U+061C). One of them makes what follows
# it render reordered, even reversed ("Trojan Source", CVE-2021-42574), in
# any client that honours them, so a name or a line could show other than
# what it says. Other format characters (ZWJ in emoji) are harmless in lines.
BIDI_CONTROLS = frozenset(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
)


def refuse_bidi_controls(text: str, what: str) -> None:
    """The one rule for names and lines: no bidirectional-text controls."""
    if BIDI_CONTROLS.isdisjoint(text):
        return
    for char in text:
        if char in BIDI_CONTROLS:
            raise InvalidArgument(
                f"{what} must not contain bidirectional-text controls (U+{ord(char):04X})"
            )


def _unprintable(char: str) -> bool:
    # Control (Cc), format (Cf: bidi overrides, zero-width tricks), surrogates,
    # private use and unassigned code points, and line/paragraph separators:
    # none belongs in a name that every screen shows on one line.
    category = unicodedata.category(char)
    return category[0] == "C" or category in ("Zl", "Zp")


def check_name(name: str, max_chars: int) -> None:
    if not name.strip():
        raise InvalidArgument("username is required")
    if len(name) > max_chars:
        raise InvalidArgument(f"username must be at most {max_chars} characters")
    refuse_bidi_controls(name, "username")
    if any(_unprintable(c) for c in name):
        raise InvalidArgument("username must contain printable characters only")
    if name.startswith("<<") and name.endswith(">>"):
        # <<Server>>, <<Client>>, <<Process>>: a peer named so could forge
        # the lines every client prints for the server and itself.
        raise InvalidArgument("username must not look like <<Server>>")


def check_message(text: str, max_bytes: int) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise InvalidArgument(f"message must be at most {max_bytes} bytes")
    refuse_bidi_controls(text, "message")
    # A line feed, carriage return or escape would let a sender forge lines or
    # drive other people's terminals; tabs are harmless.
    if any(unicodedata.category(c) == "Cc" and c != "\t" for c in text):
        raise InvalidArgument("message must not contain control characters")


class Chat:
    def __init__(self, fanout: Fanout, sessions: Sessions, settings: ChatSettings) -> None:
        self._fanout = fanout
        self._sessions = sessions
        self._settings = settings

    async def login(self, name: str, password: str) -> tuple[Session, str]:
        if self._fanout.closing:
            raise ShuttingDown()
        if not hmac.compare_digest(password.encode(), self._settings.password.encode()):
            raise WrongPassword("password is incorrect")
        check_name(name, self._settings.name_max_chars)
        session, token = await self._sessions.create(name)
        log.info("%s: %r logged in", session.id, name, extra={"session": session.id})
        await self._fanout.publish(CHANNEL, UserJoined(name=name, session_id=session.id))
        return session, token

    async def logout(self, token: str) -> Session:
        # Announcing the departure is the sessions' end handler's job
        # (Hub._session_ended), shared with expiry and departure.
        return await self._sessions.revoke(token)

    async def authenticate(self, token: str) -> Session:
        return await self._sessions.authenticate(token)

    @asynccontextmanager
    async def stream(self, session: Session) -> AsyncIterator[Subscription]:
        """A subscription to the room for one of the session's streams."""
        async with self._fanout.subscribe(
            CHANNEL,
            maxlen=self._settings.queue_max,
            overflow=Overflow.DISCONNECT,
            label=session.id,
        ) as subscription:
            self._sessions.attach(session, subscription)
            try:
                yield subscription
            finally:
                self._sessions.detach(session, subscription)

    async def say(self, session: Session, text: str) -> None:
        if self._fanout.closing:
            raise ShuttingDown()
        check_message(text, self._settings.message_max_bytes)
        if not await self._sessions.allow(session):
            log.warning("%s: rate limited", session.id, extra={"session": session.id})
            raise RateLimited(
                f"too many messages: at most {self._settings.rate_per_second:g} a second"
            )
        await self._fanout.publish(
            CHANNEL, UserMessage(name=session.name, session_id=session.id, text=text)
        )

    async def announce_end(self, session: SessionRecord, reason: LeaveReason) -> None:
        log.info(
            "%s: %r left (%s)",
            session.id,
            session.name,
            reason.value,
            extra={"session": session.id},
        )
        await self._fanout.publish(
            CHANNEL, UserLeft(name=session.name, session_id=session.id, reason=reason)
        )

    async def announce_shutdown(self) -> None:
        # This hub's streams only: the other hubs of a cluster serve on.
        await self._fanout.publish(CHANNEL, ServerShutdown(), local=True)
