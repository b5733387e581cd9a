"""The terminal chat client: the reference client's lines, behaviour and exit status.

``run_client`` takes input from the start, dials, logs in and starts the
stream, printing ``connected to stream`` at once (as the reference does: a
server need not send a stream's headers before its first event); ``converse``
then prints the room's events while sending every typed line, until one of:

- end of input (Ctrl-D, end of a pipe), Ctrl-C, SIGINT or SIGTERM: it prints
  ``logging out``, logs out and exits 0;
- the server's shutdown event: it prints ``the server is shutting down`` and
  ``logging out`` and exits 0 without calling Logout (the server is going);
- the stream failing with a status: ``logging out``, Logout, then one
  ``<<Process>>: stream error: rpc error: ...`` line and exit 1.

A typed line the server would refuse (a control character, too long: the
server's own check at its default bounds) is not sent; one line says why, and
the session goes on. The rest are paced to the server's default rate limit, so
a paste longer than its burst is sent whole rather than cut off. Whatever was
typed but not sent when the session ends is shown (``not sent: ...``).

The protocol is ``ChatClient``'s; where lines come from is ``terminal``'s;
how they go out is ``outbox``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeAlias

import grpc

from clients.py_cli.chat_client import ChatClient, ConnectTimeout, error_text, rpc_error_text
from clients.py_cli.outbox import OUTBOX_MAX, PACE_BURST, PACE_RATE, Outbox, Pacer
from clients.py_cli.rooms import RoomControl
from clients.py_cli.terminal import (
    Interrupted,
    LineSource,
    PipeLines,
    interactive,
    is_interactive,
    stop_signals,
    unless_stopped,
)
from hub.lines import CLIENT, PROCESS, SERVER, Printer
from hub.proto import chat_pb2

log = logging.getLogger(__name__)

# On the way out, how long to wait for the room to echo the last lines sent
# (so that `printf 'hi\n' | hub -n alice` says "hi" before it logs out).
FLUSH_TIMEOUT = 2.0
# On the way out, unsent lines are shown one by one up to this many.
UNSENT_SHOWN = 5


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


async def stop_reading(reading: asyncio.Task[None], outbox: Outbox, printer: Printer) -> None:
    """Stop taking input, and show what was typed but never sent."""
    unsent = outbox.unsent()  # before the prompt goes, with what it holds
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    for text in unsent[:UNSENT_SHOWN]:
        printer.line(CLIENT, f"not sent: {text}")
    if len(unsent) > UNSENT_SHOWN:
        printer.line(CLIENT, f"not sent: {len(unsent) - UNSENT_SHOWN} more lines")


async def converse(
    client: ChatClient,
    printer: Printer,
    outbox: Outbox,
    reading: asyncio.Task[None],
    signalled: asyncio.Event,
    rooms: RoomControl,
) -> int:
    """Print the room and send typed lines until the conversation ends; the exit status.

    ``signalled`` is set by SIGINT, SIGTERM or Ctrl-C (maybe already): leave
    at once, saying what was not sent.
    """
    receiving = asyncio.create_task(receive(client, printer), name="receive")
    delivering = asyncio.create_task(outbox.deliver(client, rooms), name="deliver")
    waiting = asyncio.create_task(signalled.wait(), name="signals")
    pending: set[asyncio.Task[Any]] = {receiving, delivering, waiting}
    ending: Ending | None = None
    while ending is None:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if receiving in done:
            ending = receiving.result()
        elif waiting in done:
            ending = Outcome.QUIT
        elif delivering in done and delivering.result():
            ending = Outcome.QUIT  # all typed was sent: leave as on Ctrl-D
        # The stream is gone when a line could not be sent: the receiver says why.
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
    for task in (delivering, receiving, waiting):
        task.cancel()
    await asyncio.gather(delivering, receiving, waiting, return_exceptions=True)
    await stop_reading(reading, outbox, printer)
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


async def log_in(
    client: ChatClient, args: argparse.Namespace, stops: Sequence[asyncio.Event]
) -> str | None:
    """Dial and log in; None, or the line that says why not.

    Being stopped meanwhile ends the process as the reference's cancelled
    context does: one line, status 1.
    """
    try:
        await unless_stopped(client.connect(), stops)
    except ConnectTimeout:
        return "unable to connect: context deadline exceeded"
    except Interrupted:
        return "unable to connect: context canceled"
    try:
        await unless_stopped(client.login(args.name, args.password), stops)
    except grpc.aio.AioRpcError as error:
        return f"failed to login: {error_text(error)}"
    except Interrupted:
        return f"failed to login: {rpc_error_text(grpc.StatusCode.CANCELLED, 'context canceled')}"
    return None


async def run_session(
    client: ChatClient,
    args: argparse.Namespace,
    printer: Printer,
    source: LineSource,
    signalled: asyncio.Event,
    *,
    terminal: bool,
) -> int:
    """From the first keystroke to the exit status.

    Input is taken from the start: what is typed while logging in is sent
    once the stream is open. Before then, Ctrl-D at a terminal means leave;
    a pipe's end means only that the lines before it are all there is.
    """
    # Typed lines are never held back from the queue, so the prompt stays up
    # (and reads Ctrl-C) while a long paste is sent.
    outbox = Outbox(
        source, printer, Pacer(PACE_RATE, PACE_BURST), limit=0 if terminal else OUTBOX_MAX
    )
    reading = asyncio.create_task(outbox.take_input(), name="read")
    try:
        stops = (signalled, outbox.input_ended) if terminal else (signalled,)
        failure = await log_in(client, args, stops)
        if failure is not None:
            await stop_reading(reading, outbox, printer)
            printer.line(PROCESS, failure)
            return 1
        printer.line(CLIENT, "logged in successfully")
        client.open_stream()
        printer.line(CLIENT, "connected to stream")
        rooms = RoomControl(client.channel, client.token, printer)
        if args.room:
            await rooms.watch(args.room)
        return await converse(client, printer, outbox, reading, signalled, rooms)
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


async def chat(args: argparse.Namespace, printer: Printer) -> int:
    client = ChatClient(args.host)
    signalled = asyncio.Event()
    try:
        with stop_signals(signalled):
            if is_interactive():
                with interactive(printer.color, on_interrupt=signalled.set) as (prompt, screen):
                    return await run_session(client, args, screen, prompt, signalled, terminal=True)
            return await run_session(client, args, printer, PipeLines(), signalled, terminal=False)
    finally:
        await client.close()


def run_client(args: argparse.Namespace, printer: Printer) -> int:
    """The client mode of ``hub``: returns the exit status."""
    try:
        return asyncio.run(chat(args, printer))
    except KeyboardInterrupt:  # a signal before the handlers were in place
        return 130
