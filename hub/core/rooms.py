"""Device rooms: a device id names a room; every device in it shares its state.

Each room has two channels on the hub: ``room:ID:status`` carries LED frames
and notices, ``room:ID:audio`` the Opus stream. Whatever plays is encoded once
(the packet cache), paced once (one player task per room) and published once;
the hub hands the same publication to every listener.

With several hubs (a ``RoomCluster``, ``--redis``) a room is the same at every
hub that has it open: its record lives in the store, each step is published
as ``RoomChanged``, and one hub, the room's driver, plays its sounds (see
``Room``). Listeners' gates keep their streams well formed whichever hub
published each packet or mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from hub.audio.cache import EncodedSound, PacketCache
from hub.audio.library import SoundLibrary
from hub.audio.opus import OpusSettings, silence_packet
from hub.audio.player import play
from hub.audio.sources import FileSound, Sound
from hub.clock import Timer
from hub.core import leds
from hub.core.events import AudioFrame, LedFrame, RoomChanged, RoomNotice, StreamEnd
from hub.core.fanout import Fanout
from hub.core.observer import Observer, Unobserved
from hub.core.publication import Publication
from hub.core.roomstate import ABOUT_A_STREAM, Action, Input, RoomRecord, RoomState, step
from hub.core.roomstore import MemoryRoomStore, RoomCluster, RoomStore
from hub.core.subscription import Overflow
from hub.errors import HubError, InvalidArgument, Unavailable

log = logging.getLogger(__name__)

# A room id is a device id: printable ASCII without spaces, as device ids
# are in practice; it is shown in logs and used in channel names.
ROOM_ID_MAX = 64
# Shared by several hubs, a room opened here reads its record before it
# serves; longer than a Redis command's own timeout, so that one comes first.
FOLLOW_TIMEOUT = 5.0
# Rooms closing at once. Rooms opened in a flood linger out together; shared,
# each close takes Redis commands, and a thousand at once would take every
# connection of the backplane's pool (100), failing their own closes (whose
# keys would then wait for their expiry) and every other command meanwhile.
CLOSING_AT_ONCE = 8
# How soon a player that could not record its stream's end (the store out of
# reach) tries again: as often as a lease is renewed (BackplaneSettings), so
# the end follows within a moment of the store's return.
END_RETRY = 0.4


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
    SKIP = "skip"  # an end for a stream this listener never started, or a late packet


# Streams a gate remembers as over: a packet of one of them is late news.
_GATE_MEMORY = 4


class AudioGate:
    """Per listener: keeps each listener's view of the stream well formed.

    A listener that joins mid-stream gets ``is_start`` on its first packet,
    and never gets an ``is_end`` for a stream it was not started on (the stock
    device's audio thread dies of an end without a start). A packet of a
    stream already over is skipped: across hubs, the end may be published by
    the hub where Stop was pressed while the room's player, on another hub,
    has a packet or two of the old stream on the way; taken as a new stream,
    such a packet would open a stream that never ends.
    """

    __slots__ = ("current", "over")

    def __init__(self) -> None:
        self.current: int | None = None
        self.over: deque[int] = deque(maxlen=_GATE_MEMORY)

    def admit(self, frame: AudioFrame) -> Admit:
        if frame.stream_id == self.current:
            if frame.is_end:
                self.over.append(frame.stream_id)
                self.current = None
            return Admit.SEND
        if frame.is_end or frame.stream_id in self.over:
            return Admit.SKIP
        if self.current is not None:
            self.over.append(self.current)
        self.current = frame.stream_id
        return Admit.SEND if frame.is_start else Admit.SEND_AS_START

    def lost(self) -> int | None:
        """Publications were lost: the stream open until now, to be ended here.

        It is not remembered as over: if it plays on, its next packet opens
        it again (``SEND_AS_START``), and its own end closes it as usual.
        """
        current, self.current = self.current, None
        return current


class SkipAhead:
    """The overflow policy of a listener's audio queue: skip ahead, never disconnect.

    The queue holds what a gate let through (each packet flagged as the
    listener is to get it). A listener that falls ``maxlen`` packets behind
    loses, oldest first:

    1. plain packets of sound: it skips ahead, as any live listener does;
    2. when only start and end marks are queued (streams started and cut
       faster than it reads: many Play presses at once), the oldest stream
       whose start and end are both still queued, whole: the listener never
       hears a stream that lasted a few milliseconds, and sees no end without
       its start nor a start without its end;
    3. failing that, the oldest stream whose start is queued and followed by
       another stream's start (across hubs a new stream may take over before
       the old one's end arrives): the stock device would throw it away
       unplayed anyway.

    With ``maxlen >= MIN_QUEUE`` a queue of marks always holds such a stream
    (only its first end and its last start can stand alone), so the listener
    is never disconnected: ending a stock device's ServerAudioStream would
    leave it deaf until Connect is pressed twice.
    """

    MIN_QUEUE = 3

    def make_room(self, queue: deque[Publication]) -> int | None:
        for index, pub in enumerate(queue):
            frame: AudioFrame = pub.event
            if not (frame.is_start or frame.is_end):
                del queue[index]
                return 1
        stream_id = self._stream_to_drop(queue)
        if stream_id is None:
            return None  # a queue shorter than MIN_QUEUE
        kept = [pub for pub in queue if pub.event.stream_id != stream_id]
        dropped = len(queue) - len(kept)
        queue.clear()
        queue.extend(kept)
        return dropped

    @staticmethod
    def _stream_to_drop(queue: deque[Publication]) -> int | None:
        begun: set[int] = set()
        previous: int | None = None  # the stream of the last start seen
        superseded: int | None = None  # the first stream another one's start followed
        for pub in queue:
            frame: AudioFrame = pub.event
            if frame.is_start:
                if superseded is None:
                    superseded = previous
                begun.add(frame.stream_id)
                previous = frame.stream_id
            elif frame.is_end and frame.stream_id in begun:
                return frame.stream_id
        return superseded


END_REASONS = {
    Input.PLAY: StreamEnd.SWITCHED,
    Input.LIVE: StreamEnd.SWITCHED,
    Input.RESUME: StreamEnd.SWITCHED,
    Input.STOP: StreamEnd.STOPPED,
    Input.ENDED: StreamEnd.FINISHED,
    Input.FAILED: StreamEnd.ERROR,
    Input.CLOSE: StreamEnd.CLOSED,
}


class Room:
    """One device room: its mode, its state, its player. See roomstate.py.

    In one process the room is all here. Shared by several hubs (a
    ``RoomCluster``), each hub with the room open keeps a copy of its record,
    the newest it has heard of; whoever presses steps the stored record and
    publishes the stream's end, the notices, the LED frame and the new record
    (``RoomChanged``); only the hub that drives the room plays its sound.
    """

    def __init__(self, rooms: Rooms, room_id: str) -> None:
        self.id = room_id
        self._rooms = rooms
        self._hub = rooms.fanout
        self.mode = 0
        self.state = RoomState.IDLE
        self.members = 0  # here, on this hub
        self.everywhere = 0  # on every hub, as last counted
        self.stream_id: int | None = None
        self.live = False
        self.version = 0
        self.driving = rooms.cluster is None  # alone, a hub drives every room it has
        self._player: asyncio.Task[None] | None = None
        self._playing: int | None = None  # the stream the player plays
        self._lock = asyncio.Lock()
        self._expiry: Timer | None = None
        self._live_title = ""
        self._sharing: list[asyncio.Task[None]] = []
        self.followed = asyncio.Event()  # the copy of the record is current
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

    def _take(self, record: RoomRecord) -> bool:
        """Make ``record`` this hub's copy if it is newer; whether it was."""
        if record.version <= self.version:
            return False
        self.mode, self.state = record.mode, record.state
        self.stream_id, self.live, self.version = record.stream_id, record.live, record.version
        return True

    async def _apply(self, given: Input, stream_id: int | None) -> None:
        before, after, actions = await self._rooms.store.step(
            self.id, given, stream_id, next_mode=self._rooms.library.next_mode
        )
        if given in ABOUT_A_STREAM and stream_id != before.stream_id:
            return  # news from a stream that was already ended
        self._take(after)
        for action in actions:
            if action is Action.NEXT_MODE:
                await self._notice(f"mode {after.mode + 1}: {self.title}")
            elif action is Action.END_STREAM:
                assert before.stream_id is not None
                await self._end_stream(before.stream_id, END_REASONS[given])
            elif action is Action.START_STREAM:
                assert after.stream_id is not None
                if self.driving:
                    self._start_player(after.stream_id, after.mode)
                await self._notice(f"playing {self._rooms.library[after.mode].title}")
            elif action is Action.START_LIVE:
                await self._notice(f"live: {self._live_title}")
        log.debug("%s: %s -> %s on %s", self.id, before.state.value, after.state.value, given.value)
        await self._publish_frame()
        if self._rooms.cluster is not None:
            await self._hub.publish(
                self.status_channel,
                RoomChanged(
                    self.id,
                    after.mode,
                    after.state.value,
                    after.stream_id,
                    after.live,
                    after.version,
                ),
            )

    def _start_player(self, stream_id: int, mode: int) -> None:
        self._stop_player()
        self._playing = stream_id
        self._player = asyncio.get_running_loop().create_task(
            self._play(stream_id, mode), name=f"room {self.id} stream {stream_id}"
        )

    def _stop_player(self) -> None:
        player = self._player
        self._player = self._playing = None
        if player is not None and player is not asyncio.current_task():
            # Once cancelled the player never publishes again (it only
            # publishes right after an await), so an end mark after is the last.
            player.cancel()

    async def _end_stream(self, stream_id: int, reason: StreamEnd) -> None:
        """Cut the stream now: the end mark goes out before this returns."""
        if self._playing == stream_id:
            self._stop_player()
        await self._publish_end(stream_id, reason)
        if reason is not StreamEnd.SWITCHED:
            await self._notice(reason.value)

    async def _publish_end(self, stream_id: int, reason: StreamEnd) -> None:
        frame = AudioFrame(stream_id, -1, self._rooms.silence, is_end=True, end_reason=reason)
        await self._hub.publish(self.audio_channel, frame)

    async def _play(self, stream_id: int, mode: int) -> None:
        sound = self._rooms.library[mode]
        missed = 0  # packets the backplane would not take, in a row

        async def publish(seq: int, packet: bytes, is_start: bool) -> None:
            nonlocal missed
            frame = AudioFrame(
                stream_id,
                seq,
                packet,
                is_start=is_start,
                title=sound.title,
                duration=sound.duration,
            )
            try:
                await self._hub.publish(self.audio_channel, frame, droppable=not is_start)
            except HubError as error:
                if is_start:
                    raise  # a stream nobody heard start has failed
                # The backplane out of reach: the packet is lost, as a lagging
                # listener's is, and the sound plays on; listeners pick it up
                # where it then is (a seq gap), not a stream cut for a blip.
                if not missed:
                    log.warning("%s: stream %d: packets lost (%s)", self.id, stream_id, error)
                missed += 1
                return
            if missed:
                log.info("%s: stream %d: published again (%d lost)", self.id, stream_id, missed)
                missed = 0

        played = await play(
            self._rooms.encoded(sound),
            self._hub.clock,
            publish,
            who=self.id,
            on_release=functools.partial(self._rooms.observer.paced, "room"),
        )
        outcome = Input.ENDED if played else Input.FAILED
        while True:
            try:
                await self.stream_over(stream_id, outcome)
                return
            except HubError as error:
                # Its listeners have had its start: they get its end once the
                # store takes the step (a press meanwhile cancels this task).
                log.warning(
                    "%s: stream %d is over, the store cannot say so yet (%s)",
                    self.id,
                    stream_id,
                    error,
                )
                await self._hub.clock.sleep(END_RETRY)

    async def stream_over(self, stream_id: int, outcome: Input) -> None:
        """The stream ``stream_id`` ran out (ENDED) or broke (FAILED): the room steps,
        unless the stream was cut already (then the news is stale)."""
        async with self._lock:
            await self._apply(outcome, stream_id)

    async def relay(self, frame: AudioFrame, *, droppable: bool) -> None:
        """Publish a packet of someone's live stream as the room's audio."""
        await self._hub.publish(self.audio_channel, frame, droppable=droppable)

    async def _publish_frame(self) -> None:
        await self._hub.publish(self.status_channel, LedFrame(self.frame), droppable=True)

    async def _notice(self, text: str) -> None:
        await self._hub.publish(self.status_channel, RoomNotice(self.id, text))

    # -- shared by several hubs --------------------------------------------

    def share(self, cluster: RoomCluster) -> None:
        """Follow the room's steps made at other hubs, and drive it when this hub may."""
        loop = asyncio.get_running_loop()
        self._sharing = [
            loop.create_task(self._follow(cluster), name=f"room {self.id} follows"),
            loop.create_task(self._lease(cluster), name=f"room {self.id} lease"),
        ]

    async def _follow(self, cluster: RoomCluster) -> None:
        await self._rooms.settled(self.id)
        shown = self.frame  # on this hub's devices, as far as it knows
        recount = False  # whether the room's members may have been lost too
        while True:
            try:
                # Open here before anything is read: the hub that forgets the
                # room last drops its record only while no hub has it open.
                await cluster.open(self.id)
                async with self._hub.subscribe(
                    self.status_channel,
                    # Only the newest record matters; older ones may go.
                    maxlen=64,
                    overflow=Overflow.DROP_OLDEST,
                    label=f"room {self.id}",
                ) as heard:
                    # Subscribed first, then read: no step falls in between.
                    playing = self._playing
                    self._heard(await self._rooms.store.get(self.id))
                    if recount:
                        # Lost with the record, the count would say the room
                        # is empty: a member leaving would stop its sound for all.
                        self.everywhere = await cluster.present(self.id, self.members)
                        recount = False
                    self.followed.set()
                    if playing is not None and self._playing != playing:
                        # The record read says the stream is over, yet no step
                        # heard ended it (Redis lost the step, or the whole
                        # record): its listeners had its start, so its end.
                        await self._abandon(playing)
                    if self.frame != shown:
                        # Read again after news was lost: this hub's devices
                        # may show what no step will publish again (a step
                        # lost, a record lost, or one taken meanwhile by
                        # ``_take_over``, which publishes no frame).
                        await self._hub.publish(
                            self.status_channel, LedFrame(self.frame), droppable=True, local=True
                        )
                    async for pub in heard:
                        event = pub.event
                        if isinstance(event, RoomChanged):
                            self._heard(
                                RoomRecord(
                                    event.mode,
                                    RoomState(event.state),
                                    event.stream_id,
                                    event.live,
                                    event.version,
                                )
                            )
            except HubError as error:
                log.warning("%s: lost the room's news (%s): reading it again", self.id, error)
                # Redis may have come back empty, its versions counting from
                # 0 again: whatever the store says next is the record, and
                # whoever opens the room meanwhile waits for it.
                self.version = -1
                self.followed.clear()
                shown = self.frame  # every step heard published its frame
                recount = True
            # Lost news (Redis restarted, or out of reach): try again shortly.
            await self._hub.clock.sleep(cluster.renew)

    def _heard(self, record: RoomRecord) -> None:
        if self._take(record) and self.driving:
            self._match_player()

    def _match_player(self) -> None:
        """The driver plays what the record says, whoever stepped it."""
        if self._playing is not None and self._playing != self.stream_id:
            self._stop_player()  # its end was published by the hub that stepped
        if (
            self.state is RoomState.PLAYING
            and not self.live
            and self.stream_id is not None
            and self._playing != self.stream_id
        ):
            self._start_player(self.stream_id, self.mode)

    async def _lease(self, cluster: RoomCluster) -> None:
        await self._rooms.settled(self.id)
        while True:
            try:
                driving = await cluster.drive(self.id)
            except HubError as error:
                log.warning("%s: cannot renew the lease (%s)", self.id, error)
                driving = False
            if driving and not self.driving:
                await self._take_over()
            elif self.driving and not driving:
                log.warning("%s: another hub drives the room now", self.id)
                self.driving = False
                if (playing := self._playing) is not None:
                    self._stop_player()
                    # The new driver ends it when it resumes the record's
                    # sound, but not if Redis lost the record: end it here
                    # too (a listener's gate skips an end it has had).
                    await self._abandon(playing)
            await self._hub.clock.sleep(cluster.renew)  # the lease's renewal period

    async def _abandon(self, stream_id: int) -> None:
        """End a stream this hub's player played and no step will end."""
        try:
            await self._publish_end(stream_id, StreamEnd.CLOSED)
        except HubError as error:
            log.warning("%s: cannot end stream %d (%s)", self.id, stream_id, error)

    async def _take_over(self) -> None:
        """This hub drives the room from now on: a sound left playing starts again here."""
        log.info("room %s: this hub drives it", self.id)
        async with self._lock:
            self.driving = True
            try:
                # Not _heard: what the record plays is the dead driver's
                # stream, which must end before the sound starts again.
                self._take(await self._rooms.store.get(self.id))
                stream_id = self.stream_id
                if self.state is RoomState.PLAYING and not self.live and self._playing is None:
                    # The hub that played it died: its listeners had a start
                    # and no end. The end, then the sound again, in one step;
                    # or, if its members died with it, the end: nobody hears.
                    cluster = self._rooms.cluster
                    assert cluster is not None
                    self.everywhere = await cluster.members(self.id)
                    given = Input.RESUME if self.everywhere else Input.STOP
                    await self._apply(given, stream_id if given is Input.RESUME else None)
            except HubError as error:
                log.warning("%s: cannot take the room over yet (%s)", self.id, error)
                self.driving = False

    # -- presence --------------------------------------------------------

    async def joined(self, what: str) -> None:
        self.members += 1
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        counted = await self._count(what, +1)
        self.everywhere = self.everywhere + 1 if counted is None else counted
        await self._notice(f"{what} joined ({self.everywhere} here)")

    async def left(self, what: str) -> None:
        self.members -= 1
        counted = await self._count(what, -1)
        # Not counted (Redis away): whether the room is empty elsewhere is
        # unknown, so it plays on (a driver that takes it over stops it if
        # its members are gone).
        self.everywhere = max(self.everywhere - 1, self.members) if counted is None else counted
        try:
            await self._notice(f"{what} left ({self.everywhere} here)")
            if counted == 0:
                # Nobody hears it: stop the sound, but keep the mode for a while
                # so that a device that reconnects finds its room as it was.
                async with self._lock:
                    if self.state is RoomState.PLAYING and self.everywhere == 0:
                        await self._apply(Input.STOP, None)
        except HubError as error:  # shared, and Redis is away: leaving must not fail
            log.warning("%s: %s left unannounced (%s)", self.id, what, error)
        if self.members == 0:
            self.linger()

    async def _count(self, what: str, change: int) -> int | None:
        """Members on every hub after ``change`` here; None if that cannot be counted now."""
        cluster = self._rooms.cluster
        if cluster is None:
            return self.members
        await self._rooms.settled(self.id)
        try:
            return await (cluster.join(self.id) if change > 0 else cluster.leave(self.id))
        except HubError as error:
            log.warning("%s: %s not counted across hubs (%s)", self.id, what, error)
            return None

    @property
    def lingering(self) -> bool:
        """Empty, and due to be forgotten after the linger unless someone joins."""
        return self._expiry is not None

    def linger(self) -> None:
        """Be forgotten after the linger, unless someone joins first."""
        if self.members == 0 and self._expiry is None:
            self._expiry = self._hub.clock.call_later(
                self._rooms.linger, functools.partial(self._rooms.forget, self)
            )

    async def close(self) -> None:
        for task in self._sharing:
            task.cancel()
        await asyncio.gather(*self._sharing, return_exceptions=True)
        async with self._lock:
            if self._expiry is not None:
                self._expiry.cancel()
            cluster = self._rooms.cluster
            if cluster is not None:
                # The room goes on at the other hubs: stop playing here and
                # let another hub drive at once rather than after the lease.
                self._stop_player()
                if self.driving:
                    self.driving = False
                    with contextlib.suppress(HubError):
                        await cluster.release(self.id)
            else:
                # This hub's copy only: the stored record is the store's to
                # keep (for the hub that serves the room next) or to forget.
                self.state, actions = step(self.state, Input.CLOSE)
                if Action.END_STREAM in actions and self.stream_id is not None:
                    await self._end_stream(self.stream_id, END_REASONS[Input.CLOSE])


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
        await self.room.relay(frame, droppable=not first)
        return True

    async def end(self) -> None:
        await self.room.stream_over(self.stream_id, Input.ENDED)


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
        cluster: RoomCluster | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.fanout = fanout
        # Rooms shared with other hubs (``--redis``); None: this hub's own.
        self.cluster = cluster
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
        # Rooms forgotten here whose closing is not over yet, by id: a room
        # opened again meanwhile waits for it (see ``settled``).
        self._closing: dict[str, asyncio.Event] = {}
        self._closing_slots = asyncio.Semaphore(CLOSING_AT_ONCE)

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
            if self.cluster is None:
                room.followed.set()
            else:
                room.share(self.cluster)
            # Empty from birth (a watcher or a Press opened it, or a device
            # about to join): forgotten after the linger unless someone joins.
            room.linger()
        return room

    async def open(self, room_id: str) -> Room:
        """The room, its copy of the record current (shared: read from the store)."""
        room = self.get(room_id)
        if not room.followed.is_set():
            try:
                await asyncio.wait_for(room.followed.wait(), FOLLOW_TIMEOUT)
            except TimeoutError:
                raise Unavailable(f"room {room_id} cannot be read from the backplane") from None
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
            closed = asyncio.Event()
            earlier = self._closing.get(room.id)
            self._closing[room.id] = closed
            # Nobody hears it, yet it may still play (a watcher's Press, a
            # live feed): left running, its player would go on publishing into
            # the channel of the next room of that name, which cannot stop it.
            self.fanout.spawn(self._close(room, earlier, closed))

    async def settled(self, room_id: str) -> None:
        """Wait until the rooms of this name forgotten here are closed.

        Shared, closing a room tells the cluster this hub no longer has it
        open (and may drop its record): a room of the same name opened here
        meanwhile says it has it open only after that, or its word would be
        taken back by the old room's closing.
        """
        closing = self._closing.get(room_id)
        if closing is not None:
            await closing.wait()

    async def _close(
        self, room: Room, earlier: asyncio.Event | None, closed: asyncio.Event
    ) -> None:
        try:
            if earlier is not None:
                await earlier.wait()
            async with self._closing_slots:
                # Stop it first: dropping the record may fail (the store out
                # of reach), and the room must not play on because of that.
                await room.close()
                if self.cluster is not None:
                    await self._leave_cluster(room.id, self.cluster)
                elif room.id not in self._rooms:  # not opened again meanwhile
                    try:
                        await self.store.forget(room.id)
                    except HubError as error:
                        log.warning("room %s: its record stays (%s)", room.id, error)
        finally:
            closed.set()
            if self._closing.get(room.id) is closed:
                del self._closing[room.id]

    async def _leave_cluster(self, room_id: str, cluster: RoomCluster) -> None:
        """Shared, the record is the cluster's: it stays while another hub has the
        room open (a device coming back there finds its mode), and goes with the
        last hub that forgets it, as one hub forgets a room."""
        try:
            gone = await cluster.close(room_id)
        except HubError as error:
            log.warning("room %s: its record stays until it expires (%s)", room_id, error)
            return
        if gone:
            log.info("room %s: its record is gone from every hub", room_id)

    async def close(self) -> None:
        for room in list(self._rooms.values()):
            await room.close()
        self._rooms.clear()
