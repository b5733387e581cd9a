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

    def __init__(self, *, first_stream_id: int = 1) -> None:
        self._records: dict[str, RoomRecord] = {}
        self._stream_ids = itertools.count(first_stream_id)

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
        # 1 .. 2**32 - 1, round and round: 0 is no stream on the TCP wire.
        return (next(self._stream_ids) - 1) % (STREAM_ID_LIMIT - 1) + 1

    async def new_stream_id(self) -> int:
        return self._next_id()

    async def forget(self, room_id: str) -> None:
        self._records.pop(room_id, None)


class RoomCluster(Protocol):
    """What rooms shared by several hubs need besides their records: presence and a driver.

    One hub *drives* each room: it runs the room's player and publishes its
    audio, so a sound is encoded and paced once in the whole cluster. The
    right to drive is a lease the driver renews every ``renew`` seconds; when
    it lapses (the driver died), another hub with the room open takes it.
    Members are counted per hub, so the cluster knows when a room is empty
    everywhere. Each hub that has the room open says so (``open``) before it
    reads the record, and ``close`` when it forgets the room: the last to
    close it drops the record and everything else of the room, as one hub
    forgets a room after its linger. In one process there is nothing of
    this: no ``RoomCluster``.
    """

    @property
    def renew(self) -> float:
        """Seconds between two attempts to take or keep a room's lease."""

    async def drive(self, room_id: str) -> bool:
        """Take the room's lease if it is free, or renew it if it is this hub's."""

    async def release(self, room_id: str) -> None:
        """Give the lease up (if this hub holds it), for another hub to take at once."""

    async def open(self, room_id: str) -> None:
        """This hub has the room open: the room's record stays until this hub closes it."""

    async def close(self, room_id: str) -> bool:
        """This hub has forgotten the room: if no live hub has it open any more, nor
        drives it, its record and every other key of it go, in one atomic step.
        Whether they went."""

    async def join(self, room_id: str) -> int:
        """One more member here: the members of the room on every live hub."""

    async def leave(self, room_id: str) -> int:
        """One member fewer here: the members of the room on every live hub."""

    async def members(self, room_id: str) -> int:
        """The members of the room on every live hub."""

    async def present(self, room_id: str, members: int) -> int:
        """This hub has ``members`` members (said again after Redis lost the
        count): the members of the room on every live hub."""
