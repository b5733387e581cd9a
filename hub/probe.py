"""``hub health``: is the hub at ``--host`` serving? Exit 0 if so, 1 if not.

The image's HEALTHCHECK runs it inside the container, where it finds the
server's address the way the server did (flag, ``HUB_HOST``, config file); an
address that binds every interface is probed on loopback.

It asks the standard gRPC health service (``grpc.health.v1.Health/Check``,
the hub's overall status, hub/rpc/health.py): SERVING once every door is
bound, NOT_SERVING from the moment shutdown starts or while a backplane is
unreachable. One line on standard output says which, or why there was no
answer.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hub.config import Config

# Docker's HEALTHCHECK waits 30 s by default; a hub that takes more than a
# few seconds to answer one small call on loopback is not healthy anyway.
PROBE_TIMEOUT = 5.0
ANY_INTERFACE = {"0.0.0.0", "[::]", "::", ""}


def probe_address(host: str) -> str:
    name, _, port = host.rpartition(":")
    return f"127.0.0.1:{port}" if name in ANY_INTERFACE else host


def check(address: str, service: str = "", timeout: float = PROBE_TIMEOUT) -> str:
    """The status name the hub at ``address`` gives ``service``; raises grpc.RpcError."""
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def probe(config: Config) -> int:
    address = probe_address(config.host)
    try:
        status = check(address)
    except grpc.RpcError as error:
        # A refused connection fails at once with UNAVAILABLE: no waiting.
        code = error.code() if isinstance(error, grpc.Call) else None
        sys.stdout.write(f"unhealthy: {address}: {code.name if code else error}\n")
        return 1
    healthy = status == "SERVING"
    sys.stdout.write(f"{'healthy' if healthy else 'unhealthy'}: {address} {status}\n")
    return 0 if healthy else 1
