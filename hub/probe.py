"""``hub health``: is the hub at ``--host`` serving? Exit 0 if so, 1 if not.

The image's HEALTHCHECK runs it inside the container, where it finds the
server's address the way the server did (flag, ``HUB_HOST``, config file); an
address that binds every interface is probed on loopback.

It asks the standard gRPC health service (``grpc.health.v1.Health/Check``,
the overall status) through grpcio-health-checking's stubs. Where that
package is not installed, or the server answers UNIMPLEMENTED (a hub built
before it served health), it settles for the channel becoming ready: the
port accepts HTTP/2, which says the process is up, not that it is ready.
"""

from __future__ import annotations

import importlib
import sys
import threading
from typing import Any

import grpc

from hub.config import Config

# Docker's HEALTHCHECK waits 30 s by default; a hub that takes more than a
# few seconds to answer one small call on loopback is not healthy anyway.
PROBE_TIMEOUT = 5.0
ANY_INTERFACE = {"0.0.0.0", "[::]", "::", ""}


def probe_address(host: str) -> str:
    name, _, port = host.rpartition(":")
    return f"127.0.0.1:{port}" if name in ANY_INTERFACE else host


def _health_stubs() -> tuple[Any, Any] | None:
    try:
        return (
            importlib.import_module("grpc_health.v1.health_pb2"),
            importlib.import_module("grpc_health.v1.health_pb2_grpc"),
        )
    except ImportError:
        return None


def _ready(channel: grpc.Channel, address: str) -> int:
    """The channel's first settled state: READY, or a failure to connect
    (refused at once, rather than retried until the timeout)."""
    settled = threading.Event()
    states: list[grpc.ChannelConnectivity] = []

    def seen(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
            settled.set()

    channel.subscribe(seen, try_to_connect=True)
    try:
        settled.wait(PROBE_TIMEOUT)
    finally:
        channel.unsubscribe(seen)
    if not states or states[-1] is not grpc.ChannelConnectivity.READY:
        why = "refused" if settled.is_set() else f"no answer within {PROBE_TIMEOUT:g} s"
        sys.stdout.write(f"unhealthy: {address}: {why}\n")
        return 1
    sys.stdout.write(f"healthy: {address} accepts gRPC (channel ready; no health service)\n")
    return 0


def probe(config: Config) -> int:
    address = probe_address(config.host)
    with grpc.insecure_channel(address) as channel:
        stubs = _health_stubs()
        if stubs is None:
            return _ready(channel, address)
        health_pb2, health_pb2_grpc = stubs
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=PROBE_TIMEOUT
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                return _ready(channel, address)
            sys.stdout.write(f"unhealthy: {address}: {error.code().name}\n")
            return 1
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        sys.stdout.write(
            f"{'healthy' if status == 'SERVING' else 'unhealthy'}: {address} {status}\n"
        )
        return 0 if status == "SERVING" else 1
