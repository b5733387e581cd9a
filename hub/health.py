"""``python -m hub.health``: ask a hub whether it is serving, for probes.

Exit status 0 when the standard gRPC health service answers SERVING, 1
otherwise (NOT_SERVING, unknown service, no answer in time), with the status
or the reason on standard output: what Docker's HEALTHCHECK and Kubernetes'
exec probes want.

    python -m hub.health                                  # localhost:6262, the whole hub
    python -m hub.health --address hub:50051 --service com.opalcamera.test.DeviceService
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import cast

# As in hub.cli: gRPC's own log lines would muddle the one line a probe prints.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDRESS = "localhost:6262"


def check(address: str, service: str = "", timeout: float = 3.0) -> str:
    """The service's status name (``SERVING``...); raises grpc.RpcError."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hub.health",
        description="Exit 0 if the hub at ADDRESS is SERVING (gRPC health), 1 otherwise.",
    )
    parser.add_argument(
        "--address", default=DEFAULT_ADDRESS, help="HOST:PORT (default %(default)s)"
    )
    parser.add_argument(
        "--service",
        default="",
        help="one service, e.g. chat.Chat (default: the hub as a whole)",
    )
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait (default %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        status = check(args.address, args.service, args.timeout)
    except grpc.RpcError as error:
        call = cast(grpc.Call, error)  # what a failed blocking call raises
        print(f"{args.address}: {call.code().name}: {call.details()}")
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
