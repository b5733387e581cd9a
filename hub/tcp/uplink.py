"""What a TCP client publishes: its uplink (docs/protocol.md, section 3).

A live feed into a device room, relayed as the room's stream. The client
paces it (a microphone is real time by nature); a token bucket holds it to
real time, with a second of audio as burst for network jitter, and the
excess is dropped with at most one warning a second on the hub's clock.
"""

from __future__ import annotations

import contextlib

from hub.core.hub import Hub
from hub.core.ratelimit import TokenBucket
from hub.core.rooms import LiveFeed, Room
from hub.metrics import Metrics
from hub.tcp import codec as proto
from hub.tcp.peer import Peer

# Seconds between two warnings that a publisher sends faster than real time.
WARN_EVERY = 1.0


class Uplink:
    """The one publication a client sends, while it lasts."""

    def __init__(self, client: Peer, hub: Hub, metrics: Metrics) -> None:
        self._client = client
        self._hub = hub
        self._metrics = metrics
        self._feed: LiveFeed | None = None
        # A publisher is present in its room while it publishes, so an
        # otherwise empty room is not forgotten under it.
        self._presence: contextlib.AsyncExitStack | None = None
        self._bucket: TokenBucket | None = None
        self._warned: float | None = None  # when the last rate warning went out
        self._stream_id: int | None = None  # the client's id of the stream

    async def start(self, start: proto.PublishStart, room: Room, title: str) -> None:
        """End the publication there is, then go live in ``room``."""
        await self.end()
        async with contextlib.AsyncExitStack() as presence:
            await presence.enter_async_context(self._hub.rooms.join(room.id, "a publisher"))
            self._feed = await room.go_live(title, start.frame_duration_us / 1_000_000)
            self._presence = presence.pop_all()
        self._stream_id = start.stream_id
        packets_per_second = 1_000_000 / start.frame_duration_us
        # Real time, with a second of audio as burst for network jitter.
        self._bucket = TokenBucket(packets_per_second, packets_per_second, self._hub.clock)
        client = self._client
        client.log.info("%s: publishing %r into room %s", client.id, title, room.id)

    async def packet(self, audio: proto.Audio) -> None:
        feed, bucket = self._feed, self._bucket
        if feed is None or bucket is None or audio.stream_id != self._stream_id:
            return  # refused or cut: what crossed the refusal is discarded
        if not bucket.take():
            self._metrics.rate_limited("tcp_audio")
            now = self._hub.clock.monotonic()
            if self._warned is None or now - self._warned >= WARN_EVERY:
                self._warned = now
                self._client.send(
                    proto.Error(
                        proto.ErrorCode.RATE_LIMITED,
                        "audio faster than real time: excess dropped",
                        fatal=False,
                        request=proto.FrameType.AUDIO,
                    )
                )
            return
        await feed.push(audio.packet)

    async def end(self) -> None:
        feed, self._feed = self._feed, None
        presence, self._presence = self._presence, None
        if feed is not None:
            await feed.end()
        if presence is not None:
            await presence.aclose()
