"""Operating the real `hub` process: health, reflection and metrics as operators' tools see them.

Each test runs ``python -m hub -s`` on free ports of 127.0.0.1 and talks to it
the way a probe, ``grpcurl`` or Prometheus would: the health probe command,
grpcio-reflection's own client, and HTTP scrapes parsed by prometheus_client.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from cli_helpers import PASSWORD, Proc, Procs, hub_env, timeout
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from scrape import fetch

from hub.proto import chat_pb2, chat_pb2_grpc

SERVER = ["-s", "-p", PASSWORD, "-h", "127.0.0.1:0", "--stream-address", "none"]
METRICS_LINE = re.compile(r".*metrics on http://127\.0\.0\.1:(?P<port>\d+)/metrics.*")
EVERY_SERVICE = {
    "chat.Chat",
    "chat.Rooms",
    "com.opalcamera.test.DeviceService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.fixture
def procs() -> Iterator[Procs]:
    procs = Procs()
    yield procs
    procs.stop_all()


def probe(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The health probe command, as a Dockerfile HEALTHCHECK runs it."""
    return subprocess.run(
        [sys.executable, "-m", "hub.health", "--address", address, *args],
        capture_output=True,
        text=True,
        env=hub_env(),
        timeout=timeout(20),
    )


def start(procs: Procs, *args: str) -> tuple[Proc, str]:
    proc, port = procs.server(*SERVER, "--device-address", "none", *args)
    return proc, f"127.0.0.1:{port}"


def test_the_probe_says_serving_and_watch_sees_not_serving_on_sigterm(procs: Procs) -> None:
    proc, address = start(procs)
    serving = probe(address)
    assert (serving.returncode, serving.stdout) == (0, "SERVING\n"), serving.stderr
    for service in ("chat.Chat", "chat.Rooms", "com.opalcamera.test.DeviceService"):
        assert probe(address, "--service", service).returncode == 0, service
    unknown = probe(address, "--service", "chat.Nope")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stdout

    async def watch_through_sigterm() -> list[int]:
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="chat.Chat")
            )
            statuses = [(await asyncio.wait_for(watch.read(), timeout())).status]
            proc.signal(signal.SIGTERM)
            statuses.append((await asyncio.wait_for(watch.read(), timeout())).status)
            watch.cancel()
            return statuses

    statuses = asyncio.run(watch_through_sigterm())
    assert statuses == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]
    assert proc.wait() == 0
    gone = probe(address, "--timeout", "1")
    assert gone.returncode == 1
    assert "UNAVAILABLE" in gone.stdout or "DEADLINE_EXCEEDED" in gone.stdout


def test_reflection_lists_every_service_and_describes_a_method(procs: Procs) -> None:
    _, address = start(procs)
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) == EVERY_SERVICE
        pool = DescriptorPool(database)
        login = pool.FindServiceByName("chat.Chat").methods_by_name["Login"]
        assert login.input_type.full_name == "chat.LoginRequest"
        described = [(f.name, f.number) for f in login.input_type.fields]
        assert described == [(f.name, f.number) for f in chat_pb2.LoginRequest.DESCRIPTOR.fields]
        assert {name for name, _ in described} == {"name", "password"}
        audio = pool.FindServiceByName("com.opalcamera.test.DeviceService").methods_by_name[
            "ServerAudioStream"
        ]
        assert audio.output_type.full_name == "com.opalcamera.test.AudioPacket"
        assert audio.server_streaming and not audio.client_streaming


def test_no_reflection_turns_it_off(procs: Procs) -> None:
    _, address = start(procs, "--no-reflection")
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        with pytest.raises(grpc.RpcError) as refused:
            database.get_services()
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    assert probe(address).returncode == 0  # health stays


def test_metrics_are_scraped_from_the_process_as_clients_act(procs: Procs) -> None:
    proc, address = start(procs, "--metrics-address", "127.0.0.1:0", "-v")
    # Logged before the reference's start line, which ``start`` waited for.
    port = next(m["port"] for line in proc.transcript() if (m := METRICS_LINE.fullmatch(line)))
    url = f"http://127.0.0.1:{port}/metrics"
    before = fetch(url)
    assert before.value("hub_logins_total") == 0
    # The process's own figures come with the hub's.
    assert before.value("process_cpu_seconds_total") > 0

    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)  # type: ignore[no-untyped-call]
        token = stub.Login(chat_pb2.LoginRequest(name="alice", password=PASSWORD)).token
        with pytest.raises(grpc.RpcError):
            stub.Login(chat_pb2.LoginRequest(name="eve", password="nope"))
        during = fetch(url)
        stub.Logout(chat_pb2.LogoutRequest(token=token))
    assert during.value("hub_logins_total", outcome="ok") == 1
    assert during.value("hub_auth_failures_total", reason="wrong_password") == 1
    assert during.value("hub_sessions") == 1
    after = fetch(url)
    assert after.value("hub_logouts_total", outcome="ok") == 1
    assert after.value("hub_sessions") == 0
    # The token is a secret: it never shows in what is scraped.
    assert token not in str(after.samples)
