"""One grpc.aio server carrying every service on every configured address.

Beside the hub's own services: the standard health service on every
address, and reflection (so ``grpcurl list`` and ``describe`` work) unless
turned off.
"""

from __future__ import annotations

import logging

import grpc
from grpc_reflection.v1alpha import reflection as grpc_reflection

from hub.core.hub import Hub
from hub.metrics import Metrics
from hub.rpc.chat import ChatService
from hub.rpc.devices import DeviceService
from hub.rpc.health import SERVICE_NAME as HEALTH_SERVICE
from hub.rpc.health import Health
from hub.rpc.rooms import RoomsService

log = logging.getLogger(__name__)

# Bounds what one peer can make the server buffer. Chat lines are refused
# above a few KiB anyway; anything past 64 KiB is cut by gRPC itself with
# RESOURCE_EXHAUSTED before it is even parsed.
MAX_RECEIVE_BYTES = 64 * 1024

OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    # Without SO_REUSEPORT a second hub on the same port fails to bind, as
    # it should, instead of silently sharing the port with the first.
    ("grpc.so_reuseport", 0),
    # Notice peers that vanished without a FIN (a pulled cable, a suspended
    # laptop): ping after 30 s of silence, give up 10 s later.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


class BindError(Exception):
    pass


# The hub's own services, by their full names (as health and reflection name them).
SERVICES = ["chat.Chat", "chat.Rooms", "com.opalcamera.test.DeviceService"]


class GrpcServer:
    def __init__(
        self,
        hub: Hub,
        addresses: list[str],
        *,
        metrics: Metrics | None = None,
        reflection: bool = True,
    ) -> None:
        self._hub = hub
        self._addresses = addresses
        self._server = grpc.aio.server(options=OPTIONS)
        metrics = metrics or Metrics()
        self._server.add_generic_rpc_handlers(
            [
                ChatService(hub, metrics).handler(),
                DeviceService(hub, metrics).handler(),
                RoomsService(hub, metrics).handler(),
            ]
        )
        self.health = Health(SERVICES)
        self.health.add_to(self._server)
        if reflection:
            names = [*SERVICES, HEALTH_SERVICE, grpc_reflection.SERVICE_NAME]
            grpc_reflection.enable_server_reflection(names, self._server)
        self.bound: list[str] = []

    def add_handler(self, handler: grpc.GenericRpcHandler) -> None:
        self._server.add_generic_rpc_handlers([handler])

    async def start(self) -> list[str]:
        """Bind every address and start serving; returns them with real ports."""
        for address in self._addresses:
            try:
                port = self._server.add_insecure_port(address)
            except RuntimeError as error:
                raise BindError(f"{address}: {error}") from None
            if port == 0:
                raise BindError(f"{address}: address unavailable or in use")
            host = address.rsplit(":", 1)[0]
            self.bound.append(f"{host}:{port}")
        await self.health.start()
        await self._server.start()
        log.info("gRPC serving on %s", ", ".join(self.bound))
        return self.bound

    async def stop(self, grace: float) -> None:
        await self._server.stop(grace)
