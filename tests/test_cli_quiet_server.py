"""The `hub` client against a server that sends a stream's headers late.

A grpc-go server (the reference server is one) sends a stream's response
headers only with its first message. A client that waits for them before it
says "connected to stream" and sends what is typed waits, while it is alone,
forever. The server here is a small grpc.aio chat server that does the same
(a grpc.aio handler that yields nothing sends no headers), and can hold a
Login unanswered. In each state the client must answer Ctrl-C, Ctrl-D and
SIGTERM within a second, on a terminal and in pipe mode.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import pytest
from cli_helpers import Proc, Procs, Terminal, timeout
from fake_serving import fed_queue

from hub.proto import chat_pb2, chat_pb2_grpc

T = TypeVar("T")

# "Within a second", as a bound for the whole way out: the key or signal, the
# client's lines, Logout, the process's exit.
ANSWER = 1.0


class QuietChatServer(chat_pb2_grpc.ChatServicer):
    """A chat server, on a thread of its own, that sends a stream's headers with its first event.

    Lines are echoed to every stream (the reference's one room). ``hold_login``
    leaves every Login unanswered.
    """

    def __init__(self, *, hold_login: bool = False) -> None:
        self.hold_login = hold_login
        self.logins: list[str] = []
        self.logouts: list[str] = []
        self.received: list[str] = []
        self._changed = threading.Condition()
        self._streams: set[asyncio.Queue[chat_pb2.StreamResponse]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: grpc.aio.Server | None = None
        self.port = self._run(self._start())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout(10))

    async def _start(self) -> int:
        self._server = grpc.aio.server()
        chat_pb2_grpc.add_ChatServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    def _note(self, record: Callable[[], None]) -> None:
        with self._changed:
            record()
            self._changed.notify_all()

    def wait_until(self, condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
        with self._changed:
            if not self._changed.wait_for(condition, timeout(seconds)):
                raise AssertionError(f"timed out waiting for the server to see {what}")

    async def Login(
        self, request: chat_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.LoginResponse:
        self._note(lambda: self.logins.append(request.name))
        if self.hold_login:
            await asyncio.Event().wait()  # until the caller gives up
        return chat_pb2.LoginResponse(token=f"token-of-{request.name}")

    async def Logout(
        self, request: chat_pb2.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.LogoutResponse:
        self._note(lambda: self.logouts.append(request.token))
        return chat_pb2.LogoutResponse()

    async def Stream(
        self, requests: AsyncIterator[chat_pb2.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.StreamResponse]:
        token = dict(context.invocation_metadata() or ()).get("x-chat-token", "")
        name = str(token).removeprefix("token-of-")
        async with fed_queue(self._streams, self._read(requests, name)) as queue:
            while True:
                # Nothing is yielded, so no headers are sent, until an event.
                yield await queue.get()

    async def _read(self, requests: AsyncIterator[chat_pb2.StreamRequest], name: str) -> None:
        async for request in requests:
            message = request.message
            self._note(lambda: self.received.append(message))  # noqa: B023 (called at once)
            event = chat_pb2.StreamResponse(
                client_message=chat_pb2.StreamResponse.Message(name=name, message=message)
            )
            for queue in self._streams:
                queue.put_nowait(event)

    def stop(self) -> None:
        if self._server is not None:
            self._run(self._server.stop(0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout(5))
        self._loop.close()


@pytest.fixture
def quiet() -> Iterator[QuietChatServer]:
    server = QuietChatServer()
    yield server
    server.stop()


@pytest.fixture
def holding() -> Iterator[QuietChatServer]:
    server = QuietChatServer(hold_login=True)
    yield server
    server.stop()


def test_the_client_is_connected_and_sends_at_once_while_alone(
    procs: Procs, quiet: QuietChatServer
) -> None:
    alice = procs.client(quiet.port, "alice")
    alice.expect_line("<<Client>>: connected to stream")
    alice.send("anyone here?")
    quiet.wait_until(lambda: quiet.received == ["anyone here?"], "the line")
    alice.expect_line("alice: anyone here?")  # the first event, and the headers with it
    alice.close_stdin()
    assert alice.wait() == 0
    assert quiet.logouts == ["token-of-alice"]
    assert alice.transcript() == [
        "[TIME] <<Client>>: logged in successfully",
        "[TIME] <<Client>>: connected to stream",
        "[TIME] alice: anyone here?",
        "[TIME] <<Client>>: logging out",
    ]


def test_a_terminal_client_sends_at_once_while_alone(procs: Procs, quiet: QuietChatServer) -> None:
    alice = procs.terminal(quiet.port, "alice")
    mark = alice.wait_for(r"<<Client>>: connected to stream")
    alice.type("anyone here?\r")
    quiet.wait_until(lambda: quiet.received == ["anyone here?"], "the line")
    alice.wait_for(r"alice: anyone here\?", mark)


# -- stopping, in every state --------------------------------------------------------

CANCELED = "<<Process>>: failed to login: rpc error: code = Canceled desc = context canceled"


def stop_terminal(terminal: Terminal, how: str) -> float:
    """Press or send ``how``; when."""
    started = time.monotonic()
    if how == "sigterm":
        terminal.signal(signal.SIGTERM)
    else:
        terminal.type({"ctrl-c": "\x03", "ctrl-d": "\x04"}[how])
    return started


@pytest.mark.parametrize("how", ["ctrl-c", "ctrl-d", "sigterm"])
def test_a_terminal_client_stops_at_once_while_logging_in(
    procs: Procs, holding: QuietChatServer, how: str
) -> None:
    alice = procs.terminal(holding.port, "alice")
    holding.wait_until(lambda: holding.logins == ["alice"], "the login")
    alice.wait_for(r">")  # the prompt is up while the login is pending
    started = stop_terminal(alice, how)
    assert alice.wait(ANSWER) == 1, alice.screen_text()
    assert time.monotonic() - started < timeout(ANSWER)
    alice.wait_for(rf"{CANCELED}\r?\n")
    assert "Traceback" not in alice.screen_text()


@pytest.mark.parametrize("how", ["ctrl-c", "ctrl-d", "sigterm"])
def test_a_terminal_client_stops_at_once_while_alone_on_the_stream(
    procs: Procs, quiet: QuietChatServer, how: str
) -> None:
    alice = procs.terminal(quiet.port, "alice")
    mark = alice.wait_for(r"<<Client>>: connected to stream")
    mark = alice.wait_for(r">", mark)
    started = stop_terminal(alice, how)
    assert alice.wait(ANSWER) == 0, alice.screen_text()
    assert time.monotonic() - started < timeout(ANSWER)
    alice.wait_for(r"<<Client>>: logging out", mark)
    assert quiet.logouts == ["token-of-alice"]
    assert "Traceback" not in alice.screen_text()


def stop_pipe(client: Proc, how: str) -> float:
    started = time.monotonic()
    if how == "end-of-input":
        client.close_stdin()
    else:
        client.signal({"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}[how])
    return started


# A pipe's end is no request to leave before the stream is open: the lines it
# carried are still to be sent (`printf 'hi\n' | hub ...`), and without -i
# `docker run` gives the client an empty standard input, so end of input
# while logging in is not among these.
@pytest.mark.parametrize("how", ["sigint", "sigterm"])
def test_a_piped_client_stops_at_once_while_logging_in(
    procs: Procs, holding: QuietChatServer, how: str
) -> None:
    alice = procs.client(holding.port, "alice")
    holding.wait_until(lambda: holding.logins == ["alice"], "the login")
    started = stop_pipe(alice, how)
    assert alice.wait(ANSWER) == 1
    assert time.monotonic() - started < timeout(ANSWER)
    assert alice.transcript() == [f"[TIME] {CANCELED}"]


@pytest.mark.parametrize("how", ["sigint", "sigterm", "end-of-input"])
def test_a_piped_client_stops_at_once_while_alone_on_the_stream(
    procs: Procs, quiet: QuietChatServer, how: str
) -> None:
    alice = procs.client(quiet.port, "alice")
    alice.expect_line("<<Client>>: connected to stream")
    started = stop_pipe(alice, how)
    assert alice.wait(ANSWER) == 0
    assert time.monotonic() - started < timeout(ANSWER)
    assert alice.transcript() == [
        "[TIME] <<Client>>: logged in successfully",
        "[TIME] <<Client>>: connected to stream",
        "[TIME] <<Client>>: logging out",
    ]
    assert quiet.logouts == ["token-of-alice"]
