"""Device rooms from the chat client: watch one, press its buttons.

Typed lines that are one of these commands go to the hub's ``chat.Rooms``
service (chat.proto) instead of the chat; every other line is a message, as
with the reference client. ``//text`` sends ``/text`` as a message.

    /watch ROOM   follow ROOM: its mode, play, stop, devices coming and going
    /unwatch      stop following
    /mode  /play  /stop   press that button in the room being watched
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from clients.py_cli.chat_client import TOKEN_HEADER, error_text
from hub.lines import CLIENT, Printer
from hub.proto import chat_pb2, chat_pb2_grpc

log = logging.getLogger(__name__)

BUTTONS = {
    "/mode": chat_pb2.PressRequest.MODE,
    "/play": chat_pb2.PressRequest.PLAY,
    "/stop": chat_pb2.PressRequest.STOP,
}
COMMANDS = {"/watch", "/unwatch", "/rooms", *BUTTONS}
HELP = "room commands: /watch ROOM, /unwatch, /mode, /play, /stop (//text sends /text)"


def room_label(room: str) -> str:
    return f"<<Room {room}>>"


class RoomControl:
    def __init__(self, channel: grpc.aio.Channel, token: str, printer: Printer) -> None:
        self._stub = chat_pb2_grpc.RoomsStub(channel)  # type: ignore[no-untyped-call]
        self._metadata = ((TOKEN_HEADER, token),)
        self._printer = printer
        self.room: str | None = None
        self._watching: asyncio.Task[None] | None = None

    @staticmethod
    def command(text: str) -> str | None:
        """The command a typed line is, or None for a chat message."""
        word = text.split(maxsplit=1)[0] if text.strip() else ""
        return word if word in COMMANDS else None

    async def run(self, text: str) -> None:
        word, _, rest = text.strip().partition(" ")
        try:
            if word == "/watch":
                await self.watch(rest.strip())
            elif word == "/unwatch":
                await self.unwatch()
            elif word == "/rooms":
                self._printer.line(CLIENT, HELP)
            else:
                await self.press(word)
        except grpc.aio.AioRpcError as error:
            self._printer.line(CLIENT, f"{word} failed: {error_text(error)}")

    async def watch(self, room: str) -> None:
        if not room:
            self._printer.line(CLIENT, "usage: /watch ROOM")
            return
        await self.unwatch()
        self.room = room
        self._watching = asyncio.create_task(self._follow(room), name=f"watch {room}")

    async def _follow(self, room: str) -> None:
        label = room_label(room)
        try:
            call = self._stub.Watch(chat_pb2.WatchRequest(room=room), metadata=self._metadata)
            async for event in call:
                when = event.timestamp.seconds + event.timestamp.nanos / 1e9
                self._printer.line(label, event.text, when)
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.CANCELLED:
                self._printer.line(CLIENT, f"stopped watching {room}: {error_text(error)}")

    async def unwatch(self) -> None:
        task, self._watching, self.room = self._watching, None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def press(self, word: str) -> None:
        if self.room is None:
            self._printer.line(CLIENT, f"{word}: watch a room first (/watch ROOM)")
            return
        request = chat_pb2.PressRequest(room=self.room, button=BUTTONS[word])
        await self._stub.Press(request, metadata=self._metadata, timeout=5)

    async def close(self) -> None:
        await self.unwatch()
