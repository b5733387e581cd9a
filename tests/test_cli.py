"""The `hub` command line against the reference's contract: real processes, real gRPC.

A server and its clients run as subprocesses on 127.0.0.1; their standard
error is compared with the lines the reference prints (times and session ids
normalized). Every wait is for a line, with a deadline; nothing sleeps to
synchronise. The client's pure parts (event → line, Go-style error text, the
printer's handling of hostile text) are unit tested at the end.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import grpc
import pytest
from chat_helpers import wait_subscribers
from cli_helpers import PASSWORD, SESSION, TIME, Procs, free_port, timeout

from clients.py_cli.chat import Line, event_line
from clients.py_cli.chat_client import ChatClient, error_text, rpc_error_text
from hub.lines import SERVER, Printer
from hub.proto import chat_pb2, chat_pb2_grpc

# -- the reference's session, line by line ------------------------------------


def test_two_clients_and_a_server_print_the_reference_lines(procs: Procs) -> None:
    server, port = procs.server()

    alice = procs.client(port, "alice")
    alice.join("alice")
    alice_login = server.expect(rf"{TIME} <<Server>>: ({SESSION}) \(alice\) has logged in")

    bob = procs.client(port, "bob")
    bob.join("bob")
    bob_login = server.expect(rf"{TIME} <<Server>>: ({SESSION}) \(bob\) has logged in")
    alice.expect_line("<<Server>>: bob has logged in")
    alice.expect_line("bob: bob is here")

    alice.send("hi")
    alice.expect_line("alice: hi")
    bob.expect_line("alice: hi")

    bob.send("")  # an empty line is an empty message
    bob.expect_line("bob: ")
    alice.expect_line("bob: ")

    bob.close_stdin()  # Ctrl-D
    assert bob.wait() == 0
    alice.expect_line("<<Server>>: bob has logged out")
    bob_logout = server.expect(rf"{TIME} <<Server>>: ({SESSION}) \(bob\) has logged out")
    assert bob_logout[1] == bob_login[1] != alice_login[1]

    started = time.monotonic()
    server.signal(signal.SIGINT)
    assert alice.wait() == 0
    assert server.wait(5) == 0
    assert time.monotonic() - started < timeout(5)

    assert server.transcript() == [
        f'[TIME] <<Server>>: starting on 127.0.0.1:{port} with password "{PASSWORD}"',
        f"[TIME] <<Server>>: serving chat, rooms and devices (gRPC) on 127.0.0.1:{port}",
        "[TIME] <<Server>>: SESSION (alice) has logged in",
        "[TIME] <<Server>>: SESSION (bob) has logged in",
        "[TIME] <<Server>>: SESSION (bob) has logged out",
        "[TIME] <<Server>>: shutting down",
    ]
    assert alice.transcript() == [
        "[TIME] <<Client>>: logged in successfully",
        "[TIME] <<Client>>: connected to stream",
        "[TIME] alice: alice is here",
        "[TIME] <<Server>>: bob has logged in",
        "[TIME] bob: bob is here",
        "[TIME] alice: hi",
        "[TIME] bob: ",
        "[TIME] <<Server>>: bob has logged out",
        "[TIME] <<Server>>: the server is shutting down",
        "[TIME] <<Client>>: logging out",
    ]
    assert bob.transcript() == [
        "[TIME] <<Client>>: logged in successfully",
        "[TIME] <<Client>>: connected to stream",
        "[TIME] bob: bob is here",
        "[TIME] alice: hi",
        "[TIME] bob: ",
        "[TIME] <<Client>>: logging out",
    ]
    for proc in (server, alice, bob):
        assert proc.stdout == b"", "everything goes to standard error"
        assert all(re.match(rf"{TIME} ", line) for line in proc.lines)


def test_lines_piped_then_end_of_input_are_delivered_before_logout(procs: Procs) -> None:
    _, port = procs.server()
    watcher = procs.client(port, "watcher")
    watcher.join("watcher")

    writer = procs.client(port, "writer")
    for line in ("one", "two", "three"):
        writer.send(line)
    writer.close_stdin()  # at once: `printf 'one\ntwo\nthree\n' | hub ...`
    assert writer.wait() == 0

    watcher.expect_line("<<Server>>: writer has logged in")
    for line in ("one", "two", "three"):
        watcher.expect_line(f"writer: {line}")
    watcher.expect_line("<<Server>>: writer has logged out")
    assert writer.transcript()[-1] == "[TIME] <<Client>>: logging out"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_logs_the_client_out(procs: Procs, signum: int) -> None:
    server, port = procs.server()
    client = procs.client(port, "carol")
    client.expect_line("<<Client>>: connected to stream")
    client.signal(signum)
    assert client.wait() == 0
    server.expect(rf"{TIME} <<Server>>: {SESSION} \(carol\) has logged out")
    assert client.transcript()[-1] == "[TIME] <<Client>>: logging out"


# -- failures: one <<Process>> line and exit status 1 ----------------------------


@pytest.mark.parametrize(
    ("name", "password", "error"),
    [
        ("alice", "wrong", "code = Unauthenticated desc = password is incorrect"),
        ("", PASSWORD, "code = InvalidArgument desc = username is required"),
    ],
    ids=["wrong-password", "empty-name"],
)
def test_a_refused_login_prints_the_go_error(
    procs: Procs, name: str, password: str, error: str
) -> None:
    _, port = procs.server()
    client = procs.client(port, name, password)
    assert client.wait() == 1
    assert client.transcript() == [f"[TIME] <<Process>>: failed to login: rpc error: {error}"]


def test_the_login_throttle_is_set_by_flags(procs: Procs) -> None:
    _, port = procs.server(
        "-s", "-p", PASSWORD, "-h", "127.0.0.1:0", "--device-address", "none",
        "--stream-address", "none", "--login-failure-burst", "1", "--login-failure-rate", "0.25",
    )  # fmt: skip
    first = procs.client(port, "mallory", "guess")
    assert first.wait() == 1
    second = procs.client(port, "mallory", "guess")
    assert second.wait() == 1
    # A 4 s wait, less what passed between the two (ceiled): timing-free.
    (line,) = second.transcript()
    assert re.fullmatch(
        r"\[TIME\] <<Process>>: failed to login: rpc error: code = ResourceExhausted "
        r"desc = too many failed logins, retry in [1-4] s",
        line,
    ), line


def test_no_server_is_a_dial_timeout(procs: Procs) -> None:
    started = time.monotonic()
    client = procs.client(free_port(), "alice")
    assert client.wait() == 1
    assert client.transcript() == [
        "[TIME] <<Process>>: unable to connect: context deadline exceeded"
    ]
    assert time.monotonic() - started < timeout(5)


@pytest.mark.parametrize("door", ["chat", "stream"])
def test_a_server_that_cannot_bind_says_so(procs: Procs, door: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chat = f"127.0.0.1:{port}" if door == "chat" else "127.0.0.1:0"
        stream = f"127.0.0.1:{port}" if door == "stream" else "none"
        server = procs.start(
            "-s", "-p", PASSWORD, "-h", chat, "--device-address", "none",
            "--stream-address", stream,
        )  # fmt: skip
        assert server.wait() == 1
    assert len(server.lines) == 1, server.lines
    line = server.lines[0]
    assert re.fullmatch(rf"{TIME} <<Process>>: server unable to bind on provided host: .+", line)


def test_importing_the_command_line_leaves_the_environment_alone() -> None:
    """GRPC_VERBOSITY is the entry point's to set (hub/__main__.py), which the
    test above holds to its effect; importing hub.cli sets nothing."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    probe = "import os, hub.cli; print(os.environ.get('GRPC_VERBOSITY'))"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout == "None\n"


@pytest.mark.parametrize(
    ("server_args", "lines", "error"),
    [
        (
            # Within the default bounds, which the client checks itself; not
            # within this server's.
            ("--max-message-bytes", "100"),
            ["x" * 200],
            "code = InvalidArgument desc = message must be at most 100 bytes",
        ),
        (
            ("--rate", "1", "--burst", "2"),
            [f"line {n}" for n in range(10)],
            "code = ResourceExhausted desc = too many messages: at most 1 a second",
        ),
    ],
    ids=["message-too-long", "rate-limited"],
)
def test_a_stream_ended_by_the_server_is_a_stream_error(
    procs: Procs, server_args: tuple[str, ...], lines: list[str], error: str
) -> None:
    args = (
        "-s", "-p", PASSWORD, "-h", "127.0.0.1:0", "--device-address", "none",
        "--stream-address", "none", *server_args,
    )  # fmt: skip
    server, port = procs.server(*args)
    client = procs.client(port, "flood")
    client.expect_line("<<Client>>: connected to stream")
    for line in lines:
        client.send(line)
    assert client.wait() == 1
    assert client.transcript()[-2:] == [
        "[TIME] <<Client>>: logging out",
        f"[TIME] <<Process>>: stream error: rpc error: {error}",
    ]
    server.expect(rf"{TIME} <<Server>>: {SESSION} \(flood\) has logged out")


# -- untrusted text -------------------------------------------------------------


def test_names_and_messages_from_peers_are_shown_literally(procs: Procs) -> None:
    _, port = procs.server()
    alice = procs.client(port, "alice")
    alice.join("alice")

    # A raw gRPC client: the server accepts markup and format characters
    # (it refuses control characters, see the unit test below for those).
    name = "[bold]x[/bold]"
    message = "[red]hi[/red] evil\u200b é"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        token = stub.Login(chat_pb2.LoginRequest(password=PASSWORD, name=name), timeout=5).token
        responses = stub.Stream(
            iter([chat_pb2.StreamRequest(message=message)]),
            metadata=[("x-chat-token", token)],
            timeout=timeout(10),
        )
        echo = next(responses)  # delivered to the room: it came back
        assert echo.client_message.message == message
        responses.cancel()
        stub.Logout(chat_pb2.LogoutRequest(token=token), timeout=5)

    alice.expect_line("<<Server>>: [bold]x[/bold] has logged out")
    assert alice.transcript()[3:] == [
        "[TIME] <<Server>>: [bold]x[/bold] has logged in",
        "[TIME] [bold]x[/bold]: [red]hi[/red] evil\\u200b é",
        "[TIME] <<Server>>: [bold]x[/bold] has logged out",
    ]


# -- an interactive terminal ------------------------------------------------------


def test_a_half_typed_line_survives_incoming_messages(procs: Procs) -> None:
    _, port = procs.server()
    bob = procs.client(port, "bob")
    bob.join("bob")

    alice = procs.terminal(port, "alice")
    mark = alice.wait_for(r"<<Client>>: connected to stream")
    mark = alice.wait_for(r"\n>", mark)  # the prompt is up
    assert b"\x1b[" in alice.output  # a terminal gets colour
    alice.type("here\r")
    mark = alice.wait_for(r"alice: here", mark)  # in the room

    alice.type("half")
    mark = alice.wait_for(r"half", mark)
    bob.send("ping")
    mark = alice.wait_for(r"\d\d [AP]M\] bob: ping", mark)
    # The prompt is redrawn below the incoming line, with what was typed.
    alice.wait_for(r"> half", mark)

    alice.type(" done\r")
    bob.expect_line("alice: half done")
    alice.wait_for(r"alice: half done", mark)

    alice.type("\x04")  # Ctrl-D on an empty line
    assert alice.popen.wait(timeout(10)) == 0
    alice.wait_for(r"<<Client>>: logging out", mark)
    bob.expect_line("<<Server>>: alice has logged out")
    assert alice.popen.stdout is not None
    assert alice.popen.stdout.read() == b""


# -- the client's parts ------------------------------------------------------------


def stream_response(**event: object) -> chat_pb2.StreamResponse:
    response = chat_pb2.StreamResponse(**event)  # type: ignore[arg-type]
    response.timestamp.FromNanoseconds(1_700_000_000_250_000_000)
    return response


def test_event_lines() -> None:
    when = 1_700_000_000.25
    Event = chat_pb2.StreamResponse
    assert event_line(stream_response(client_login=Event.Login(name="bob"))) == Line(
        SERVER, "bob has logged in", when
    )
    assert event_line(stream_response(client_logout=Event.Logout(name="bob"))) == Line(
        SERVER, "bob has logged out", when
    )
    assert event_line(
        stream_response(client_message=Event.Message(name="bob", message="hi"))
    ) == Line("bob", "hi", when)
    assert event_line(stream_response(server_shutdown=Event.Shutdown())) == Line(
        SERVER, "the server is shutting down", when
    )
    assert event_line(chat_pb2.StreamResponse()) is None  # an event from a newer server
    no_time = chat_pb2.StreamResponse(client_login=Event.Login(name="bob"))
    assert event_line(no_time) == Line(SERVER, "bob has logged in", None)


@pytest.mark.parametrize("color", [False, True])
def test_hostile_text_is_printed_literally(color: bool) -> None:
    Event = chat_pb2.StreamResponse
    hostile = stream_response(
        client_message=Event.Message(
            name="[bold]x\x1b[31m", message="[link=x]a[/link]\r\x1b]0;t\x07"
        )
    )
    line = event_line(hostile)
    assert line is not None
    out = io.StringIO()
    Printer(out, color=color).line(*line)
    text = out.getvalue()
    if color:
        assert "\x1b[" in text  # the printer's own colours
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "\r" not in text and "\x07" not in text and "\x1b" not in text
    assert text.endswith("] [bold]x\\x1b[31m: [link=x]a[/link]\\x0d\\x1b]0;t\\x07\n")


def test_go_error_text() -> None:
    assert (
        rpc_error_text(grpc.StatusCode.UNAUTHENTICATED, "password is incorrect")
        == "rpc error: code = Unauthenticated desc = password is incorrect"
    )
    assert rpc_error_text(grpc.StatusCode.CANCELLED, "x") == "rpc error: code = Canceled desc = x"
    assert (
        rpc_error_text(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        == "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
    )
    names = {rpc_error_text(code, "").split()[4] for code in grpc.StatusCode}
    assert names >= {"InvalidArgument", "NotFound", "ResourceExhausted", "Unavailable", "OK"}
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "token not found"
    )
    assert error_text(error) == "rpc error: code = NotFound desc = token not found"


@pytest.mark.asyncio
async def test_chat_client_against_a_served_hub(hub_server: Any) -> None:
    alice, bob = ChatClient(hub_server.address), ChatClient(hub_server.address)
    try:
        for client, name in ((alice, "alice"), (bob, "bob")):
            await client.connect()
            await client.login(name, PASSWORD)
            client.open_stream()
        await wait_subscribers(hub_server.hub, 2)  # both streams are in the room
        events = alice.events()

        async def next_event(kind: str) -> chat_pb2.StreamResponse:
            async for response in events:
                if response.WhichOneof("event") == kind:
                    return response
            raise AssertionError(f"the stream ended before a {kind}")

        await bob.send("hello")
        assert (await next_event("client_message")).client_message.name == "bob"
        await alice.send("")
        own = await next_event("client_message")
        assert (own.client_message.name, own.client_message.message) == ("alice", "")
        await asyncio.wait_for(alice.flush(), timeout(5))  # her line came back: nothing pending
        await bob.logout()
        assert (await next_event("client_logout")).client_logout.name == "bob"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await bob.logout()
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        assert error_text(refused.value) == "rpc error: code = NotFound desc = token not found"
        await events.aclose()
    finally:
        await alice.close()
        await bob.close()
