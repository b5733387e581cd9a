"""The Chat service through real gRPC: a grpc.aio server on 127.0.0.1:0, real channels."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc
import jwt
import pytest
from chat_helpers import (
    PASSWORD,
    Event,
    OpenChannel,
    ServedHub,
    ServeHub,
    Stream,
    chat_stub,
    is_message,
    kind,
    login,
    logout,
    no_errors_logged,  # noqa: F401 (autouse)
    rpc_error,
    timeout,
    wait_subscribers,
    without_streams,
)
from cli_helpers import HUB, Proc
from fake_clock import FakeClock, clock_from_now
from stock_device import TcpRelay

from hub.audio.library import SoundLibrary
from hub.audio.sources import long_sound
from hub.core.events import LeaveReason, UserJoined, UserLeft
from hub.core.hub import Hub
from hub.core.subscription import Overflow
from hub.proto import chat_pb2, chat_pb2_grpc
from hub.settings import ChatSettings, Settings

pytestmark = pytest.mark.asyncio

Code = grpc.StatusCode


# The chat needs no sound library: one tiny generated sound keeps each hub's
# start from encoding the bundled sounds.
def chat_only() -> dict[str, Any]:
    return {"library": SoundLibrary({0: long_sound(0.01)})}


@pytest.fixture
def hub_options() -> dict[str, Any]:
    return chat_only()


def settings(**chat: Any) -> Settings:
    return Settings(chat=ChatSettings(password=PASSWORD, **chat))


def stub(channel: grpc.aio.Channel) -> chat_pb2_grpc.ChatStub:
    return chat_stub(channel)


async def joined(hub: Hub, channel: grpc.aio.Channel, name: str) -> tuple[str, Stream]:
    """Log ``name`` in and open its stream; returns once the stream is subscribed."""
    token = await login(channel, name)
    before = hub.subscriber_count("chat")
    stream = Stream(channel, token)
    await wait_subscribers(hub, before + 1)
    return token, stream


def assert_recent(event: Event, now: float | None = None) -> None:
    """The event's timestamp is close to ``now`` (the hub's wall clock; default: the real one)."""
    stamp = event.timestamp.ToNanoseconds() / 1e9
    assert event.HasField("timestamp")
    now = time.time() if now is None else now
    assert abs(stamp - now) < 5, f"timestamp {stamp} is not close to now"


# -- Login ---------------------------------------------------------------------


async def test_login_wrong_password(channel: grpc.aio.Channel) -> None:
    error = await rpc_error(stub(channel).Login(chat_pb2.LoginRequest(name="a", password="no")))
    assert error.code() is Code.UNAUTHENTICATED
    assert error.details() == "password is incorrect"


@pytest.mark.parametrize("name", ["", " ", "\t"])
async def test_login_without_name(channel: grpc.aio.Channel, name: str) -> None:
    request = chat_pb2.LoginRequest(name=name, password=PASSWORD)
    error = await rpc_error(stub(channel).Login(request))
    assert error.code() is Code.INVALID_ARGUMENT
    assert error.details() == "username is required"


async def test_login_checks_password_before_name(channel: grpc.aio.Channel) -> None:
    error = await rpc_error(stub(channel).Login(chat_pb2.LoginRequest(name="", password="no")))
    assert error.code() is Code.UNAUTHENTICATED


@pytest.mark.parametrize(
    "name",
    [
        "x" * 33,
        "eve\x1b[31m",
        "eve\nmallory",
        "eve\x00",
        "\u202eevil",
        "zero\u200bwidth",
        "line\u2028sep",
        "<<Server>>",
    ],
    ids=[
        "too-long",
        "escape",
        "newline",
        "nul",
        "bidi-override",
        "zero-width",
        "line-separator",
        "server-label",
    ],
)
async def test_login_bad_name(channel: grpc.aio.Channel, name: str) -> None:
    error = await rpc_error(
        stub(channel).Login(chat_pb2.LoginRequest(name=name, password=PASSWORD))
    )
    assert error.code() is Code.INVALID_ARGUMENT
    assert error.details().startswith("username must")


async def test_login_accepts_unicode_and_duplicate_names(channel: grpc.aio.Channel) -> None:
    first = await login(channel, "Zoë 🙂")
    second = await login(channel, "Zoë 🙂")
    assert first != second
    assert await login(channel, "x" * 32)


async def test_login_is_broadcast_to_every_open_stream(
    hub_server: ServedHub, channel: grpc.aio.Channel
) -> None:
    hub = hub_server.hub
    streams = [(await joined(hub, channel, f"u{i}"))[1] for i in range(3)]
    token = await login(channel, "dave")
    assert token
    for stream in streams:
        event = await stream.skip_to(
            lambda e: kind(e) == "client_login" and e.client_login.name == "dave"
        )
        assert_recent(event[-1])


async def test_a_client_never_sees_its_own_login(
    hub_server: ServedHub, channel: grpc.aio.Channel
) -> None:
    # As in the reference: its stream opens after the broadcast.
    _, stream = await joined(hub_server.hub, channel, "alice")
    await stream.send("hello")
    assert await stream.next_message() == ("alice", "hello")


# -- Stream authentication -----------------------------------------------------


async def test_stream_without_token_header(channel: grpc.aio.Channel) -> None:
    ended = await Stream(channel, None).end()
    assert (ended.code, ended.details) == (Code.UNAUTHENTICATED, "missing token header")
    assert ended.events == []


@pytest.mark.parametrize("token", ["", "nope", "a.b.c", "e30.e30.e30"])
async def test_stream_with_unknown_token(channel: grpc.aio.Channel, token: str) -> None:
    ended = await Stream(channel, token).end()
    assert (ended.code, ended.details) == (Code.UNAUTHENTICATED, "invalid token")


# -- Messages ------------------------------------------------------------------


async def test_message_goes_to_every_stream_with_sender_name_and_timestamp(
    hub_server: ServedHub, channel: grpc.aio.Channel
) -> None:
    hub = hub_server.hub
    _, alice = await joined(hub, channel, "alice")
    _, bob = await joined(hub, channel, "bob")
    await alice.skip_to(lambda e: kind(e) == "client_login")  # bob's login
    await alice.send("hi bob")
    for stream in (alice, bob):
        event = await stream.next()
        assert kind(event) == "client_message"
        assert (event.client_message.name, event.client_message.message) == ("alice", "hi bob")
        assert_recent(event)


async def test_empty_message_is_broadcast_as_empty(
    hub_server: ServedHub, channel: grpc.aio.Channel
) -> None:
    hub = hub_server.hub
    _, alice = await joined(hub, channel, "alice")
    _, bob = await joined(hub, channel, "bob")
    await alice.skip_to(lambda e: kind(e) == "client_login")
    await alice.send("")
    for stream in (alice, bob):
        assert await stream.next_message() == ("alice", "")


async def test_unicode_and_tab_messages_pass_unchanged(
    hub_server: ServedHub, channel: grpc.aio.Channel
) -> None:
    _, alice = await joined(hub_server.hub, channel, "alice")
    text = "tab\there — ünïcødé 🙂 \u200d " + "é" * 2000
    assert len(text.encode()) <= 4096
    await alice.send(text)
    assert await alice.next_message() == ("alice", text)


async def test_message_exactly_at_the_limit_passes(
    hub_server: ServedHub, channel: grpc.aio.Channel
) -> None:
    _, alice = await joined(hub_server.hub, channel, "alice")
    await alice.send("m" * 4096)
    assert await alice.next_message() == ("alice", "m" * 4096)


async def test_broadcast_reaches_every_client_in_order_per_sender(
    hub_server: ServedHub, open_channel: OpenChannel
) -> None:
    hub = hub_server.hub
    count, per_client = 5, 20
    channels = [open_channel(hub_server.address) for _ in range(count)]
    streams = [(await joined(hub, ch, f"c{i}"))[1] for i, ch in enumerate(channels)]
    # Every stream has now seen the logins of the clients after it; start clean
    # by having each read up to a sentinel from the last client.
    await streams[-1].send("ready")
    for stream in streams:
        await stream.skip_to(is_message("ready"))

    async def send_all(i: int) -> None:
        for n in range(per_client):
            await streams[i].send(f"{i}:{n}")

    async def receive_all(stream: Stream) -> dict[str, list[int]]:
        seen: dict[str, list[int]] = {}
        for _ in range(count * per_client):
            name, text = await stream.next_message()
            sender, number = text.split(":")
            assert name == f"c{sender}"
            seen.setdefault(name, []).append(int(number))
        return seen

    receivers = [asyncio.create_task(receive_all(s)) for s in streams]
    await asyncio.gather(*(send_all(i) for i in range(count)))
    results = await asyncio.wait_for(asyncio.gather(*receivers), timeout(10))
    expected = {f"c{i}": list(range(per_client)) for i in range(count)}
    for seen in results:
        assert seen == expected


async def test_two_streams_on_one_token_both_get_everything(
    hub_server: ServedHub, channel: grpc.aio.Channel
) -> None:
    hub = hub_server.hub
    token, first = await joined(hub, channel, "alice")
    second = Stream(channel, token)
    await wait_subscribers(hub, 2)
    _, bob = await joined(hub, channel, "bob")
    for stream in (first, second):
        event = await stream.next()
        assert (kind(event), event.client_login.name) == ("client_login", "bob")
    await first.send("from first")
    await second.send("from second")
    await bob.send("from bob")
    expected = [("alice", "from first"), ("alice", "from second"), ("bob", "from bob")]
    for stream in (first, second, bob):
        got = [await stream.next_message() for _ in expected]
        # Sends from different streams race each other; each arrives exactly once.
        assert sorted(got) == sorted(expected)
    # Both streams stay healthy.
    await second.send("again")
    for stream in (first, second, bob):
        assert await stream.next_message() == ("alice", "again")


# -- Unknown fields ------------------------------------------------------------


def with_unknown_fields(message: bytes) -> bytes:
    # Field 15 as a varint (tag 0x78) and field 9 as a string (tag 0x4a).
    return message + b"\x78\x96\x01" + b"\x4a\x03abc"


async def test_unknown_fields_are_ignored(hub_server: ServedHub, channel: grpc.aio.Channel) -> None:
    hub = hub_server.hub
    _, observer = await joined(hub, channel, "observer")
    raw_login = channel.unary_unary("/chat.Chat/Login")
    request = chat_pb2.LoginRequest(name="alice", password=PASSWORD).SerializeToString()
    raw = await asyncio.wait_for(raw_login(with_unknown_fields(request)), timeout())
    token = chat_pb2.LoginResponse.FromString(raw).token
    assert token
    assert (await observer.next()).client_login.name == "alice"

    raw_stream = channel.stream_stream("/chat.Chat/Stream")
    call = raw_stream(metadata=(("x-chat-token", token),))
    await wait_subscribers(hub, 2)
    # StreamRequest has no field 1: the reference never defined it.
    request = b"\x0a\x05bogus" + chat_pb2.StreamRequest(message="hello").SerializeToString()
    await call.write(with_unknown_fields(request))
    response = await asyncio.wait_for(call.read(), timeout())
    event = Event.FromString(response)
    assert (event.client_message.name, event.client_message.message) == ("alice", "hello")
    assert await observer.next_message() == ("alice", "hello")
    call.cancel()

    raw_logout = channel.unary_unary("/chat.Chat/Logout")
    request = chat_pb2.LogoutRequest(token=token).SerializeToString()
    assert await asyncio.wait_for(raw_logout(with_unknown_fields(request)), timeout()) == b""
    assert (await observer.next()).client_logout.name == "alice"


# -- Logout --------------------------------------------------------------------


async def test_logout_with_unknown_token(channel: grpc.aio.Channel) -> None:
    for token in ("", "nope", "a.b.c"):
        error = await rpc_error(stub(channel).Logout(chat_pb2.LogoutRequest(token=token)))
        assert (error.code(), error.details()) == (Code.NOT_FOUND, "token not found")


async def test_logout_is_broadcast_and_revokes_the_token(
    hub_server: ServedHub, channel: grpc.aio.Channel
) -> None:
    hub = hub_server.hub
    _, observer = await joined(hub, channel, "observer")
    token, alice = await joined(hub, channel, "alice")
    second = Stream(channel, token)
    await wait_subscribers(hub, 3)
    assert (await observer.next()).client_login.name == "alice"

    await logout(channel, token)
    event = await observer.next()
    assert (kind(event), event.client_logout.name) == ("client_logout", "alice")
    assert_recent(event)
    # Revocation: the token's open streams end (cleanly, as the reference
    # client expects), and the token is refused from now on.
    for stream in (alice, second):
        ended = await stream.end()
        assert ended.code is Code.OK
        assert all(kind(e) != "client_message" for e in ended.events)
    again = await Stream(channel, token).end()
    assert (again.code, again.details) == (Code.UNAUTHENTICATED, "invalid token")
    error = await rpc_error(stub(channel).Logout(chat_pb2.LogoutRequest(token=token)))
    assert (error.code(), error.details()) == (Code.NOT_FOUND, "token not found")
    # Exactly one departure was announced.
    await observer.send("sentinel")
    assert await observer.next_message() == ("observer", "sentinel")
    assert len(hub.sessions) == 1


# -- Forged tokens ---------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def tamper_payload(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(unb64(payload))
    claims["sub"] = "mallory"
    return ".".join([header, b64(json.dumps(claims).encode()), signature])


def tamper_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(unb64(signature))
    raw[0] ^= 0x01
    return ".".join([header, payload, b64(bytes(raw))])


def other_secret(token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, b"another-secret-another-secret-0123456789", algorithm="HS256")


def alg_none(token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, None, algorithm="none")


def alg_none_with_signature(token: str) -> str:
    _, payload, signature = token.split(".")
    return ".".join([b64(b'{"alg":"none","typ":"JWT"}'), payload, signature])


@pytest.mark.parametrize(
    "forge", [tamper_payload, tamper_signature, other_secret, alg_none, alg_none_with_signature]
)
async def test_forged_tokens_are_refused(
    hub_server: ServedHub, channel: grpc.aio.Channel, forge: Callable[[str], str]
) -> None:
    hub = hub_server.hub
    token, alice = await joined(hub, channel, "alice")
    forged = forge(token)
    assert forged != token
    ended = await Stream(channel, forged).end()
    assert (ended.code, ended.details) == (Code.UNAUTHENTICATED, "invalid token")
    error = await rpc_error(stub(channel).Logout(chat_pb2.LogoutRequest(token=forged)))
    assert error.code() is Code.NOT_FOUND
    # The real token still works and its session was not touched.
    await alice.send("still here")
    assert await alice.next_message() == ("alice", "still here")


async def test_a_token_from_another_hub_is_refused(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    first = await serve_hub(settings(), **chat_only())
    second = await serve_hub(settings(), **chat_only())
    token = await login(open_channel(first.address), "alice")
    # Same secret, but the session lives only in the first hub.
    ended = await Stream(open_channel(second.address), token).end()
    assert (ended.code, ended.details) == (Code.UNAUTHENTICATED, "invalid token")


# -- Expiry ----------------------------------------------------------------------


# On a fake clock the grace is as long as in production; the test moves time on.
GRACE = ChatSettings().grace


async def test_expired_token_is_refused(serve_hub: ServeHub, open_channel: OpenChannel) -> None:
    clock = clock_from_now()
    served = await serve_hub(settings(token_ttl=60.0), clock=clock, **chat_only())
    channel = open_channel(served.address)
    token, alice = await joined(served.hub, channel, "alice")
    await alice.send("fresh")
    assert await alice.next_message() == ("alice", "fresh")
    clock.advance(62.0)
    ended = await Stream(channel, token).end()
    assert (ended.code, ended.details) == (Code.UNAUTHENTICATED, "token expired")
    error = await rpc_error(stub(channel).Logout(chat_pb2.LogoutRequest(token=token)))
    assert (error.code(), error.details()) == (Code.NOT_FOUND, "token not found")


async def test_session_ends_when_its_token_expires(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    # Every session expires, so the observer is an in-process subscriber of the room.
    clock = clock_from_now()
    served = await serve_hub(settings(token_ttl=60.0), clock=clock, **chat_only())
    hub = served.hub
    channel = open_channel(served.address)
    async with hub.subscribe("chat", maxlen=64, overflow=Overflow.DISCONNECT) as room:
        token, alice = await joined(hub, channel, "alice")
        clock.advance(62.0)  # the token's expiry, rounded up to a whole second
        ended = await alice.end(seconds=5)
        assert (ended.code, ended.details) == (Code.UNAUTHENTICATED, "token expired")
        left = await asyncio.wait_for(anext(room), timeout())
        assert isinstance(left.event, UserJoined)
        left = await asyncio.wait_for(anext(room), timeout())
        assert left.event == UserLeft("alice", left.event.session_id, LeaveReason.EXPIRED)
    refused = await Stream(channel, token).end()
    assert (refused.code, refused.details) == (Code.UNAUTHENTICATED, "token expired")


# -- Departure -------------------------------------------------------------------


async def graced_hub(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> tuple[FakeClock, Hub, grpc.aio.Channel, Stream]:
    """A chat hub whose grace runs on a fake clock, and an observer's open stream."""
    clock = clock_from_now()
    served = await serve_hub(settings(grace=GRACE), clock=clock, **chat_only())
    hub, channel = served.hub, open_channel(served.address)
    _, observer = await joined(hub, channel, "observer")
    return clock, hub, channel, observer


async def vanished(hub: Hub, channel: grpc.aio.Channel, observer: Stream) -> str:
    """alice logs in and streams (the observer sees her come), then her stream
    goes without a Logout; returns her token once the hub holds no stream of it,
    so that the grace runs from there."""
    token, alice = await joined(hub, channel, "alice")
    assert (await observer.next()).client_login.name == "alice"
    alice.cancel()  # no Logout
    await without_streams(hub, token)
    return token


async def test_a_client_that_vanishes_is_announced_gone_after_the_grace(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    clock, hub, channel, observer = await graced_hub(serve_hub, open_channel)
    token = await vanished(hub, channel, observer)
    clock.advance(GRACE)
    event = await observer.next()
    assert (kind(event), event.client_logout.name) == ("client_logout", "alice")
    assert_recent(event, clock.wall())
    ended = await Stream(channel, token).end()
    assert (ended.code, ended.details) == (Code.UNAUTHENTICATED, "invalid token")
    error = await rpc_error(stub(channel).Logout(chat_pb2.LogoutRequest(token=token)))
    assert error.code() is Code.NOT_FOUND


async def test_a_login_without_a_stream_is_gone_after_the_grace(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    clock, _, channel, observer = await graced_hub(serve_hub, open_channel)
    await login(channel, "ghost")
    assert (await observer.next()).client_login.name == "ghost"
    clock.advance(GRACE)
    event = await observer.next()
    assert (kind(event), event.client_logout.name) == ("client_logout", "ghost")


async def test_a_reconnect_within_the_grace_keeps_the_session(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    clock, hub, channel, observer = await graced_hub(serve_hub, open_channel)
    token = await vanished(hub, channel, observer)  # the old stream is gone: the grace runs
    clock.advance(GRACE - 1.0)
    again = Stream(channel, token)
    await wait_subscribers(hub, 2)
    await again.send("back")
    # The sentinel: the observer's next event is the message, no logout before it.
    assert await observer.next_message() == ("alice", "back")
    assert await again.next_message() == ("alice", "back")
    # Nothing at all happens when the grace would have run out, nor long after:
    # the next event is the next message (the sentinel), no logout before it.
    clock.advance(2 * GRACE)
    await again.send("still")
    assert await observer.next_message() == ("alice", "still")
    await logout(channel, token)
    event = await observer.next()
    assert (kind(event), event.client_logout.name) == ("client_logout", "alice")


# -- A stalled subscriber ------------------------------------------------------------


async def test_a_stalled_subscriber_is_cut_and_nobody_else_loses_anything(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    served = await serve_hub(settings(queue_max=16, rate_per_second=0), **chat_only())
    hub = served.hub
    total, batch, size = 2000, 8, 1000
    healthy = [await joined(hub, open_channel(served.address), f"h{i}") for i in range(2)]
    _, publisher = await joined(hub, open_channel(served.address), "publisher")
    # Its own channel, so its unread data cannot hold back anybody else's
    # connection, with the HTTP/2 window fixed at its 64 KiB default (no BDP
    # probing to grow it). It never reads: the server can only queue for it.
    stalled_channel = open_channel(served.address, options=[("grpc.http2.bdp_probe", 0)])
    stalled = Stream(stalled_channel, await login(stalled_channel, "stalled"))
    await wait_subscribers(hub, 4)
    readers = [stream for _, stream in healthy] + [publisher]
    for stream in readers:
        await stream.skip_to(
            lambda e: kind(e) == "client_login" and e.client_login.name == "stalled"
        )

    async def receive(stream: Stream, upto: int) -> None:
        for n in range(upto - batch, upto):
            name, text = await stream.next_message()
            assert (name, text[:8]) == ("publisher", f"{n:08d}")

    # Paced in batches the healthy readers confirm, so only the stalled one
    # can ever fall 16 events behind: 2 MB is far past any flow-control window.
    for start in range(0, total, batch):
        for n in range(start, start + batch):
            await publisher.send(f"{n:08d}".ljust(size, "x"))
        await asyncio.wait_for(
            asyncio.gather(*(receive(s, start + batch) for s in readers)), timeout()
        )
    assert hub.subscriber_count("chat") == 3  # the stalled one was cut
    # When it finally reads, it gets what was in flight, in order, then the verdict.
    ended = await stalled.end()
    assert (ended.code, ended.details) == (
        Code.RESOURCE_EXHAUSTED,
        "too slow: more than 16 events queued",
    )
    texts = [e.client_message.message[:8] for e in ended.events if kind(e) == "client_message"]
    assert texts == [f"{n:08d}" for n in range(len(texts))]
    assert len(texts) < total
    # The healthy ones are still fine.
    await publisher.send("after")
    for stream in readers:
        assert await stream.next_message() == ("publisher", "after")


# -- Refused lines end the sender's stream only ------------------------------------------


@pytest.mark.parametrize(
    ("text", "code", "details"),
    [
        ("m" * 4097, Code.INVALID_ARGUMENT, "message must be at most 4096 bytes"),
        ("m" * 5000, Code.INVALID_ARGUMENT, "message must be at most 4096 bytes"),
        ("é" * 2049, Code.INVALID_ARGUMENT, "message must be at most 4096 bytes"),
        ("\x1b[2J", Code.INVALID_ARGUMENT, "message must not contain control characters"),
        ("one\ntwo", Code.INVALID_ARGUMENT, "message must not contain control characters"),
        ("over\rwrite", Code.INVALID_ARGUMENT, "message must not contain control characters"),
        ("nul\x00", Code.INVALID_ARGUMENT, "message must not contain control characters"),
        ("m" * (65 * 1024), Code.RESOURCE_EXHAUSTED, None),
    ],
    ids=["4097-bytes", "5000-bytes", "multibyte", "escape", "newline", "cr", "nul", "65-KiB"],
)
async def test_a_refused_line_ends_only_the_senders_stream(
    hub_server: ServedHub,
    open_channel: OpenChannel,
    text: str,
    code: grpc.StatusCode,
    details: str | None,
) -> None:
    hub = hub_server.hub
    _, observer = await joined(hub, open_channel(hub_server.address), "observer")
    offender_channel = open_channel(hub_server.address)
    token, offender = await joined(hub, offender_channel, "offender")
    assert (await observer.next()).client_login.name == "offender"
    await offender.send("fine")
    assert await observer.next_message() == ("offender", "fine")
    await offender.send(text)
    ended = await offender.end()
    assert ended.code is code
    if details is not None:
        assert ended.details == details
    assert all(e.client_message.message != text for e in ended.events)
    # The session lives on: a new stream works, and the observer saw nothing
    # in between (no refused line, no logout, no error).
    again = Stream(offender_channel, token)
    await wait_subscribers(hub, 2)
    await again.send("after")
    assert await observer.next_message() == ("offender", "after")
    assert await again.next_message() == ("offender", "after")


async def test_an_oversize_login_is_refused_by_grpc(channel: grpc.aio.Channel) -> None:
    request = chat_pb2.LoginRequest(name="n" * (65 * 1024), password=PASSWORD)
    error = await rpc_error(stub(channel).Login(request))
    assert error.code() is Code.RESOURCE_EXHAUSTED


async def test_the_rate_limit_ends_the_flooders_stream_only(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    clock = clock_from_now()  # the bucket refills only when the test says so
    served = await serve_hub(settings(rate_per_second=5, rate_burst=5), clock=clock, **chat_only())
    hub = served.hub
    _, observer = await joined(hub, open_channel(served.address), "observer")
    flooder_channel = open_channel(served.address)
    token, flooder = await joined(hub, flooder_channel, "flooder")
    assert (await observer.next()).client_login.name == "flooder"
    for n in range(6):
        await flooder.send(f"flood {n}")
    ended = await flooder.end()
    assert (ended.code, ended.details) == (
        Code.RESOURCE_EXHAUSTED,
        "too many messages: at most 5 a second",
    )
    for n in range(5):
        assert await observer.next_message() == ("flooder", f"flood {n}")
    # The observer's own bucket is untouched, and it sees no sixth line.
    await observer.send("calm")
    assert await observer.next_message() == ("observer", "calm")
    # A second later the flooder may speak again, on a new stream.
    clock.advance(1.0)
    again = Stream(flooder_channel, token)
    await wait_subscribers(hub, 2)
    await again.send("sorry")
    assert await observer.next_message() == ("flooder", "sorry")


# -- Shutdown ----------------------------------------------------------------------


async def test_shutdown_reaches_every_stream_last_and_ends_them_ok(
    hub_server: ServedHub, open_channel: OpenChannel
) -> None:
    hub = hub_server.hub
    channel = open_channel(hub_server.address)
    streams = [(await joined(hub, channel, f"u{i}"))[1] for i in range(4)]
    token, late = await joined(hub, open_channel(hub_server.address), "late")
    await late.send("before")
    for stream in [*streams, late]:
        await stream.skip_to(is_message("before"))
    await hub.shutdown()
    # A line sent now, racing the shutdown, is refused without harm.
    await late.call.write(chat_pb2.StreamRequest(message="after"))
    for stream in [*streams, late]:
        ended = await stream.end()
        assert ended.code is Code.OK, ended.details
        assert [kind(e) for e in ended.events] == ["server_shutdown"]
        assert_recent(ended.events[-1])
    error = await rpc_error(stub(channel).Login(chat_pb2.LoginRequest(name="x", password=PASSWORD)))
    assert (error.code(), error.details()) == (Code.UNAVAILABLE, "the server is shutting down")
    refused = await Stream(channel, token).end()
    assert refused.code in (Code.UNAUTHENTICATED, Code.UNAVAILABLE)
    start = time.monotonic()
    await hub_server.server.stop(2.0)
    assert time.monotonic() - start < 1.0, "stop waited on a stream that had ended"


async def test_the_stop_sequence_ends_even_a_stream_that_never_reads(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    served = await serve_hub(settings(rate_per_second=0), **chat_only())
    hub = served.hub
    _, reader = await joined(hub, open_channel(served.address), "reader")
    # A 64 KiB window (no BDP growth) that this client never reads.
    stalled_channel = open_channel(served.address, options=[("grpc.http2.bdp_probe", 0)])
    stalled = Stream(stalled_channel, await login(stalled_channel, "stalled"))
    await wait_subscribers(hub, 2)
    assert (await reader.next()).client_login.name == "stalled"
    for n in range(100):  # far more than the window: the server is stuck writing
        await reader.send(f"{n:03d}".ljust(1000, "x"))
    for n in range(100):
        assert (await reader.next_message())[1].startswith(f"{n:03d}")
    start = time.monotonic()
    await asyncio.wait_for(served.stop(grace=0.5), timeout())
    assert time.monotonic() - start < 0.5 + timeout(1.0)
    ended = await reader.end()
    assert ended.code is Code.OK
    assert [kind(e) for e in ended.events] == ["server_shutdown"]
    cut = await stalled.end()
    assert cut.code is not Code.OK  # cancelled by the server's stop, after the grace


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_sigterm_stops_the_server_within_five_seconds(
    open_channel: OpenChannel, loop: str
) -> None:
    server = Proc(
        [*HUB, "-s", "-p", PASSWORD, "-h", "127.0.0.1:0", "--device-address", "none",
         "--stream-address", "none", "--rate", "0", "--loop", loop]
    )  # fmt: skip
    try:
        address = server.expect(r".* starting on (127\.0\.0\.1:\d+) .*", 10).group(1)
        reader_channel = open_channel(address)
        reader = Stream(reader_channel, await login(reader_channel, "reader"))
        await reader.send("ready")
        await reader.skip_to(is_message("ready"))
        # A 64 KiB window (no BDP growth) that this client never reads.
        channel = open_channel(address, options=[("grpc.http2.bdp_probe", 0)])
        stalled = Stream(channel, await login(channel, "stalled"))
        await stalled.send("here")  # read by the server only once its stream is subscribed
        await reader.skip_to(is_message("here"))
        # Fill the stalled stream's window so the server is stuck writing to it.
        for n in range(100):
            await reader.send(f"{n:03d}".ljust(1000, "x"))
        for n in range(100):
            assert (await reader.next_message())[1].startswith(f"{n:03d}")

        start = time.monotonic()
        server.signal(signal.SIGTERM)
        status = await asyncio.to_thread(server.popen.wait, 5.0)
        assert status == 0, server.lines
        assert time.monotonic() - start < 5.0
        ended = await reader.end()
        assert ended.code is Code.OK
        assert kind(ended.events[-1]) == "server_shutdown"
        server.wait()  # its output read to the end
        assert any("shutting down" in line for line in server.lines), server.lines
    finally:
        server.stop()


# -- Bidirectional-text controls: one rule for names and lines -----------------------

BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


async def test_bidi_controls_are_refused_in_names_and_lines_alike(
    hub_server: ServedHub, channel: grpc.aio.Channel
) -> None:
    hub = hub_server.hub
    token, _ = await joined(hub, channel, "alice")
    for char in BIDI_CONTROLS:
        reason = f"must not contain bidirectional-text controls (U+{ord(char):04X})"
        request = chat_pb2.LoginRequest(name=f"eve{char}lyn", password=PASSWORD)
        error = await rpc_error(stub(channel).Login(request))
        assert (error.code(), error.details()) == (Code.INVALID_ARGUMENT, f"username {reason}")
        line = Stream(channel, token)
        await line.send(f"reads {char}backwards")
        ended = await line.end()
        assert (ended.code, ended.details) == (Code.INVALID_ARGUMENT, f"message {reason}")
        assert all(kind(e) != "client_message" for e in ended.events)
    # Other format characters (a zero-width joiner in an emoji) still pass in lines.
    emoji = "👩\u200d💻"
    line = Stream(channel, token)
    await line.send(emoji)
    assert await line.next_message() == ("alice", emoji)


# -- Failed logins are throttled per peer address ------------------------------------


def throttled(rate: float = 0.5, burst: float = 3) -> Settings:
    return settings(login_failure_rate=rate, login_failure_burst=burst)


async def login_code(channel: grpc.aio.Channel, password: str) -> tuple[Code, str]:
    request = chat_pb2.LoginRequest(name="mallory", password=password)
    try:
        await asyncio.wait_for(stub(channel).Login(request), timeout())
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return Code.OK, ""


WRONG = (Code.UNAUTHENTICATED, "password is incorrect")


async def test_failed_logins_are_throttled_per_peer_address(
    serve_hub: ServeHub, open_channel: OpenChannel, caplog: pytest.LogCaptureFixture
) -> None:
    clock = clock_from_now()  # the budget refills only when the test says so
    served = await serve_hub(throttled(), clock=clock, **chat_only())
    guesser = open_channel(served.address)
    for _ in range(3):
        assert await login_code(guesser, "guess") == WRONG
    refused = (Code.RESOURCE_EXHAUSTED, "too many failed logins, retry in 2 s")
    assert await login_code(guesser, "guess") == refused
    # A new connection from the same address is the same peer; while it is
    # over, even the right password is refused (else a guess would show).
    assert await login_code(open_channel(served.address), PASSWORD) == refused

    # Another address is not held back: a relay connects from 127.0.0.2.
    relay = TcpRelay(served.address, source_host="127.0.0.2")
    try:
        elsewhere = open_channel(await relay.start())
        assert await login_code(elsewhere, PASSWORD) == (Code.OK, "")
        assert await login_code(elsewhere, "typo") == WRONG
    finally:
        await relay.abort()

    # One more try every 2 s.
    clock.advance(2.0)
    assert await login_code(guesser, "guess") == WRONG
    assert await login_code(guesser, "guess") == refused
    clock.advance(2.0)
    assert await login_code(guesser, PASSWORD) == (Code.OK, "")
    # The operator is told who is guessing (and never what).
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "127.0.0.1: too many failed logins, throttled" in warned
    assert not any("guess" in line for line in warned)


async def test_successful_logins_are_never_throttled(
    serve_hub: ServeHub, open_channel: OpenChannel
) -> None:
    served = await serve_hub(throttled(burst=3), clock=clock_from_now(), **chat_only())
    channel = open_channel(served.address)
    for round_ in range(20):
        if round_ % 10 == 0:
            assert await login_code(channel, "typo") == WRONG  # two mistakes in all
        assert await login_code(channel, PASSWORD) == (Code.OK, "")
