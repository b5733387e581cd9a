"""Every Redis key the hubs share, named in one place."""

from __future__ import annotations

from hub.core.rooms import audio_channel, status_channel


def text(value: bytes | str) -> str:
    """A key, an id or a name as Redis replies with it (bytes), as text."""
    return value.decode() if isinstance(value, bytes) else value


class Keys:
    """Key names under one prefix (several clusters may share one Redis)."""

    def __init__(self, prefix: str = "hub:") -> None:
        self.prefix = prefix
        self._streams = f"{prefix}ch:"
        # Sessions due to end, by deadline: departure (no stream anywhere for
        # the grace) and expiry of the token.
        self.departing = f"{prefix}departing"
        self.expiring = f"{prefix}expiring"
        # Every hub that has announced itself, alive or not (yet) swept.
        self.hubs = f"{prefix}hubs"
        self.stream_ids = f"{prefix}stream-ids"

    def stream(self, channel: str) -> str:
        return self._streams + channel

    def channel_of(self, stream_key: str) -> str:
        return stream_key.removeprefix(self._streams)

    def epoch(self, channel: str) -> str:
        return f"{self.prefix}epoch:{channel}"

    def offset(self, channel: str) -> str:
        return f"{self.prefix}offset:{channel}"

    def channel(self, channel: str) -> list[str]:
        """The channel's three keys, in the order the broker's scripts take
        them (KEYS[1..3]): its stream, its epoch, its offset."""
        return [self.stream(channel), self.epoch(channel), self.offset(channel)]

    def session(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def rate(self, session_id: str) -> str:
        return f"{self.prefix}rate:{session_id}"

    def presence(self, session_id: str) -> str:
        """The hubs that hold streams of the session."""
        return f"{self.prefix}presence:{session_id}"

    def held(self, hub_id: str) -> str:
        """The sessions the hub holds streams of (what to sweep if it dies)."""
        return f"{self.prefix}held:{hub_id}"

    def room(self, room_id: str) -> str:
        return f"{self.prefix}room:{room_id}"

    def room_driver(self, room_id: str) -> str:
        """The lease: the id of the hub that drives the room."""
        return f"{self.prefix}room-driver:{room_id}"

    def room_members(self, room_id: str) -> str:
        """The hubs that have the room open, with its members at each (hub id -> count)."""
        return f"{self.prefix}room-members:{room_id}"

    def room_channels(self, room_id: str) -> list[str]:
        """The keys of the room's two channels (stream, epoch, offset of each)."""
        return [*self.channel(status_channel(room_id)), *self.channel(audio_channel(room_id))]

    def alive(self, hub_id: str) -> str:
        return f"{self.prefix}alive:{hub_id}"
