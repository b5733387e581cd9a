"""The hub's Rooms service (chat.proto): chat users watching and pressing rooms.

Watching is not presence: a watcher neither keeps a room's sound playing
nor shows up among its devices. A watch belongs to its token's session:
Logout or expiry ends it with UNAUTHENTICATED (hub.rpc.sessionbound).
"""

from __future__ import annotations

import logging

import grpc

from hub.core.events import RoomNotice
from hub.core.hub import Hub
from hub.core.publication import Publication
from hub.core.rooms import Room
from hub.core.roomstate import Input
from hub.core.sessions import Session
from hub.core.subscription import Overflow
from hub.errors import InvalidArgument, SlowConsumer
from hub.logs import set_context
from hub.metrics import ROOMS, Metrics
from hub.proto import chat_pb2
from hub.rpc.chat import session_of
from hub.rpc.methods import Methods, Responses
from hub.rpc.sessionbound import bound_to

log = logging.getLogger(__name__)

BUTTONS = {
    chat_pb2.PressRequest.MODE: Input.MODE,
    chat_pb2.PressRequest.PLAY: Input.PLAY,
    chat_pb2.PressRequest.STOP: Input.STOP,
}
# Notices are a few a second at most; a watcher this far behind is cut.
WATCH_QUEUE = 256


def describe(room: Room) -> str:
    return f"{room.state.value}, mode {room.mode + 1}: {room.title}, {room.everywhere} here"


def encode_notice(pub: Publication) -> bytes:
    notice: RoomNotice = pub.event
    event = chat_pb2.RoomEvent(room=notice.room, text=notice.text)
    event.timestamp.FromNanoseconds(int(pub.time * 1e9))
    return event.SerializeToString()


class RoomsService:
    def __init__(self, hub: Hub, metrics: Metrics | None = None) -> None:
        self._hub = hub
        self._metrics = metrics or Metrics()

    async def _session(self, context: grpc.aio.ServicerContext) -> Session:
        session = await session_of(self._hub, context, self._metrics, ROOMS)
        set_context(session=session.id, peer=context.peer())
        return session

    async def watch(
        self, request: chat_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> Responses:
        # A HubError raised here is the call's status (hub.rpc.methods).
        session = await self._session(context)
        room = await self._hub.rooms.open(request.room)
        log.info("%s: watching room %s", session.id, room.id)
        metrics = self._metrics
        latency = metrics.write_latency(ROOMS)
        async with self._hub.subscribe(
            room.status_channel,
            maxlen=WATCH_QUEUE,
            overflow=Overflow.DISCONNECT,
            label=f"{session.id} watching {room.id}",
        ) as updates:
            with bound_to(self._hub.sessions, session, updates), metrics.stream_open(ROOMS):
                now = Publication(
                    room.status_channel,
                    RoomNotice(room.id, describe(room)),
                    self._hub.clock.wall(),
                )
                yield now.encoded(encode_notice)
                try:
                    async for pub in updates:
                        if isinstance(pub.event, RoomNotice):
                            yield pub.encoded(encode_notice)
                            latency.written(pub.time)
                except SlowConsumer:
                    metrics.slow_consumer(ROOMS)
                    raise

    async def press(
        self, request: chat_pb2.PressRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        # A HubError raised here is the call's status (hub.rpc.methods).
        session = await self._session(context)
        room = await self._hub.rooms.open(request.room)
        given = BUTTONS.get(request.button)
        if given is None:
            raise InvalidArgument(f"unknown button {request.button}")
        log.info("%s: pressed %s in room %s", session.id, given.value, room.id)
        await room.press(given)
        return chat_pb2.PressResponse(state=describe(room)).SerializeToString()

    def handler(self) -> grpc.GenericRpcHandler:
        methods = Methods("chat.Rooms", self._hub.clock)
        methods.unary_stream("Watch", self.watch, chat_pb2.WatchRequest)
        methods.unary_unary("Press", self.press, chat_pb2.PressRequest)
        return methods.handler()
