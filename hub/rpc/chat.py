"""The reference-compatible Chat service.

Responses are serialized once per event by ``encode_event`` and the same bytes
are written to every stream: the handlers are registered with no response
serializer, so gRPC sends the bytes they yield as they are.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator

import grpc

from hub.core.events import ServerShutdown, UserJoined, UserLeft, UserMessage
from hub.core.hub import Hub
from hub.core.publication import Publication
from hub.core.ratelimit import FailureThrottle, RateLimitedLog
from hub.core.sessions import Session
from hub.core.subscription import Subscription
from hub.errors import (
    HubError,
    MissingToken,
    RateLimited,
    ResourceExhausted,
    ShuttingDown,
    SlowConsumer,
    Unauthenticated,
)
from hub.logs import set_context
from hub.metrics import CHAT, Metrics, outcome_of
from hub.proto import chat_pb2
from hub.rpc.methods import Methods, Responses, consume
from hub.rpc.status import abort, metadata_value, peer_address

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-chat-token"


def encode_event(pub: Publication) -> bytes:
    """The chat wire form of a core event: one ``StreamResponse``."""
    response = chat_pb2.StreamResponse()
    response.timestamp.FromNanoseconds(int(pub.time * 1e9))
    event = pub.event
    if isinstance(event, UserMessage):
        response.client_message.name = event.name
        response.client_message.message = event.text
    elif isinstance(event, UserJoined):
        response.client_login.name = event.name
    elif isinstance(event, UserLeft):
        response.client_logout.name = event.name
    elif isinstance(event, ServerShutdown):
        response.server_shutdown.SetInParent()
    else:
        raise TypeError(f"no chat wire form for {event!r}")
    return response.SerializeToString()


async def token_session(
    hub: Hub, context: grpc.aio.ServicerContext, missing: str = "missing token header"
) -> Session:
    """The session of the token in the call's metadata (every door reads it
    here); ``missing`` is the refusal's text when there is none."""
    token = metadata_value(context, TOKEN_HEADER)
    if token is None:
        raise MissingToken(missing)
    return await hub.sessions.authenticate(token)


async def session_of(
    hub: Hub, context: grpc.aio.ServicerContext, metrics: Metrics, door: str
) -> Session:
    """The session of the call's token; a refusal is counted for ``door``, then raised."""
    try:
        return await token_session(hub, context)
    except HubError as error:
        metrics.refused(door, error)
        raise


class ChatService:
    def __init__(self, hub: Hub, metrics: Metrics | None = None) -> None:
        self._hub = hub
        self._metrics = metrics or Metrics()
        settings = hub.settings.chat
        self._failed_logins = FailureThrottle(
            settings.login_failure_rate,
            settings.login_failure_burst,
            settings.login_peers_max,
            hub.clock,
        )
        self._throttle_log = RateLimitedLog(log, hub.clock)

    async def login(
        self, request: chat_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        set_context(peer=context.peer())
        # A HubError raised here is the call's status (hub.rpc.methods).
        peer = peer_address(context.peer())
        wait = self._failed_logins.wait(peer)
        if wait > 0:
            # Before the password is checked: a throttled peer learns nothing.
            self._metrics.login("throttled")
            raise ResourceExhausted(f"too many failed logins, retry in {math.ceil(wait)} s")
        try:
            _, token = await self._hub.chat.login(request.name, request.password)
        except HubError as error:
            self._metrics.login(outcome_of(error))
            self._metrics.refused(CHAT, error)
            if isinstance(error, Unauthenticated) and self._failed_logins.failed(peer):
                self._throttle_log.warning("%s: too many failed logins, throttled", peer)
            raise
        self._metrics.login("ok")
        return chat_pb2.LoginResponse(token=token).SerializeToString()

    async def logout(
        self, request: chat_pb2.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        set_context(peer=context.peer())
        try:
            await self._hub.chat.logout(request.token)
        except HubError as error:
            self._metrics.logout(outcome_of(error))
            raise  # the call's status (hub.rpc.methods)
        self._metrics.logout("ok")
        return chat_pb2.LogoutResponse().SerializeToString()

    async def stream(
        self, requests: AsyncIterator[chat_pb2.StreamRequest], context: grpc.aio.ServicerContext
    ) -> Responses:
        metrics = self._metrics
        # A HubError raised here is the call's status (hub.rpc.methods).
        session = await session_of(self._hub, context, metrics, CHAT)
        set_context(session=session.id, peer=context.peer())
        log.debug("stream opened")
        if self._hub.closing:
            await abort(context, ShuttingDown())
        latency = metrics.write_latency(CHAT)
        with metrics.stream_open(CHAT):
            async with self._hub.chat.stream(session) as subscription:
                # Headers go out once the stream is subscribed: a client that waits
                # for them knows it will see every event from here on.
                await context.send_initial_metadata(())
                reader = asyncio.create_task(self._read(requests, session, subscription))
                try:
                    async for pub in subscription:
                        yield pub.encoded(encode_event)
                        latency.written(pub.time)
                except HubError as error:
                    if isinstance(error, SlowConsumer):
                        metrics.slow_consumer(CHAT)
                    await abort(context, error)
                finally:
                    reader.cancel()

    async def _read(
        self,
        requests: AsyncIterator[chat_pb2.StreamRequest],
        session: Session,
        subscription: Subscription,
    ) -> None:
        # A refused line ends this stream only, with the refusal as its status.
        async def say(request: chat_pb2.StreamRequest) -> None:
            try:
                await self._hub.chat.say(session, request.message)
            except RateLimited:
                self._metrics.rate_limited(CHAT)
                raise
            self._metrics.chat_line()

        await consume(requests, say, subscription, session.id)

    def handler(self) -> grpc.GenericRpcHandler:
        methods = Methods("chat.Chat", self._hub.clock)
        methods.unary_unary("Login", self.login, chat_pb2.LoginRequest)
        methods.unary_unary("Logout", self.logout, chat_pb2.LogoutRequest)
        methods.stream_stream("Stream", self.stream, chat_pb2.StreamRequest)
        return methods.handler()
