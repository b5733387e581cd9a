"""What travels from a publisher to every subscriber of a channel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Publication:
    """One event on one channel, shared by every subscriber that receives it.

    ``encoded(codec)`` serializes at most once per wire format and hands every
    subscriber of that format the very same bytes (centrifuge's preparedData):
    a chat line to 500 streams is one protobuf serialization, not 500.
    """

    __slots__ = ("_wire", "channel", "droppable", "event", "time")

    def __init__(self, channel: str, event: Any, time: float, *, droppable: bool = False) -> None:
        self.channel = channel
        self.event = event
        self.time = time  # wall-clock seconds, stamped once by the hub
        # True for media a lagging listener may skip; False for anything
        # whose loss would be a bug (chat lines, stream start/end marks).
        self.droppable = droppable
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
