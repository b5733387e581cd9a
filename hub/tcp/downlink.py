"""What a TCP client listens to: its downlink (docs/protocol.md, section 3).

The one stream the server sends a client is either a music track of its own,
paced by the shared player (``hub.audio.player``), or a device room's stream,
heard through a ``RoomListener``; starting one ends the other. Room audio
costs no task at all: the hub hands each publication to every listener's
``RoomListener.deliver``, which writes the frame (encoded once for all
listeners) to that listener's transport, or skips it while the listener's
send buffer is full. Stream start and end frames are never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib

from hub.audio.music import Track
from hub.audio.player import play
from hub.core.events import AudioFrame, StreamEnd
from hub.core.hub import Hub
from hub.core.publication import Publication
from hub.core.rooms import Admit, AudioGate, Room
from hub.errors import HubError
from hub.tcp import codec as proto
from hub.tcp.peer import Peer

END_REASONS: dict[StreamEnd | None, proto.StreamEndReason] = {
    StreamEnd.FINISHED: proto.StreamEndReason.FINISHED,
    StreamEnd.STOPPED: proto.StreamEndReason.STOPPED,
    StreamEnd.SWITCHED: proto.StreamEndReason.SWITCHED,
    StreamEnd.ERROR: proto.StreamEndReason.ERROR,
    StreamEnd.CLOSED: proto.StreamEndReason.STOPPED,
    None: proto.StreamEndReason.FINISHED,
}


def ms(seconds: float | None) -> int | None:
    """A duration as the protocol's milliseconds (None: unknown)."""
    return None if seconds is None else round(seconds * 1000)


# -- room audio, encoded once per publication for every TCP listener ---------


def tcp_audio(pub: Publication) -> proto.Prepared:
    frame: AudioFrame = pub.event
    return proto.prepare(proto.Audio(frame.stream_id, frame.seq, frame.data))


def tcp_start(pub: Publication) -> proto.Prepared:
    frame: AudioFrame = pub.event
    return proto.prepare(
        proto.StreamStart(
            frame.stream_id,
            None,
            proto.fit_text(frame.title, proto.MAX_TITLE_BYTES),
            ms(frame.duration),
            frame_duration_us=round(frame.frame_seconds * 1_000_000),
        )
    )


def tcp_end(pub: Publication) -> proto.Prepared:
    frame: AudioFrame = pub.event
    return proto.prepare(proto.StreamEnd(frame.stream_id, END_REASONS[frame.end_reason]))


class RoomListener:
    """A TCP client in a device room: a hub subscriber that never queues."""

    def __init__(self, client: Peer, room: Room) -> None:
        self.channel = room.audio_channel
        self.room = room
        self._client = client
        self._gate = AudioGate()

    def deliver(self, pub: Publication) -> None:
        frame: AudioFrame = pub.event
        admit = self._gate.admit(frame)
        if admit is Admit.SKIP:
            return
        client = self._client
        if frame.is_end:
            client.send(pub.encoded(tcp_end))
            return
        if frame.is_start or admit is Admit.SEND_AS_START:
            client.end_downlink(proto.StreamEndReason.SWITCHED)
            client.send(pub.encoded(tcp_start))
        audio = pub.encoded(tcp_audio)
        if client.codec.downlink_stream == frame.stream_id:
            # The hot path, once per packet per listener: AUDIO of the open
            # stream moves no state, so its checked bytes go out as they are.
            client.write(audio.data, droppable=pub.droppable)
        else:
            client.send(audio, droppable=pub.droppable)

    def lost(self, error: HubError) -> None:
        # Our own client can be told (a fatal ERROR) and join again.
        self._client.fail_with(error)

    def close(self, error: HubError | None = None) -> None:
        if error is not None:
            self._client.fail_with(error)


# -- the downlink ---------------------------------------------------------------


class Downlink:
    """A client's own track, or the room it listens to: never both."""

    def __init__(self, client: Peer, hub: Hub) -> None:
        self._client = client
        self._hub = hub
        self._player: asyncio.Task[None] | None = None
        self._room: contextlib.AsyncExitStack | None = None  # presence and listener
        self._room_id: str | None = None

    async def play(self, track: Track) -> None:
        """End whatever the client hears, then play ``track`` to it alone."""
        client = self._client
        await self.leave(proto.StreamEndReason.SWITCHED)
        await self.stop_track(proto.StreamEndReason.SWITCHED)
        stream_id = await self._hub.rooms.new_stream_id()
        opus = self._hub.rooms.opus
        client.send(
            proto.StreamStart(
                stream_id,
                track.id,
                proto.fit_text(track.title, proto.MAX_TITLE_BYTES),
                ms(track.duration),
                frame_duration_us=round(opus.frame_ms * 1000),
            )
        )
        self._player = asyncio.get_running_loop().create_task(
            self._play_track(track, stream_id), name=f"tcp {client.id} track {track.id}"
        )
        client.log.info(
            "%s: playing %d %r as stream %d", client.id, track.id, track.title, stream_id
        )

    async def _play_track(self, track: Track, stream_id: int) -> None:
        client = self._client

        async def send(seq: int, packet: bytes, is_start: bool) -> None:
            client.send(proto.Audio(stream_id, seq, packet), droppable=True)

        played = await play(
            self._hub.rooms.encoded(track.sound),
            self._hub.clock,
            send,
            who=client.id,
            on_release=self._paced,
            logger=client.log,
        )
        reason = proto.StreamEndReason.FINISHED if played else proto.StreamEndReason.ERROR
        self._player = None
        if client.codec.downlink_stream == stream_id:
            client.send(proto.StreamEnd(stream_id, reason))

    def _paced(self, lateness: float) -> None:
        self._hub.observer.paced("music", lateness)

    async def stop_track(self, reason: proto.StreamEndReason) -> None:
        player, self._player = self._player, None
        if player is None:
            return
        player.cancel()
        # Once cancelled it sends nothing more: the end frame is the last.
        self._client.end_downlink(reason)
        # Not ``await player`` under suppress(CancelledError): that would also
        # swallow this task's own cancellation (the client went away), and the
        # handler would carry on, start the next track and wait forever.
        await asyncio.wait((player,))

    async def join(self, room: Room) -> None:
        """End whatever the client hears, then listen to ``room``."""
        await self.stop_track(proto.StreamEndReason.SWITCHED)
        await self.leave(proto.StreamEndReason.SWITCHED)
        # Cancelled (the client went away) or refused between the two steps,
        # the ``async with`` undoes the first; joined, ``pop_all`` keeps both.
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._hub.rooms.join(room.id, "a listener"))
            await stack.enter_async_context(self._hub.attach(RoomListener(self._client, room)))
            self._room, self._room_id = stack.pop_all(), room.id
        self._client.send(proto.Joined(room.id))
        self._client.log.info("%s: joined room %s", self._client.id, room.id)

    async def leave(self, reason: proto.StreamEndReason) -> None:
        stack, room_id = self._room, self._room_id
        if stack is None or room_id is None:
            return
        self._room = self._room_id = None
        await stack.aclose()
        self._client.end_downlink(reason)
        self._client.send(proto.Left(room_id))

    async def close(self) -> None:
        """The client is gone: stop its track, leave its room, say nothing."""
        await self.stop_track(proto.StreamEndReason.STOPPED)
        stack, self._room, self._room_id = self._room, None, None
        if stack is not None:
            await stack.aclose()
