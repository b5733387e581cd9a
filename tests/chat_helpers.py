"""A small test client for the Chat service, over a real grpc.aio channel.

Waits are bounded by ``asyncio.wait_for``; nothing here sleeps to synchronise,
except ``eventually``, which polls a condition the hub exposes until a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import grpc
import pytest
from waiting import scaled

from hub.core.chat import CHANNEL
from hub.core.hub import Hub
from hub.proto import chat_pb2, chat_pb2_grpc
from hub.rpc.chat import TOKEN_HEADER
from hub.rpc.server import GrpcServer
from hub.settings import Settings

Event: TypeAlias = chat_pb2.StreamResponse

PASSWORD = "super-secret"
SECRET = b"0123456789abcdef0123456789abcdef01234567"  # 40 bytes, as HUB_TOKEN_SECRET


def timeout(seconds: float = 5.0) -> float:
    """A sanity bound for one wait, scaled for slow machines."""
    return scaled(seconds)


# -- The log every hub test keeps clean ------------------------------------------------


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing a client or device does, right or wrong, may make the hub log an
    error; refusals are answers, not failures. Autouse wherever it is imported
    (a folder's conftest, or a test module). The hub's INFO lines are captured
    too, so their formatting runs."""
    caplog.set_level(logging.INFO, logger="hub")
    yield
    errors = [
        r
        for r in caplog.get_records("call")
        if r.levelno >= logging.ERROR and not grpc_loop_noise(r)
    ]
    assert not errors, [r.getMessage() for r in errors]


def grpc_loop_noise(record: logging.LogRecord) -> bool:
    # grpc.aio's one completion queue outlives each test's event loop: a late
    # completion for an earlier test's (closed) loop is logged on the current
    # one (grpc/grpc#34139, #36096). Not the hub's doing.
    return record.name == "asyncio" and "PollerCompletionQueue" in record.getMessage()


# -- What the conftest fixtures hand out --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServedHub:
    """A running hub and the gRPC server in front of it."""

    hub: Hub
    address: str
    server: GrpcServer

    def __iter__(self) -> Iterator[Hub | str]:
        # ``hub, address = served`` (the server is there for stop tests).
        yield self.hub
        yield self.address

    async def stop(self, grace: float = 2.0) -> None:
        """The App's stop sequence: the shutdown event to every stream, then the server."""
        await self.hub.shutdown()
        await self.server.stop(grace)


ServeHub = Callable[..., Awaitable[ServedHub]]


def settings_param(request: pytest.FixtureRequest, default: Callable[[], Settings]) -> Settings:
    """A settings fixture's value: the test's ``indirect`` parameter, or ``default()``."""
    param = getattr(request, "param", None)
    if param is None:
        return default()
    assert isinstance(param, Settings)
    return param


class OpenChannel(Protocol):
    def __call__(
        self, address: str, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.aio.Channel: ...


async def run_hub(stack: AsyncExitStack, hub: Hub) -> tuple[str, GrpcServer]:
    """Start ``hub`` and a GrpcServer on 127.0.0.1 port 0 until ``stack`` closes;
    the server's address and the server.

    Closing runs in reverse: the hub's shutdown first, which ends open streams,
    so that stopping the server never waits on them; then the server; then the hub.
    """
    await hub.start()
    stack.push_async_callback(hub.close)
    server = GrpcServer(hub, ["127.0.0.1:0"])
    (address,) = await server.start()
    stack.push_async_callback(server.stop, 0)
    stack.push_async_callback(hub.shutdown)
    return address, server


async def eventually(condition: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail after ``seconds`` (a sanity bound)."""
    deadline = time.monotonic() + timeout(seconds)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.005)


async def wait_subscribers(hub: Hub, count: int) -> None:
    """Until exactly ``count`` streams are subscribed to the chat room."""
    await eventually(lambda: hub.subscriber_count(CHANNEL) == count, f"{count} chat subscribers")


async def without_streams(hub: Hub, token: str) -> None:
    """Until the token's session holds no stream at ``hub``: its grace runs from here."""
    session = await hub.sessions.authenticate(token)
    await eventually(lambda: not session.streams, f"{session.name}'s streams closed")


def chat_stub(channel: grpc.aio.Channel) -> chat_pb2_grpc.ChatStub:
    return chat_pb2_grpc.ChatStub(channel)  # type: ignore[no-untyped-call]


async def login(channel: grpc.aio.Channel, name: str, password: str = PASSWORD) -> str:
    stub = chat_stub(channel)
    response = await asyncio.wait_for(
        stub.Login(chat_pb2.LoginRequest(name=name, password=password)), timeout()
    )
    assert response.token
    return str(response.token)


async def logout(channel: grpc.aio.Channel, token: str) -> None:
    stub = chat_stub(channel)
    await asyncio.wait_for(stub.Logout(chat_pb2.LogoutRequest(token=token)), timeout())


def watch_room(channel: grpc.aio.Channel, token: str, room: str) -> grpc.aio.UnaryStreamCall:
    """A Watch of ``room`` (the Rooms service) as ``token``'s session; not yet read."""
    stub = chat_pb2_grpc.RoomsStub(channel)  # type: ignore[no-untyped-call]
    call: grpc.aio.UnaryStreamCall = stub.Watch(
        chat_pb2.WatchRequest(room=room), metadata=((TOKEN_HEADER, token),)
    )
    return call


async def rpc_error(awaitable: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a call fails with; fails the test if it succeeds."""
    try:
        await asyncio.wait_for(awaitable, timeout())
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded")


@dataclass(frozen=True, slots=True)
class Ended:
    """How a stream ended: the events read before the end, and its status."""

    events: list[Event]
    code: grpc.StatusCode
    details: str


class Stream:
    """One ``Stream`` call: send lines, read events, see how it ended."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None) -> None:
        stub = chat_stub(channel)
        metadata = () if token is None else ((TOKEN_HEADER, token),)
        self.call = stub.Stream(metadata=metadata)

    async def send(self, text: str) -> None:
        await asyncio.wait_for(self.call.write(chat_pb2.StreamRequest(message=text)), timeout())

    async def next(self, seconds: float = 5.0) -> Event:
        """The next event; fails if the stream ends instead."""
        event = await asyncio.wait_for(self.call.read(), timeout(seconds))
        if event is grpc.aio.EOF:
            raise AssertionError("the stream ended")
        assert isinstance(event, Event)
        return event

    async def next_message(self) -> tuple[str, str]:
        """The next event, which must be a client_message: (name, message)."""
        event = await self.next()
        assert event.WhichOneof("event") == "client_message", event
        return event.client_message.name, event.client_message.message

    async def skip_to(self, predicate: Callable[[Event], bool]) -> list[Event]:
        """Read up to and including the first event matching; returns all read."""
        seen: list[Event] = []
        while True:
            seen.append(await self.next())
            if predicate(seen[-1]):
                return seen

    async def end(self, seconds: float = 5.0) -> Ended:
        """Read until the stream ends; every event read, then its status."""
        events: list[Event] = []

        async def drain() -> Ended:
            while True:
                try:
                    event = await self.call.read()
                except grpc.aio.AioRpcError as error:
                    return Ended(events, error.code(), error.details() or "")
                if event is grpc.aio.EOF:
                    return Ended(events, await self.call.code(), await self.call.details())
                events.append(event)

        return await asyncio.wait_for(drain(), timeout(seconds))

    def cancel(self) -> None:
        self.call.cancel()


def kind(event: Event) -> str:
    return str(event.WhichOneof("event"))


def is_message(text: str) -> Callable[[Event], bool]:
    return lambda event: kind(event) == "client_message" and event.client_message.message == text
