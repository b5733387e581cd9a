"""Where a device room's record lives: the ``RoomStore`` protocol and its memory form.

A room's mode, state and playing stream (``roomstate.RoomRecord``) are what
every hub serving devices of that room must agree on. They change only by
``step``, which runs the state machine's ``advance`` on the stored record as
one atomic step: in one process because nothing awaits inside it, across hubs
(a Redis store) because the read, the step and the write are one transaction.
Stream ids come from the store too, so that they stay unique when several hubs
start streams (a Redis store: ``INCR`` of one counter).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Protocol

from hub.core.roomstate import Action, Input, RoomRecord, advance

# Stream ids are u32 on the TCP door's wire (docs/protocol.md).
STREAM_ID_LIMIT = 2**32


class RoomStore(Protocol):
    async def get(self, room_id: str) -> RoomRecord:
        """The room's record; a room never seen is idle in its first mode."""

    async def step(
        self,
        room_id: str,
        given: Input,
        stream_id: int | None,
        *,
        next_mode: Callable[[int], int],
    ) -> tuple[RoomRecord, RoomRecord, tuple[Action, ...]]:
        """Apply ``given`` atomically: the record before, after, and the actions to take."""

    async def new_stream_id(self) -> int:
        """An id no other stream of the hub (or cluster) has."""

    async def forget(self, room_id: str) -> None:
        """The room closed: drop its record."""


class MemoryRoomStore:
    """Rooms of one process: a dict and a counter."""

    def __init__(self) -> None:
        self._records: dict[str, RoomRecord] = {}
        self._stream_ids = itertools.count(1)

    async def get(self, room_id: str) -> RoomRecord:
        return self._records.get(room_id) or RoomRecord()

    async def step(
        self,
        room_id: str,
        given: Input,
        stream_id: int | None,
        *,
        next_mode: Callable[[int], int],
    ) -> tuple[RoomRecord, RoomRecord, tuple[Action, ...]]:
        before = self._records.get(room_id) or RoomRecord()
        after, actions = advance(
            before, given, stream_id, next_mode=next_mode, new_stream_id=self._next_id
        )
        self._records[room_id] = after
        return before, after, actions

    def _next_id(self) -> int:
        return next(self._stream_ids) % STREAM_ID_LIMIT or next(self._stream_ids)

    async def new_stream_id(self) -> int:
        return self._next_id()

    async def forget(self, room_id: str) -> None:
        self._records.pop(room_id, None)
