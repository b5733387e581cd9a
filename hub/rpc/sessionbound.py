"""Streams opened with a token belong to its session and end with it.

Whatever the door (Rooms.Watch, a device's three streams with
``--device-token``), a stream opened with a token is attached to the token's
session while it is open: ``Logout`` ends it with ``UNAUTHENTICATED`` "logged
out", expiry with ``UNAUTHENTICATED`` "token expired". (Chat streams attach
themselves and end cleanly on ``Logout``, as the reference client expects.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from hub.core.sessions import Session, Sessions
from hub.errors import HubError, SessionEnded
from hub.rpc.methods import Closeable

T = TypeVar("T")


class _EndsWithStatus:
    """What the session closes: a Logout (no error) becomes "logged out"."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Closeable) -> None:
        self._stream = stream

    def close(self, error: HubError | None = None) -> None:
        self._stream.close(error or SessionEnded("logged out"))


@contextmanager
def bound_to(sessions: Sessions, session: Session | None, stream: Closeable) -> Iterator[None]:
    """While open, ``stream`` ends when ``session`` does (nothing without a session).

    Raises Unauthenticated if the session has already ended.
    """
    if session is None:
        yield
        return
    handle = _EndsWithStatus(stream)
    sessions.attach(session, handle)
    try:
        yield
    finally:
        sessions.detach(session, handle)


class Interruptible(Generic[T]):
    """``source``'s items until ``close(error)``, which wakes a waiting reader with ``error``.

    For a stream whose handler waits on the peer's requests rather than on a
    subscription (EventStream): closing it ends the wait at once, and no
    request read after the close is handed out.
    """

    def __init__(self, source: AsyncIterator[T]) -> None:
        self._source = source
        self._ended: asyncio.Future[HubError] = asyncio.get_running_loop().create_future()

    def close(self, error: HubError | None = None) -> None:
        if not self._ended.done():
            self._ended.set_result(error or SessionEnded("logged out"))

    def __aiter__(self) -> Interruptible[T]:
        return self

    async def __anext__(self) -> T:
        if self._ended.done():
            raise self._ended.result()
        read = asyncio.ensure_future(anext(self._source))
        try:
            await asyncio.wait((read, self._ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self._ended.done() or not read.done():
                # Whatever it read, or fails with, is dropped with the stream.
                read.cancel()
                read.add_done_callback(_dropped)
        if self._ended.done():
            raise self._ended.result()
        return read.result()


def _dropped(read: asyncio.Future[T]) -> None:
    if not read.cancelled():
        read.exception()  # retrieved, so that asyncio does not log it as lost
