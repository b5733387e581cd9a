"""Operating the real `hub` process: health, reflection and metrics as operators' tools see them.

Each test runs ``python -m hub -s`` on free ports of 127.0.0.1 and talks to it
the way a probe, ``grpcurl``, Prometheus or Grafana would: the health probe
command, grpcio-reflection's own client, HTTP scrapes parsed by
prometheus_client, and the dashboard's PromQL checked against a scrape.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from cli_helpers import HUB, PASSWORD, Proc, Procs, hub_env, server_args, timeout
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from scrape import fetch, metrics_url

from hub.proto import chat_pb2, chat_pb2_grpc

EVERY_SERVICE = {
    "chat.Chat",
    "chat.Rooms",
    "com.opalcamera.test.DeviceService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


def probe(address: str) -> subprocess.CompletedProcess[str]:
    """``hub health``, as the image's HEALTHCHECK runs it."""
    return subprocess.run(
        [*HUB, "health", "-h", address],
        capture_output=True,
        text=True,
        env=hub_env(),
        timeout=timeout(20),
    )


def start(procs: Procs, *args: str) -> tuple[Proc, str]:
    proc, port = procs.server(*server_args(), *args)
    return proc, f"127.0.0.1:{port}"


def test_the_probe_says_serving_and_watch_sees_not_serving_on_sigterm(procs: Procs) -> None:
    proc, address = start(procs)
    serving = probe(address)
    assert (serving.returncode, serving.stdout) == (0, f"healthy: {address} SERVING\n")
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("chat.Chat", "chat.Rooms", "com.opalcamera.test.DeviceService"):
            check = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout())
            assert check.status == health_pb2.HealthCheckResponse.SERVING, service

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
    gone = probe(address)
    assert (gone.returncode, gone.stdout) == (1, f"unhealthy: {address}: UNAVAILABLE\n")


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
    proc, address = start(procs, "--metrics-address", "127.0.0.1:0")
    url = metrics_url(proc)
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


# -- the Grafana dashboard -----------------------------------------------------------------

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "hub.json"
# PromQL words that look like metric names but are not.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
KEYWORDS |= {"and", "or", "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, whatever they hold
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana's variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in KEYWORDS:
            continue  # a function or an operator
        names.add(match.group())
    return names


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the dashboard: its panels' and its variables'."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    exprs = [target["expr"] for panel in panels for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition", "")
        if match := re.fullmatch(r"label_values\((\w+),\s*\w+\)", query):
            exprs.append(match[1])
    return exprs


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, door) "
        '(rate(a_bucket{door="x{y}"}[$__rate_interval])))'
        " / on (instance) group_left b_total + sum(c) * 2"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_the_dashboard_names_only_metrics_the_hub_exports(procs: Procs) -> None:
    proc, _ = start(procs, "--metrics-address", "127.0.0.1:0")
    scraped = fetch(metrics_url(proc))
    exprs = dashboard_expressions()
    assert len(exprs) >= 20
    used = set().union(*(metric_names(e) for e in exprs))
    unknown = sorted(name for name in used if not scraped.exports(name))
    assert not unknown, f"the dashboard names metrics the hub does not export: {unknown}"
    # And it shows every figure of the hub's own.
    ours = {
        f.name
        for f in scraped.families
        if f.name.startswith("hub_") and not f.name.endswith("_created")  # counters' birth times
    }
    shown = {name for name in ours if any(n.startswith(name) for n in used)}
    assert shown == ours, f"not on the dashboard: {sorted(ours - shown)}"
