"""The standard gRPC health service (grpc.health.v1), and when the hub is serving.

One status for the whole server (service ``""``) and one per service, all
the same: the hub is ready or it is not. ``NOT_SERVING`` until every door is
bound, ``SERVING`` then, ``NOT_SERVING`` for good from the moment shutdown
starts (before any stream is ended, so probes stop sending traffic first),
and ``NOT_SERVING`` while a configured backplane is unreachable. ``Watch``
streams every change.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

log = logging.getLogger(__name__)

SERVICE_NAME = "grpc.health.v1.Health"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    def __init__(self, services: list[str]) -> None:
        self.services = ["", *services]
        self.servicer = HealthServicer()
        self._ready = False
        self._backplane_up = True
        self._stopping = False
        # Status changes are applied in order by one task at a time, each
        # applying the status of the moment: the last change always wins.
        self._changes: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        return self._ready and self._backplane_up and not self._stopping

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        """Before the server starts: every service known, and NOT_SERVING."""
        await self._apply()

    async def ready(self) -> None:
        """Every door is bound: serve, unless the backplane is down."""
        self._ready = True
        await self._apply()

    async def stopping(self) -> None:
        """Shutdown has begun: NOT_SERVING from now on, whatever else happens."""
        self._stopping = True
        await self.servicer.enter_graceful_shutdown()

    def set_backplane(self, up: bool) -> None:
        """The backplane became reachable (``up``) or unreachable.

        Synchronous, so a broker can call it from a callback; the change
        reaches Check and Watch callers within the loop's next turns.
        """
        if up == self._backplane_up:
            return
        self._backplane_up = up
        log.warning("backplane %s: health %s", "up" if up else "down", self._word())
        previous = self._changes
        self._changes = asyncio.get_running_loop().create_task(self._after(previous))

    async def _after(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait((previous,))
        await self._apply()

    async def _apply(self) -> None:
        status = SERVING if self.serving else NOT_SERVING
        for service in self.services:
            await self.servicer.set(service, status)

    def _word(self) -> str:
        return "SERVING" if self.serving else "NOT_SERVING"
