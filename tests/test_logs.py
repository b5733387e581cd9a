"""The server's log records through a real `hub -s`: formats, levels, context,
and never a token or a secret.

A whole session runs against the process: a chat Login with a known
password, a Stream that sends and receives a line, a TCP HELLO carrying the
token, a device pressing Mode, a Logout, SIGTERM. Its standard error is then
read line by line: the reference's ``<<Server>>`` lines are CLI output and
stay as they were; every other line is a log record, and none holds the
token, the password or the token signing secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from pathlib import Path

import grpc
from cli_helpers import PASSWORD, SECRET, STARTING, TIME, Proc, Procs, hub_env, server_args, timeout

from hub.cli import secrets_of
from hub.config import load
from hub.logs import MASK, JsonFormatter, TextFormatter, log_context
from hub.proto import chat_pb2, chat_pb2_grpc, comms_pb2, comms_pb2_grpc
from hub.tcp.codec import PROTOCOL_VERSION, Connection, Hello, Role, Welcome

SERVER_LINE = re.compile(rf"{TIME} <<Server>>: .*")


async def tcp_hello(address: str, token: str) -> Welcome:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    codec = Connection(Role.CLIENT)
    try:
        writer.write(codec.send(Hello(PROTOCOL_VERSION, "alice", token)))
        async with asyncio.timeout(timeout(10)):
            while True:
                data = await reader.read(65536)
                assert data, "the server closed the connection before WELCOME"
                codec.receive_data(data)
                for event in codec.events():
                    if isinstance(event, Welcome):
                        return event
    finally:
        writer.close()
        await writer.wait_closed()


async def press_mode(channel: grpc.aio.Channel, room: str) -> None:
    """A device in ``room`` presses Mode, as the stock client does."""
    device = comms_pb2_grpc.DeviceServiceStub(channel)  # type: ignore[no-untyped-call]
    call = device.EventStream(metadata=[("device_id", room)])
    press = comms_pb2.ButtonEvent(
        button_id=comms_pb2.ButtonEvent.BUTTON_2, event=comms_pb2.ButtonEvent.PRESS
    )
    async with asyncio.timeout(timeout(10)):
        await call.write(comms_pb2.DeviceEvent(button_event=press))
        assert (await call.read()).ack
        await call.done_writing()


async def a_whole_session(chat: str, stream: str) -> str:
    """Login, a line through a stream, a TCP HELLO with the token, a device's
    Mode press, Logout; the token."""
    async with grpc.aio.insecure_channel(chat) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        login = await stub.Login(chat_pb2.LoginRequest(name="alice", password=PASSWORD))
        token: str = login.token
        call = stub.Stream(metadata=[("x-chat-token", token)])
        async with asyncio.timeout(timeout(10)):
            await call.write(chat_pb2.StreamRequest(message="hello, log"))
            async for response in call:
                if response.WhichOneof("event") == "client_message":
                    assert response.client_message.message == "hello, log"
                    break
        await tcp_hello(stream, token)
        await press_mode(channel, "kitchen")
        await stub.Logout(chat_pb2.LogoutRequest(token=token))
        call.cancel()
    return token


def run_session(procs: Procs, *flags: str) -> tuple[Proc, str, list[str]]:
    """A server with ``flags``, a whole session, SIGTERM: (server, token, log lines)."""
    server, port = procs.server(*server_args(stream="127.0.0.1:0"), *flags)
    chat = f"127.0.0.1:{port}"
    stream = server.expect(rf"{TIME} <<Server>>: .*\(TCP\) on (127\.0\.0\.1:\d+)")[1]
    token = asyncio.run(a_whole_session(chat, stream))
    server.expect(rf"{TIME} <<Server>>: [0-9a-f]{{8}} \(alice\) has logged out")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    records = [line for line in server.lines if not SERVER_LINE.fullmatch(line)]
    return server, token, records


def assert_nothing_secret(server: Proc, token: str, records: list[str]) -> None:
    assert len(token) > 40 and records and len(PASSWORD) >= 8
    for line in records:
        assert token not in line, line
        assert PASSWORD not in line, line
        assert SECRET not in line, line
    # The reference's start line shows the password, as the reference does;
    # no other line does.
    showing = [line for line in server.lines if PASSWORD in line]
    assert len(showing) == 1 and STARTING.fullmatch(showing[0])


def test_json_logs_are_one_object_a_line_with_context_and_no_secret(procs: Procs) -> None:
    server, token, records = run_session(procs, "--log-format", "json", "--log-level", "debug")
    entries = [json.loads(line) for line in records]  # every record parses
    for entry in entries:
        assert {"time", "level", "logger", "event"} <= entry.keys(), entry
        assert entry["level"] in ("debug", "info", "warning", "error", "critical")
    session = re.search(r"([0-9a-f]{8}) \(alice\) has logged in", "\n".join(server.lines))
    assert session is not None
    about_alice = [e for e in entries if e.get("session") == session[1]]
    assert any("logged in" in e["event"] for e in about_alice), entries
    assert any(e.get("peer", "").startswith("ipv4:127.0.0.1:") for e in about_alice), entries
    # The TCP client is named by its own session id and its address.
    assert any(e["logger"] == "hub.tcp.server" and "peer" in e for e in entries), entries
    # What the core logs for a device's call names its room.
    assert any(e["logger"] == "hub.core.rooms" and e.get("room") == "kitchen" for e in entries)
    assert_nothing_secret(server, token, records)


def test_text_logs_hold_no_token_or_secret(procs: Procs) -> None:
    server, token, records = run_session(procs, "-v")  # -v: debug, as the reference
    assert any("logged in" in line and "session=" in line for line in records), records
    assert_nothing_secret(server, token, records)


def test_the_log_level_is_obeyed(procs: Procs) -> None:
    _, _, records = run_session(procs, "--log-level", "error", "--log-format", "json")
    assert records == []  # the session logs at info and debug, and the random-secret
    # warning does not show either: HUB_TOKEN_SECRET is set (cli_helpers.hub_env)


def test_the_env_sets_the_log_format(procs: Procs) -> None:
    server = procs.start(
        "-s",
        "-h",
        "127.0.0.1:0",
        "--device-address",
        "none",
        "--stream-address",
        "none",
        env=hub_env(HUB_LOG_FORMAT="json"),
    )
    server.expect(rf"{TIME} <<Server>>: starting on .*", 20)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    records = [line for line in server.lines if not SERVER_LINE.fullmatch(line)]
    # Without -p the hub warns that anyone can log in: a warning, in JSON.
    assert [json.loads(line)["level"] for line in records] == ["warning"]


# -- the formatters ----------------------------------------------------------------


def record(message: str, *args: object, **extra: str) -> logging.LogRecord:
    made = logging.LogRecord("hub.test", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_jwt_shaped_text_and_given_secrets_are_masked_in_both_formats() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJhYmMifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    for formatter in (JsonFormatter(["hunter22"]), TextFormatter(["hunter22"])):
        text = formatter.format(record("metadata %s password %s", jwt, "hunter22"))
        assert jwt not in text and "hunter22" not in text and MASK in text


def test_context_fills_fields_the_record_was_not_given() -> None:
    from hub.logs import ContextFilter

    with log_context(session="abcd1234", peer="ipv4:1.2.3.4:5"):
        made = record("hello")
        ContextFilter().filter(made)
        given = record("hello", session="ffff0000")
        ContextFilter().filter(given)
    outside = record("hello")
    ContextFilter().filter(outside)
    assert json.loads(JsonFormatter().format(made)) | {"time": ""} == {
        "time": "",
        "level": "info",
        "logger": "hub.test",
        "event": "hello",
        "session": "abcd1234",
        "peer": "ipv4:1.2.3.4:5",
    }
    assert json.loads(JsonFormatter().format(given))["session"] == "ffff0000"
    assert "session" not in json.loads(JsonFormatter().format(outside))
    assert TextFormatter().format(made).endswith("hello [session=abcd1234 peer=ipv4:1.2.3.4:5]")


def test_every_secret_the_configuration_names_is_masked(tmp_path: Path) -> None:
    secret_file = tmp_path / "token-secret"
    secret_file.write_text("a-secret-read-from-its-file-0123456789\n")
    config = load(
        ["-s", "-p", "the-password", "--token-secret-file", str(secret_file)],
        {"HUB_REDIS_URL": "redis://:redis-password@127.0.0.1:6379/0"},
    )
    masked = set(secrets_of(config))
    assert {
        "the-password",
        "a-secret-read-from-its-file-0123456789",
        "redis-password",
    } <= masked
    line = TextFormatter(masked).format(
        logging.makeLogRecord({"msg": "%s %s", "args": ("redis-password", "the-password")})
    )
    assert "redis-password" not in line and "the-password" not in line
