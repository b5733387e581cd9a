"""Device rooms: a device id names a room; every device in it shares its state.

Each room has two channels on the hub: ``room:ID:status`` carries LED frames
and notices, ``room:ID:audio`` the Opus stream. Whatever plays is encoded once
(the packet cache), paced once (one player task per room) and published once;
the hub hands the same publication to every listener.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from hub.audio.cache import EncodedSound, PacketCache
from hub.audio.library import SoundLibrary
from hub.audio.opus import OpusSettings, silence_packet
from hub.audio.pacer import pace
from hub.audio.sources import FileSound, Sound
from hub.core import leds
from hub.core.events import AudioFrame, LedFrame, RoomNotice, StreamEnd
from hub.core.fanout import Fanout
from hub.core.observer import Observer, Unobserved
from hub.core.roomstate import Action, Input, RoomState
from hub.core.roomstore import MemoryRoomStore, RoomStore
from hub.errors import InvalidArgument

log = logging.getLogger(__name__)

# A room id is a device id: printable ASCII without spaces, as device ids
# are in practice; it is shown in logs and used in channel names.
ROOM_ID_MAX = 64


def check_room_id(room_id: str | None) -> str:
    if not room_id:
        raise InvalidArgument("device_id metadata is required")
    if len(room_id) > ROOM_ID_MAX:
        raise InvalidArgument(f"device_id must be at most {ROOM_ID_MAX} characters")
    if not all("!" <= c <= "~" for c in room_id):
        raise InvalidArgument("device_id must be printable ASCII without spaces")
    return room_id


def status_channel(room_id: str) -> str:
    return f"room:{room_id}:status"


def audio_channel(room_id: str) -> str:
    return f"room:{room_id}:audio"


class Admit(enum.Enum):
    SEND = "send"  # as it is
    SEND_AS_START = "send_as_start"  # the listener's first packet of this stream
    SKIP = "skip"  # an end for a stream this listener never started


class AudioGate:
    """Per listener: keeps each listener's view of the stream well formed.

    A listener that joins mid-stream gets ``is_start`` on its first packet,
    and never gets an ``is_end`` for a stream it was not started on (the stock
    device's audio thread dies of an end without a start).
    """

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: int | None = None

    def admit(self, frame: AudioFrame) -> Admit:
        if frame.stream_id == self.current:
            if frame.is_end:
                self.current = None
            return Admit.SEND
        if frame.is_end:
            return Admit.SKIP
        self.current = frame.stream_id
        return Admit.SEND if frame.is_start else Admit.SEND_AS_START


END_REASONS = {
    Input.PLAY: StreamEnd.SWITCHED,
    Input.LIVE: StreamEnd.SWITCHED,
    Input.STOP: StreamEnd.STOPPED,
    Input.ENDED: StreamEnd.FINISHED,
    Input.FAILED: StreamEnd.ERROR,
}


class Room:
    """One device room: its mode, its state, its player. See roomstate.py."""

    def __init__(self, rooms: Rooms, room_id: str) -> None:
        self.id = room_id
        self._rooms = rooms
        self._hub = rooms.fanout
        self.mode = 0
        self.state = RoomState.IDLE
        self.members = 0
        self.stream_id: int | None = None
        self._player: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._expiry: asyncio.TimerHandle | None = None
        self._live_title = ""
        self.status_channel = status_channel(room_id)
        self.audio_channel = audio_channel(room_id)

    def __repr__(self) -> str:
        return f"Room({self.id!r} {self.state.value} mode={self.mode})"

    @property
    def frame(self) -> leds.Frame:
        return leds.frame(self.state, self.mode)

    @property
    def title(self) -> str:
        return self._rooms.library[self.mode].title

    async def press(self, given: Input) -> None:
        """A button pressed on any device (or by a watcher) acts on the whole room."""
        async with self._lock:
            await self._apply(given, None)

    async def go_live(self, title: str, frame_seconds: float) -> LiveFeed:
        """Start a live stream in the room; the caller pushes its packets."""
        async with self._lock:
            self._live_title = title
            await self._apply(Input.LIVE, None)
            assert self.stream_id is not None
            return LiveFeed(self, self.stream_id, title, frame_seconds)

    async def _apply(self, given: Input, stream_id: int | None) -> None:
        before, after, actions = await self._rooms.store.step(
            self.id, given, stream_id, next_mode=self._rooms.library.next_mode
        )
        if given in (Input.ENDED, Input.FAILED) and stream_id != before.stream_id:
            return  # news from a stream that was already ended
        self.mode, self.state = after.mode, after.state
        for action in actions:
            if action is Action.NEXT_MODE:
                await self._notice(f"mode {self.mode + 1}: {self.title}")
            elif action is Action.END_STREAM:
                await self._end_stream(END_REASONS[given])
            elif action is Action.START_STREAM:
                assert after.stream_id is not None
                await self._start_stream(after.stream_id)
            elif action is Action.START_LIVE:
                self.stream_id = after.stream_id
                await self._notice(f"live: {self._live_title}")
        log.debug("%s: %s -> %s on %s", self.id, before.state.value, self.state.value, given.value)
        await self._publish_frame()

    async def _start_stream(self, stream_id: int) -> None:
        self.stream_id = stream_id
        sound = self._rooms.library[self.mode]
        self._player = asyncio.get_running_loop().create_task(
            self._play(stream_id, self.mode), name=f"room {self.id} stream {stream_id}"
        )
        await self._notice(f"playing {sound.title}")

    async def _end_stream(self, reason: StreamEnd) -> None:
        """Cut the stream now: the end mark goes out before this returns."""
        player, stream_id = self._player, self.stream_id
        self._player = self.stream_id = None
        if player is not None and player is not asyncio.current_task():
            # Once cancelled the player never publishes again (it only
            # publishes right after an await), so the end mark is the last.
            player.cancel()
        if stream_id is not None:
            await self._publish_end(stream_id, reason)
            if reason is not StreamEnd.SWITCHED:
                await self._notice(reason.value)

    async def _publish_end(self, stream_id: int, reason: StreamEnd) -> None:
        frame = AudioFrame(stream_id, -1, self._rooms.silence, is_end=True, end_reason=reason)
        await self._hub.publish(self.audio_channel, frame)

    async def _play(self, stream_id: int, mode: int) -> None:
        sound = self._rooms.library[mode]
        encoded = self._rooms.encoded(sound)
        frame_seconds = self._rooms.opus.frame_seconds
        publish = self._hub.publish
        channel = self.audio_channel
        paced = functools.partial(self._rooms.observer.paced, "room")
        try:
            async for seq, packet in pace(
                encoded.reader(), frame_seconds, self._hub.clock, on_release=paced
            ):
                first = seq == 0
                await publish(
                    channel,
                    AudioFrame(
                        stream_id,
                        seq,
                        packet,
                        is_start=first,
                        title=sound.title,
                        duration=sound.duration,
                    ),
                    droppable=not first,
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: cannot play %r", self.id, sound.title)
            outcome = Input.FAILED
        else:
            outcome = Input.ENDED
        async with self._lock:
            await self._apply(outcome, stream_id)

    async def _publish_frame(self) -> None:
        await self._hub.publish(self.status_channel, LedFrame(self.frame), droppable=True)

    async def _notice(self, text: str) -> None:
        await self._hub.publish(self.status_channel, RoomNotice(self.id, text))

    # -- presence --------------------------------------------------------

    async def joined(self, what: str) -> None:
        self.members += 1
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        await self._notice(f"{what} joined ({self.members} here)")

    async def left(self, what: str) -> None:
        self.members -= 1
        await self._notice(f"{what} left ({self.members} here)")
        if self.members == 0:
            # Nobody hears it: stop the sound, but keep the mode for a while
            # so that a device that reconnects finds its room as it was.
            async with self._lock:
                if self.state is RoomState.PLAYING and self.members == 0:
                    await self._apply(Input.STOP, None)
            self.linger()

    def linger(self) -> None:
        """Be forgotten after the linger, unless someone joins first."""
        if self.members == 0 and self._expiry is None:
            self._expiry = asyncio.get_running_loop().call_later(
                self._rooms.linger, self._rooms.forget, self
            )

    async def close(self) -> None:
        async with self._lock:
            if self._expiry is not None:
                self._expiry.cancel()
            if self.state is RoomState.PLAYING:
                # This hub's copy only: the stored record is the store's to
                # keep (for the hub that serves the room next) or to forget.
                await self._end_stream(StreamEnd.CLOSED)
                self.state = RoomState.IDLE


class LiveFeed:
    """Audio someone publishes into a room, relayed as the room's stream.

    The publisher paces it (a microphone is real time by nature); the room
    relays each packet as it comes. Once Stop, Play or another publication
    has cut the stream, ``push`` returns False and the packet goes nowhere.
    """

    def __init__(self, room: Room, stream_id: int, title: str, frame_seconds: float) -> None:
        self.room = room
        self.stream_id = stream_id
        self.title = title
        self.frame_seconds = frame_seconds
        self._seq = 0

    @property
    def live(self) -> bool:
        return self.room.stream_id == self.stream_id

    async def push(self, packet: bytes) -> bool:
        if not self.live:
            return False
        first = self._seq == 0
        frame = AudioFrame(
            self.stream_id,
            self._seq,
            packet,
            is_start=first,
            title=self.title,
            frame_seconds=self.frame_seconds,
        )
        self._seq += 1
        await self.room._hub.publish(self.room.audio_channel, frame, droppable=not first)
        return True

    async def end(self) -> None:
        async with self.room._lock:
            await self.room._apply(Input.ENDED, self.stream_id)


class Rooms:
    """The registry of device rooms, owned by the Hub."""

    def __init__(
        self,
        fanout: Fanout,
        library: SoundLibrary,
        *,
        opus: OpusSettings | None = None,
        cache: PacketCache | None = None,
        linger: float = 600.0,
        store: RoomStore | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.fanout = fanout
        self.observer: Observer = observer or Unobserved()
        self.library = library
        self.opus = opus or OpusSettings()
        self.cache = cache or PacketCache()
        self.store: RoomStore = store or MemoryRoomStore()
        # How long an empty room keeps its mode: long enough to ride out a
        # reboot or a Connect pressed twice, short enough not to hoard rooms.
        self.linger = linger
        self.silence = silence_packet(self.opus)
        self._rooms: dict[str, Room] = {}

    def encoded(self, sound: Sound) -> EncodedSound:
        """``sound`` as this hub's Opus packets, encoded once for every listener."""
        return self.cache.get(sound, self.opus)

    async def new_stream_id(self) -> int:
        """An id for a new stream, unique among the streams a listener may hear."""
        return await self.store.new_stream_id()

    def __len__(self) -> int:
        return len(self._rooms)

    def __contains__(self, room_id: object) -> bool:
        return room_id in self._rooms

    def snapshot(self) -> list[Room]:
        """The rooms open now, in one list."""
        return list(self._rooms.values())

    async def preload(self) -> None:
        """Encode every mode sound read from a file before anyone presses Play.

        Generated sounds (the long one) are encoded as they play instead:
        encoding 20 minutes up front would cost seconds of CPU at start-up.
        """
        for mode in self.library:
            sound = self.library[mode]
            if isinstance(sound, FileSound):
                await self.cache.preload(sound, self.opus)

    def get(self, room_id: str) -> Room:
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = Room(self, check_room_id(room_id))
            log.info("room %s opened", room_id)
            # Empty from birth (a watcher or a Press opened it, or a device
            # about to join): forgotten after the linger unless someone joins.
            room.linger()
        return room

    @asynccontextmanager
    async def join(self, room_id: str, what: str) -> AsyncIterator[Room]:
        """Be present in a room for as long as the context lasts."""
        room = self.get(room_id)
        await room.joined(what)
        try:
            yield room
        finally:
            await room.left(what)

    def forget(self, room: Room) -> None:
        if room.members == 0 and self._rooms.get(room.id) is room:
            del self._rooms[room.id]
            log.info("room %s closed after %.0f s empty", room.id, self.linger)
            # Nobody hears it, yet it may still play (a watcher's Press, a
            # live feed): left running, its player would go on publishing into
            # the channel of the next room of that name, which cannot stop it.
            self.fanout.spawn(self._close(room))

    async def _close(self, room: Room) -> None:
        if room.id not in self._rooms:  # not opened again meanwhile
            await self.store.forget(room.id)
        await room.close()

    async def close(self) -> None:
        for room in list(self._rooms.values()):
            await room.close()
        self._rooms.clear()
