"""The terminal chat client: the reference client's lines, behaviour and exit status.

``run_client`` dials, logs in and opens the stream; ``converse`` then prints
the room's events while sending every typed line, until one of:

- end of input (Ctrl-D, end of a pipe), Ctrl-C, SIGINT or SIGTERM: it prints
  ``logging out``, logs out and exits 0;
- the server's shutdown event: it prints ``the server is shutting down`` and
  ``logging out`` and exits 0 without calling Logout (the server is going);
- the stream failing with a status: ``logging out``, Logout, then one
  ``<<Process>>: stream error: rpc error: ...`` line and exit 1.

The protocol is ``ChatClient``'s; where lines come from is ``terminal``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import logging
from collections.abc import Awaitable
from typing import Any, NamedTuple, TypeAlias, TypeVar

import grpc

from clients.py_cli.chat_client import (
    ChatClient,
    ConnectTimeout,
    StreamEnded,
    error_text,
    rpc_error_text,
)
from clients.py_cli.rooms import RoomControl
from clients.py_cli.terminal import (
    LineSource,
    PipeLines,
    interactive,
    is_interactive,
    stop_signals,
)
from hub.lines import CLIENT, PROCESS, SERVER, Printer
from hub.proto import chat_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

# On the way out, how long to wait for the room to echo the last lines sent
# (so that `printf 'hi\n' | hub -n alice` says "hi" before it logs out).
FLUSH_TIMEOUT = 2.0


class Line(NamedTuple):
    """One printed line: ``Printer.line(*line)``."""

    who: str
    text: str
    when: float | None  # the server's time of the event; None for now


def event_line(response: chat_pb2.StreamResponse) -> Line | None:
    """The line the reference prints for a stream event; None for unknown events.

    Names and messages are passed on as they came: ``Printer`` shows them
    literally (no markup, control characters made visible).
    """
    stamp = response.timestamp
    when = stamp.seconds + stamp.nanos / 1e9 if response.HasField("timestamp") else None
    kind = response.WhichOneof("event")
    if kind == "client_login":
        return Line(SERVER, f"{response.client_login.name} has logged in", when)
    if kind == "client_logout":
        return Line(SERVER, f"{response.client_logout.name} has logged out", when)
    if kind == "client_message":
        return Line(response.client_message.name, response.client_message.message, when)
    if kind == "server_shutdown":
        return Line(SERVER, "the server is shutting down", when)
    return None  # an event a newer server added: not ours to show


class Outcome(enum.Enum):
    QUIT = "quit"  # end of input, Ctrl-C or a signal
    SHUTDOWN = "shutdown"  # the server announced its shutdown
    CLOSED = "closed"  # the server ended the stream without a word


Ending: TypeAlias = Outcome | grpc.aio.AioRpcError


async def receive(client: ChatClient, printer: Printer) -> Ending:
    try:
        async for response in client.events():
            line = event_line(response)
            if line is None:
                log.debug("ignoring an unknown event: %s", response.WhichOneof("event"))
                continue
            printer.line(*line)
            if response.WhichOneof("event") == "server_shutdown":
                return Outcome.SHUTDOWN
    except grpc.aio.AioRpcError as error:
        return error
    log.debug("stream closed by server")
    return Outcome.CLOSED


async def type_lines(
    client: ChatClient, source: LineSource, rooms: RoomControl | None = None
) -> Ending | None:
    """Send every line read; QUIT at the end of input, None if the stream is gone.

    Lines that are room commands (clients/py_cli/rooms.py) go to the room;
    ``//command`` sends ``/command`` as a message.
    """
    while (text := await source.read()) is not None:
        if rooms is not None and RoomControl.command(text):
            await rooms.run(text)
            continue
        if text.startswith("//") and RoomControl.command(text[1:]):
            text = text[1:]
        try:
            await client.send(text)
        except (StreamEnded, grpc.RpcError, asyncio.InvalidStateError) as error:
            # The stream has ended; the receiver reports why.
            log.debug("failed to send message: %s", error)
            return None
    return Outcome.QUIT


class Interrupted(Exception):
    """SIGINT or SIGTERM came before the stream was open."""


async def unless_signalled(awaitable: Awaitable[T], signalled: asyncio.Event) -> T:
    """``await awaitable``, or cancel it and raise ``Interrupted`` on a signal."""
    task = asyncio.ensure_future(awaitable)
    waiting = asyncio.create_task(signalled.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Interrupted
    return task.result()


async def converse(
    client: ChatClient,
    printer: Printer,
    source: LineSource,
    signalled: asyncio.Event,
    rooms: RoomControl | None = None,
) -> int:
    """Print the room and send typed lines until the conversation ends; the exit status.

    ``signalled`` is set by SIGINT or SIGTERM (maybe already): leave as on Ctrl-D.
    """
    receiving = asyncio.create_task(receive(client, printer), name="receive")
    typing = asyncio.create_task(type_lines(client, source, rooms), name="type")
    waiting = asyncio.create_task(signalled.wait(), name="signals")
    pending: set[asyncio.Task[Any]] = {receiving, typing, waiting}
    ending: Ending | None = None
    while ending is None:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if receiving in done:
            ending = receiving.result()
        elif waiting in done:
            ending = Outcome.QUIT
        elif typing in done:
            ending = typing.result()  # None: wait for the receiver's reason
    if ending is Outcome.QUIT and not receiving.done():
        # Leaving on purpose: let the last lines typed reach the room first.
        flushed = asyncio.create_task(client.flush())
        await asyncio.wait(
            {flushed, receiving, waiting},
            timeout=FLUSH_TIMEOUT,
            return_when=asyncio.FIRST_COMPLETED,
        )
        flushed.cancel()
        if receiving.done():
            # The room answered the last lines with a refusal, or stopped.
            ending = receiving.result()
    for task in (typing, receiving, waiting):
        task.cancel()
    await asyncio.gather(typing, receiving, waiting, return_exceptions=True)
    if rooms is not None:
        await rooms.close()
    client.close_stream()

    printer.line(CLIENT, "logging out")
    if ending is not Outcome.SHUTDOWN:
        try:
            await client.logout()
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNAVAILABLE:
                log.debug("unable to logout (connection already closed)")
            else:
                printer.line(CLIENT, f"failed to log out: {error_text(error)}")
    if isinstance(ending, grpc.aio.AioRpcError):
        printer.line(PROCESS, f"stream error: {error_text(ending)}")
        return 1
    return 0


async def chat(args: argparse.Namespace, printer: Printer) -> int:
    client = ChatClient(args.host)
    signalled = asyncio.Event()
    try:
        with stop_signals(signalled):
            # A signal before the stream is open ends the process as the
            # reference's cancelled context does: one line, status 1.
            try:
                await unless_signalled(client.connect(), signalled)
            except ConnectTimeout:
                printer.line(PROCESS, "unable to connect: context deadline exceeded")
                return 1
            except Interrupted:
                printer.line(PROCESS, "unable to connect: context canceled")
                return 1
            try:
                await unless_signalled(client.login(args.name, args.password), signalled)
            except grpc.aio.AioRpcError as error:
                printer.line(PROCESS, f"failed to login: {error_text(error)}")
                return 1
            except Interrupted:
                canceled = rpc_error_text(grpc.StatusCode.CANCELLED, "context canceled")
                printer.line(PROCESS, f"failed to login: {canceled}")
                return 1
            printer.line(CLIENT, "logged in successfully")
            await client.open_stream()
            printer.line(CLIENT, "connected to stream")
            if is_interactive():
                with interactive(printer.color) as (prompt, screen):
                    rooms = RoomControl(client.channel, client.token, screen)
                    if args.room:
                        await rooms.watch(args.room)
                    return await converse(client, screen, prompt, signalled, rooms)
            rooms = RoomControl(client.channel, client.token, printer)
            if args.room:
                await rooms.watch(args.room)
            return await converse(client, printer, PipeLines(), signalled, rooms)
    finally:
        await client.close()


def run_client(args: argparse.Namespace, printer: Printer) -> int:
    """The client mode of ``hub``: returns the exit status."""
    try:
        return asyncio.run(chat(args, printer))
    except KeyboardInterrupt:  # a signal before the handlers were in place
        return 130
