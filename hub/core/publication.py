"""What travels from a publisher to every subscriber of a channel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# A wire format: turns a publication into the bytes one front door sends.
Codec = Callable[["Publication"], bytes]


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
        self._wire: dict[Codec, bytes] = {}

    def encoded(self, codec: Codec) -> bytes:
        try:
            return self._wire[codec]
        except KeyError:
            data = self._wire[codec] = codec(self)
            return data

    def __repr__(self) -> str:
        return f"Publication({self.channel!r}, {self.event!r})"
