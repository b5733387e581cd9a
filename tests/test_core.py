"""The broadcast core without gRPC: subscriptions, publications, brokers, the hub, limits."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import Any

import pytest
from chat_helpers import SECRET, timeout
from fake_clock import FakeClock
from hypothesis import given
from hypothesis import strategies as st

from hub.core.broker import HistoryLost, MemoryBroker, PublicationHandler
from hub.core.chat import CHANNEL, check_message, check_name
from hub.core.events import (
    AudioFrame,
    LeaveReason,
    LedFrame,
    ServerShutdown,
    StreamEnd,
    UserJoined,
    UserLeft,
    UserMessage,
)
from hub.core.hub import Hub
from hub.core.observer import Observer, Unobserved
from hub.core.publication import Publication
from hub.core.ratelimit import TokenBucket
from hub.core.roomstate import Input, RoomState
from hub.core.roomstore import STREAM_ID_LIMIT, MemoryRoomStore
from hub.core.subscription import Overflow, Subscription
from hub.core.tokens import TokenIssuer, load_secret
from hub.errors import (
    HubError,
    InvalidArgument,
    NotFound,
    RateLimited,
    SlowConsumer,
    Unauthenticated,
    Unavailable,
)
from hub.settings import ChatSettings, Settings


def pub(event: Any = "e", *, droppable: bool = False, channel: str = "c") -> Publication:
    return Publication(channel, event, 0.0, droppable=droppable)


def queued(subscription: Subscription) -> list[Any]:
    return [p.event for p in subscription.drain()]


# -- Subscription ------------------------------------------------------------------


def test_subscription_needs_room_for_one() -> None:
    with pytest.raises(ValueError):
        Subscription("c", maxlen=0, overflow=Overflow.DISCONNECT)


@pytest.mark.asyncio
async def test_disconnect_policy_cuts_a_full_subscriber_with_slow_consumer() -> None:
    closed: list[Subscription] = []
    sub = Subscription("c", maxlen=3, overflow=Overflow.DISCONNECT, on_close=closed.append)
    for n in range(3):
        sub.deliver(pub(n))
    assert len(sub) == 3 and not sub.closed
    sub.deliver(pub(3))
    assert sub.closed
    assert closed == [sub]
    # The queue is discarded: the consumer learns why at once.
    with pytest.raises(SlowConsumer, match="more than 3 events queued"):
        await anext(sub)
    sub.deliver(pub(4))  # ignored after close, never raises
    assert len(sub) == 0


@pytest.mark.asyncio
async def test_disconnect_policy_never_drops_a_droppable_item_silently() -> None:
    sub = Subscription("c", maxlen=2, overflow=Overflow.DISCONNECT)
    sub.deliver(pub(0, droppable=True))
    sub.deliver(pub(1, droppable=True))
    sub.deliver(pub(2, droppable=True))
    assert sub.closed and sub.dropped == 0


def test_drop_oldest_skips_the_oldest_droppable_and_keeps_markers() -> None:
    sub = Subscription("c", maxlen=4, overflow=Overflow.DROP_OLDEST)
    sub.deliver(pub("start", droppable=False))
    for n in range(3):
        sub.deliver(pub(n, droppable=True))
    sub.deliver(pub(3, droppable=True))  # full: frame 0 goes
    sub.deliver(pub(4, droppable=True))  # frame 1 goes
    sub.deliver(pub("end", droppable=False))  # frame 2 goes
    assert not sub.closed
    assert sub.dropped == 3
    assert queued(sub) == ["start", 3, 4, "end"]


def test_drop_oldest_skips_a_frame_between_markers() -> None:
    sub = Subscription("c", maxlen=3, overflow=Overflow.DROP_OLDEST)
    sub.deliver(pub("end 1"))
    sub.deliver(pub("frame", droppable=True))
    sub.deliver(pub("start 2"))
    sub.deliver(pub("next", droppable=True))
    assert queued(sub) == ["end 1", "start 2", "next"]
    assert sub.dropped == 1


def test_drop_oldest_with_only_markers_queued_disconnects() -> None:
    # Markers are never dropped, so a queue full of them has no room to make.
    sub = Subscription("c", maxlen=2, overflow=Overflow.DROP_OLDEST)
    sub.deliver(pub("start"))
    sub.deliver(pub("end"))
    sub.deliver(pub("frame", droppable=True))
    assert sub.closed
    assert sub.dropped == 0


@given(
    st.lists(st.booleans(), max_size=60),
    st.integers(min_value=1, max_value=8),
)
def test_drop_oldest_never_loses_a_marker_or_reorders(flags: list[bool], maxlen: int) -> None:
    sub = Subscription("c", maxlen=maxlen, overflow=Overflow.DROP_OLDEST)
    markers_sent = 0
    for n, droppable in enumerate(flags):
        sub.deliver(pub(n, droppable=droppable))
        if sub.closed:
            break
        markers_sent += not droppable
        assert len(sub) <= maxlen
    if sub.closed:
        return
    left = sub.drain()
    assert [p.event for p in left] == sorted(p.event for p in left)
    assert sum(not p.droppable for p in left) == markers_sent
    assert sub.dropped == len(flags) - len(left)


def test_drop_oldest_tells_on_skip_of_each_item_it_drops() -> None:
    skipped: list[int] = []
    sub = Subscription("c", maxlen=2, overflow=Overflow.DROP_OLDEST, on_skip=skipped.append)
    for n in range(5):
        sub.deliver(pub(n, droppable=True))
    assert skipped == [1, 1, 1] and sub.dropped == 3
    assert queued(sub) == [3, 4]


class DropAll:
    """A policy object: the queue empties when full, or nothing may go."""

    def __init__(self, *, may_drop: bool) -> None:
        self.may_drop = may_drop

    def make_room(self, queue: deque[Publication]) -> int | None:
        if not self.may_drop:
            return None
        dropped = len(queue)
        queue.clear()
        return dropped


def test_an_overflow_policy_object_decides_what_goes() -> None:
    skipped: list[int] = []
    sub = Subscription("c", maxlen=3, overflow=DropAll(may_drop=True), on_skip=skipped.append)
    for n in range(7):
        sub.deliver(pub(n))
    assert queued(sub) == [6]
    assert skipped == [3, 3] and sub.dropped == 6 and not sub.closed


@pytest.mark.asyncio
async def test_an_overflow_policy_that_drops_nothing_disconnects() -> None:
    skipped: list[int] = []
    sub = Subscription("c", maxlen=1, overflow=DropAll(may_drop=False), on_skip=skipped.append)
    sub.deliver(pub(0))
    sub.deliver(pub(1))
    assert sub.closed and skipped == [] and sub.dropped == 0
    with pytest.raises(SlowConsumer):
        await anext(sub)


@pytest.mark.asyncio
async def test_graceful_close_hands_out_what_is_queued_then_stops() -> None:
    sub = Subscription("c", maxlen=8, overflow=Overflow.DISCONNECT)
    for n in range(3):
        sub.deliver(pub(n))
    sub.close()
    assert [p.event async for p in sub] == [0, 1, 2]
    sub.close()  # idempotent


@pytest.mark.asyncio
async def test_error_close_discards_the_queue_and_raises() -> None:
    sub = Subscription("c", maxlen=8, overflow=Overflow.DISCONNECT)
    sub.deliver(pub(0))
    error = Unavailable("gone")
    sub.close(error)
    with pytest.raises(Unavailable) as raised:
        await anext(sub)
    assert raised.value is error
    sub.close(InvalidArgument("later"))  # the first close wins
    with pytest.raises(Unavailable):
        await anext(sub)


@pytest.mark.asyncio
async def test_a_waiting_consumer_wakes_on_delivery_and_on_close() -> None:
    sub = Subscription("c", maxlen=8, overflow=Overflow.DISCONNECT)
    waiting = asyncio.ensure_future(anext(sub))
    await asyncio.sleep(0)  # let it start waiting
    assert not waiting.done()
    sub.deliver(pub("x"))
    assert (await asyncio.wait_for(waiting, timeout())).event == "x"
    waiting = asyncio.ensure_future(anext(sub))
    await asyncio.sleep(0)
    sub.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, timeout())


@pytest.mark.asyncio
async def test_a_waiting_consumer_wakes_with_the_error() -> None:
    sub = Subscription("c", maxlen=1, overflow=Overflow.DISCONNECT)
    waiting = asyncio.ensure_future(anext(sub))
    await asyncio.sleep(0)
    sub.close(SlowConsumer("too slow"))
    with pytest.raises(SlowConsumer):
        await asyncio.wait_for(waiting, timeout())


# -- Publication -------------------------------------------------------------------


def test_publication_encodes_once_per_codec() -> None:
    calls: list[str] = []

    def proto(p: Publication) -> bytes:
        calls.append("proto")
        return f"proto:{p.event}".encode()

    def frame(p: Publication) -> bytes:
        calls.append("frame")
        return f"frame:{p.event}".encode()

    publication = pub("hello")
    first = publication.encoded(proto)
    for _ in range(100):
        assert publication.encoded(proto) is first
    assert publication.encoded(frame) == b"frame:hello"
    assert publication.encoded(frame) == b"frame:hello"
    assert first == b"proto:hello"
    assert calls == ["proto", "frame"]
    # Another publication has its own cache.
    assert pub("other").encoded(proto) == b"proto:other"
    assert calls == ["proto", "frame", "proto"]


# -- MemoryBroker ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_memory_broker_delivers_only_subscribed_channels() -> None:
    broker = MemoryBroker()
    got: list[Publication] = []
    await broker.start(got.append)
    await broker.publish(pub(0, channel="a"))
    await broker.subscribe("a")
    await broker.publish(pub(1, channel="a"))
    await broker.publish(pub(2, channel="b"))
    await broker.subscribe("b")
    await broker.publish(pub(3, channel="b"))
    await broker.unsubscribe("a")
    await broker.publish(pub(4, channel="a"))
    assert [(p.channel, p.event) for p in got] == [("a", 1), ("b", 3)]
    await broker.close()
    await broker.publish(pub(5, channel="b"))
    assert len(got) == 2


# -- Hub fan-out ---------------------------------------------------------------------


class RecordingBroker(MemoryBroker):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    async def start(self, handler: PublicationHandler) -> None:
        self.calls.append(("start", ""))
        await super().start(handler)

    async def subscribe(self, channel: str) -> None:
        self.calls.append(("subscribe", channel))
        await super().subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.calls.append(("unsubscribe", channel))
        await super().unsubscribe(channel)


def make_hub(
    broker: RecordingBroker | None = None, *, observer: Observer | None = None, **chat: Any
) -> Hub:
    from hub.audio.library import SoundLibrary
    from hub.audio.sources import long_sound

    return Hub(
        Settings(chat=ChatSettings(password="pw", **chat)),
        broker=broker,
        clock=FakeClock(),
        secret=SECRET,
        library=SoundLibrary({0: long_sound(0.01)}),
        observer=observer,
    )


class RecordingObserver(Unobserved):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def delivered(self, channel: str, count: int) -> None:
        self.calls.append(("delivered", (channel, count)))

    def session_ended(self, reason: LeaveReason) -> None:
        self.calls.append(("session_ended", reason))


@pytest.mark.asyncio
async def test_the_observer_hears_of_deliveries_once_per_publication() -> None:
    observer = RecordingObserver()
    hub = make_hub(observer=observer)
    await hub.start()
    async with (
        hub.subscribe("room", maxlen=8, overflow=Overflow.DISCONNECT),
        hub.subscribe("room", maxlen=8, overflow=Overflow.DISCONNECT),
        hub.subscribe("room", maxlen=8, overflow=Overflow.DISCONNECT),
    ):
        await hub.publish("room", "x")
        await hub.publish("nobody", "y")
    _, token = await hub.chat.login("alice", "pw")
    await hub.chat.logout(token)
    assert observer.calls == [
        ("delivered", ("room", 3)),
        ("session_ended", LeaveReason.LOGOUT),
        ("delivered", ("control", 1)),  # the news to this hub's own control sink
    ]
    await hub.close()


@pytest.mark.asyncio
async def test_hub_subscribes_the_broker_for_the_first_and_last_local_subscriber() -> None:
    broker = RecordingBroker()
    hub = make_hub(broker)
    await hub.start()
    broker.calls.clear()
    async with hub.subscribe("room", maxlen=8, overflow=Overflow.DISCONNECT) as first:
        assert broker.calls == [("subscribe", "room")]
        async with hub.subscribe("room", maxlen=8, overflow=Overflow.DISCONNECT) as second:
            assert hub.subscriber_count("room") == 2
            await hub.publish("room", "hi")
            await hub.publish("elsewhere", "unheard")
        assert broker.calls == [("subscribe", "room")]
        assert hub.subscriber_count("room") == 1
        await hub.publish("room", "again")
    assert broker.calls == [("subscribe", "room"), ("unsubscribe", "room")]
    assert hub.subscriber_count("room") == 0
    assert queued(first) == ["hi", "again"]
    assert queued(second) == ["hi"]
    await hub.close()


@pytest.mark.asyncio
async def test_hub_unsubscribes_after_its_last_subscriber_was_cut_as_slow() -> None:
    broker = RecordingBroker()
    hub = make_hub(broker)
    await hub.start()
    async with hub.subscribe("room", maxlen=1, overflow=Overflow.DISCONNECT) as slow:
        await hub.publish("room", 1)
        await hub.publish("room", 2)
        assert slow.closed
        assert hub.subscriber_count("room") == 0
    assert broker.calls[-1] == ("unsubscribe", "room")
    await hub.close()


@pytest.mark.asyncio
async def test_hub_delivers_the_same_publication_to_every_subscriber() -> None:
    hub = make_hub()
    await hub.start()
    async with (
        hub.subscribe("room", maxlen=8, overflow=Overflow.DISCONNECT) as a,
        hub.subscribe("room", maxlen=8, overflow=Overflow.DROP_OLDEST) as b,
    ):
        sent = await hub.publish("room", "x")
        assert sent.time == hub.clock.wall()
        assert a.drain()[0] is sent
        assert b.drain()[0] is sent
    await hub.close()


@pytest.mark.asyncio
async def test_a_full_subscriber_never_holds_back_the_others() -> None:
    hub = make_hub()
    await hub.start()
    async with (
        hub.subscribe("room", maxlen=2, overflow=Overflow.DISCONNECT) as slow,
        hub.subscribe("room", maxlen=100, overflow=Overflow.DISCONNECT) as fast,
    ):
        for n in range(50):
            await asyncio.wait_for(hub.publish("room", n), timeout())
        assert slow.closed
        assert queued(fast) == list(range(50))
    await hub.close()


@pytest.mark.asyncio
async def test_lost_publications_end_chat_streams_and_leave_a_devices_streams_open() -> None:
    """Redis restarted empty (the broker's HistoryLost): a chat stream ends
    UNAVAILABLE and its client reconnects; a stock device, which would go deaf
    for good, keeps both its queues: its open stream gets its end (a valid
    packet: the room's silence), its LEDs the room's frame, and a stream that
    plays on opens again at its next packet."""
    from hub.rpc.devices import DeviceAudio, DeviceFrames

    hub = make_hub()
    await hub.start()
    room = await hub.rooms.open("kitchen")
    silence = hub.rooms.silence
    audio = DeviceAudio(room.audio_channel, maxlen=8, silence=silence, clock=hub.clock)
    frame = Publication(room.status_channel, LedFrame(room.frame), 0.0, droppable=True)
    status = DeviceFrames(room.status_channel, maxlen=8, frame=lambda: frame)
    async with (
        hub.subscribe(CHANNEL, maxlen=8, overflow=Overflow.DISCONNECT) as chat,
        hub.attach(audio),
        hub.attach(status),
    ):
        await hub.publish(room.audio_channel, AudioFrame(7, 0, b"a", is_start=True))
        await hub.publish(room.audio_channel, AudioFrame(7, 1, b"b"), droppable=True)
        for channel in (CHANNEL, room.audio_channel, room.status_channel):
            await hub.broker.publish(Publication(channel, HistoryLost("test"), 0.0))
        with pytest.raises(Unavailable, match="events were lost"):
            await anext(chat)
        assert chat.closed and not audio.closed and not status.closed
        heard = [(f.stream_id, f.data, f.is_start, f.is_end) for f in queued(audio)]
        assert heard == [(7, b"a", True, False), (7, b"b", False, False), (7, silence, False, True)]
        assert queued(status) == [frame.event]

        await hub.publish(room.audio_channel, AudioFrame(7, 2, b"c"), droppable=True)
        await hub.publish(room.audio_channel, AudioFrame(7, -1, silence, is_end=True))
        heard = [(f.stream_id, f.data, f.is_start, f.is_end) for f in queued(audio)]
        assert heard == [(7, b"c", True, False), (7, silence, False, True)]
        # Nothing was open: a loss now adds nothing to the device's stream.
        await hub.broker.publish(Publication(room.audio_channel, HistoryLost("test"), 0.0))
        assert len(audio) == 0 and hub.subscriber_count(room.audio_channel) == 1
    await hub.close()


# -- The chat room through the core ----------------------------------------------------


@pytest.mark.asyncio
async def test_chat_login_logout_and_messages_through_the_core() -> None:
    hub = make_hub()
    await hub.start()
    async with hub.subscribe(CHANNEL, maxlen=64, overflow=Overflow.DISCONNECT) as room:
        with pytest.raises(Unauthenticated, match="password is incorrect"):
            await hub.chat.login("alice", "wrong")
        with pytest.raises(InvalidArgument, match="username is required"):
            await hub.chat.login("", "pw")
        session, token = await hub.chat.login("alice", "pw")
        assert await hub.chat.authenticate(token) is session
        await hub.chat.say(session, "hello")
        await hub.chat.logout(token)
        with pytest.raises(NotFound, match="token not found"):
            await hub.chat.logout(token)
        with pytest.raises(Unauthenticated, match="invalid token"):
            await hub.chat.authenticate(token)
        # Announcing the departure runs in the background.
        events = [(await asyncio.wait_for(anext(room), timeout())).event for _ in range(3)]
    sid = session.id
    assert events == [
        UserJoined("alice", sid),
        UserMessage("alice", sid, "hello"),
        UserLeft("alice", sid, LeaveReason.LOGOUT),
    ]
    await hub.close()


@pytest.mark.asyncio
async def test_chat_rate_limit_and_shutdown_through_the_core() -> None:
    hub = make_hub(rate_per_second=1, rate_burst=2)
    await hub.start()
    clock = hub.clock
    assert isinstance(clock, FakeClock)
    session, _ = await hub.chat.login("bob", "pw")
    await hub.chat.say(session, "1")
    await hub.chat.say(session, "2")
    with pytest.raises(RateLimited, match="at most 1 a second"):
        await hub.chat.say(session, "3")
    clock.advance(1.0)
    await hub.chat.say(session, "4")
    async with hub.subscribe(CHANNEL, maxlen=8, overflow=Overflow.DISCONNECT) as room:
        await hub.shutdown()
        assert [p.event async for p in room] == [ServerShutdown()]
    with pytest.raises(Unavailable):
        await hub.chat.say(session, "late")
    with pytest.raises(Unavailable):
        await hub.chat.login("carol", "pw")
    await hub.shutdown()  # idempotent
    await hub.close()


# -- TokenBucket ---------------------------------------------------------------------


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.125)  # half a token (binary fractions: exact sums)
    assert not bucket.take()
    clock.advance(0.125)  # one
    assert bucket.take()
    assert not bucket.take()
    clock.advance(100.0)  # refills only up to the burst
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]


def test_token_bucket_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(rate=0, burst=0, clock=FakeClock())
    assert all(bucket.take() for _ in range(10_000))


# -- Tokens ------------------------------------------------------------------------


def test_token_issuer_verifies_and_expires_on_its_clock() -> None:
    clock = FakeClock(now=1_000_000.5)
    issuer = TokenIssuer(SECRET, ttl=60.0, clock=clock)
    expires = issuer.expiry()
    token = issuer.issue("abcd1234", "alice", expires)
    claims = issuer.verify(token)
    assert (claims.session_id, claims.name, claims.expires) == ("abcd1234", "alice", expires)
    assert 60.0 <= expires - clock.now <= 61.0
    clock.now = expires - 0.001
    issuer.verify(token)
    clock.now = expires
    with pytest.raises(Unauthenticated, match="token expired"):
        issuer.verify(token)
    other = TokenIssuer(b"x" * 40, ttl=60.0, clock=clock)
    with pytest.raises(Unauthenticated, match="invalid token"):
        other.verify(token)


def test_load_secret() -> None:
    assert load_secret({"HUB_TOKEN_SECRET": "s" * 32}) == b"s" * 32
    with pytest.raises(ValueError, match="shorter than 32 bytes"):
        load_secret({"HUB_TOKEN_SECRET": "short"})
    random_a, random_b = load_secret({}), load_secret({})
    assert len(random_a) >= 32 and random_a != random_b


# -- Names and lines -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "Zoë", "李雷", "x" * 32, "a b", "🙂"])
def test_good_names(name: str) -> None:
    check_name(name, 32)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "username is required"),
        ("   ", "username is required"),
        ("x" * 33, "at most 32 characters"),
        ("a\x1bb", "printable"),
        ("a\nb", "printable"),
        ("a\tb", "printable"),
        ("\u202eevil", "bidirectional-text controls"),
        ("a\u200bb", "printable"),
        ("a\u2028b", "printable"),
        ("a\ud800b", "printable"),
        ("a\ue000b", "printable"),
    ],
)
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_name(name, 32)


@pytest.mark.parametrize("text", ["", "hello", "tab\there", "é" * 2048, "m" * 4096, "zwj\u200d"])
def test_good_messages(text: str) -> None:
    check_message(text, 4096)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("m" * 4097, "at most 4096 bytes"),
        ("é" * 2049, "at most 4096 bytes"),
        ("\x1b[2J", "control characters"),
        ("a\nb", "control characters"),
        ("a\rb", "control characters"),
        ("\x00", "control characters"),
        ("\x7f", "control characters"),
        ("\x85", "control characters"),
        ("\u202eevil", "bidirectional-text controls"),
    ],
)
def test_bad_messages(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_message(text, 4096)


def test_every_refusal_is_a_hub_error() -> None:
    for error in (InvalidArgument, Unauthenticated, NotFound, RateLimited, SlowConsumer):
        assert issubclass(error, HubError)


def test_the_log_says_where_the_secret_comes_from_never_what_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="hub.core.tokens"):
        load_secret({})
        load_secret({"HUB_TOKEN_SECRET": "swordfish" * 4})
    random_notice, configured = caplog.records
    assert random_notice.levelno == logging.WARNING
    assert "random per-process secret" in random_notice.getMessage()
    assert "HUB_TOKEN_SECRET" in configured.getMessage()
    assert "swordfish" not in caplog.text


@pytest.mark.asyncio
async def test_stream_ids_go_round_within_u32_and_never_are_0() -> None:
    store = MemoryRoomStore(first_stream_id=STREAM_ID_LIMIT - 2)
    ids = [await store.new_stream_id() for _ in range(3)]
    assert ids == [STREAM_ID_LIMIT - 2, STREAM_ID_LIMIT - 1, 1]


class StoreGoneAtForget(MemoryRoomStore):
    """A room store whose backplane is out of reach when a room is forgotten."""

    async def forget(self, room_id: str) -> None:
        raise Unavailable("the backplane (Redis) is out of reach")


@pytest.mark.asyncio
@pytest.mark.parametrize("store", [MemoryRoomStore, StoreGoneAtForget])
async def test_a_room_forgotten_while_it_plays_ends_its_stream_as_closed(
    store: type[MemoryRoomStore],
) -> None:
    """Nobody hears a watcher's Play: after the linger the room goes, and its
    stream ends with the end mark ``closed`` (the room's table: PLAYING, CLOSE),
    even when its record cannot be dropped then: the player stops first."""
    from hub.audio.library import SoundLibrary
    from hub.audio.sources import long_sound

    clock = FakeClock(auto_advance=False)  # the sound plays on until time moves
    hub = Hub(
        Settings(chat=ChatSettings(password="pw")),
        clock=clock,
        secret=SECRET,
        library=SoundLibrary({0: long_sound(5.0)}),
        room_store=store(),
    )
    await hub.start()
    room = hub.rooms.get("porch")
    async with hub.subscribe(room.audio_channel, maxlen=512, overflow=Overflow.DISCONNECT) as audio:
        await room.press(Input.PLAY)
        assert room.state is RoomState.PLAYING and room.lingering
        playing = room.stream_id
        clock.advance(hub.rooms.linger)
        assert "porch" not in hub.rooms
        while True:
            frame = (await asyncio.wait_for(anext(audio), timeout())).event
            assert isinstance(frame, AudioFrame) and frame.stream_id == playing
            if frame.is_end:
                break
        assert frame.end_reason is StreamEnd.CLOSED
        assert room.state is RoomState.IDLE
    await hub.close()


OUT_OF_REACH = "the backplane (Redis) is out of reach"


class BrokerAway(MemoryBroker):
    """A broker whose backplane goes away while ``away`` is set."""

    away = False

    async def publish(self, pub: Publication) -> None:
        if self.away:
            raise Unavailable(OUT_OF_REACH)
        await super().publish(pub)


class StoreAway(MemoryRoomStore):
    """A room store out of reach while ``away`` is set."""

    away = False

    async def step(self, *args: Any, **kwargs: Any) -> Any:
        if self.away:
            raise Unavailable(OUT_OF_REACH)
        return await super().step(*args, **kwargs)


@pytest.mark.asyncio
async def test_a_sound_plays_on_through_a_backplane_blip_and_ends_once_the_store_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Packets the backplane will not take are lost, as a lagging listener's
    are: the stream is not cut for a blip. A stream that runs out while the
    store is away gets its end once the store is back. Neither is the hub's
    bug: warnings, no traceback."""
    from hub.audio.library import SoundLibrary
    from hub.audio.sources import long_sound

    caplog.set_level(logging.INFO, logger="hub")
    clock = FakeClock(auto_advance=False)
    broker, store = BrokerAway(), StoreAway()
    hub = Hub(
        Settings(chat=ChatSettings(password="pw")),
        broker=broker,
        clock=clock,
        secret=SECRET,
        library=SoundLibrary({0: long_sound(1 / 60)}),  # a second: 50 packets of 20 ms
        room_store=store,
    )
    await hub.start()
    room = hub.rooms.get("porch")
    async with hub.subscribe(room.audio_channel, maxlen=512, overflow=Overflow.DISCONNECT) as audio:
        await room.press(Input.PLAY)
        start = (await asyncio.wait_for(anext(audio), timeout())).event
        assert isinstance(start, AudioFrame) and start.is_start and start.seq == 0
        await clock.next_wake()  # the player waits for its next packet's time

        broker.away = True
        clock.advance(0.2)  # ten packets' time with the backplane away
        await clock.next_wake()
        broker.away = False
        clock.advance(0.1)
        await clock.next_wake()
        frames = [start] + [pub.event for pub in audio.drain()]
        assert {f.stream_id for f in frames} == {start.stream_id}
        assert not any(f.is_start or f.is_end for f in frames[1:])
        seqs = [f.seq for f in frames]
        gaps = [b - a - 1 for a, b in itertools.pairwise(seqs) if b - a != 1]
        assert gaps == [10], seqs  # ten packets lost, then the sound where it now is

        store.away = True
        for _ in range(20):  # the sound runs out; its end cannot be recorded
            clock.advance(0.1)
            await clock.next_wake()
        rest = [pub.event for pub in audio.drain()]
        assert rest and rest[-1].seq == 49 and not any(f.is_end for f in rest)
        assert room.state is RoomState.PLAYING

        store.away = False
        clock.advance(1.0)
        end = (await asyncio.wait_for(anext(audio), timeout())).event
        assert end.stream_id == start.stream_id and end.is_end
        assert end.end_reason is StreamEnd.FINISHED
        assert room.state is RoomState.IDLE
    await hub.close()
    logged = [r for r in caplog.records if r.name.startswith("hub")]
    assert not [r.getMessage() for r in logged if r.levelno >= logging.ERROR or r.exc_info]
    warned = " / ".join(r.getMessage() for r in logged if r.levelno == logging.WARNING)
    assert "packets lost" in warned and "the store cannot say so yet" in warned, warned
