"""What travels from a publisher to every subscriber of a channel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Position:
    """Where a publication stands in its channel, as a broker that keeps history says.

    ``offset`` counts the channel's publications from 1; ``epoch`` names the
    history they belong to and changes when that history is lost (Redis
    restarted empty). A hub that has offset N in epoch E can tell whether what
    comes next follows on (N + 1 in E) or whether something was lost between.
    """

    offset: int
    epoch: str


class Publication:
    """One event on one channel, shared by every subscriber that receives it.

    ``encoded(codec)`` serializes at most once per wire format and hands every
    subscriber of that format the very same bytes (centrifuge's preparedData):
    a chat line to 500 streams is one protobuf serialization, not 500.
    """

    __slots__ = ("_wire", "channel", "droppable", "event", "position", "time")

    def __init__(
        self,
        channel: str,
        event: Any,
        time: float,
        *,
        droppable: bool = False,
        position: Position | None = None,
    ) -> None:
        self.channel = channel
        self.event = event
        self.time = time  # wall-clock seconds, stamped once by the hub
        # True for media a lagging listener may skip; False for anything
        # whose loss would be a bug (chat lines, stream start/end marks).
        self.droppable = droppable
        # Set when the publication came through a broker that keeps positions
        # (the Redis one); None in one process, where nothing is ever missed.
        self.position = position
        self._wire: dict[Callable[[Publication], Any], Any] = {}

    def encoded(self, codec: Callable[[Publication], T]) -> T:
        try:
            return self._wire[codec]  # type: ignore[no-any-return]  # keyed by codec
        except KeyError:
            data: T = codec(self)
            self._wire[codec] = data
            return data

    def __repr__(self) -> str:
        return f"Publication({self.channel!r}, {self.event!r})"
