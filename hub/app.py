"""Runs one hub process: the core and every front door, until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hub.audio.library import SoundLibrary
from hub.audio.music import MusicFolder
from hub.core.hub import Hub
from hub.core.tokens import SECRET_ENV, SECRET_FILE_ENV
from hub.errors import Unavailable
from hub.metrics import Metrics, MetricsServer, PrometheusMetrics
from hub.rpc.server import BindError, GrpcServer
from hub.settings import Settings
from hub.tcp.server import StreamServer

if TYPE_CHECKING:
    from hub.backplane import Backplane

log = logging.getLogger(__name__)

# Total budget from a signal to exit: streams get the shutdown event at once,
# then this long to finish before they are cancelled. Stays well inside the
# 5 s that orchestrators usually wait before SIGKILL.
SHUTDOWN_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class Addresses:
    grpc: list[str] = field(default_factory=lambda: ["0.0.0.0:6262", "0.0.0.0:50051"])
    # The raw-TCP streaming door (docs/protocol.md); None leaves it shut.
    stream: str | None = "0.0.0.0:8080"


class StartError(Exception):
    """The hub cannot start as asked; the message says why in one line."""


def backplane_for(url: str, settings: Settings, *, shared_secret: bool) -> Backplane:
    """The Redis backplane at ``url`` (``--redis``), once its preconditions hold.

    ``shared_secret``: the token signing secret was given (not made up per
    process), so tokens from one hub are good at the others.
    """
    if not shared_secret:
        raise StartError(
            f"--redis needs the token signing secret every hub shares: "
            f"set {SECRET_ENV} or {SECRET_FILE_ENV}"
        )
    try:
        from hub.backplane import Backplane
    except ImportError:
        raise StartError("--redis needs the redis package: pip install 'hub[redis]'") from None
    try:
        return Backplane(url, settings)
    except ValueError as error:  # redis-py's word on a malformed URL
        raise StartError(f"--redis: {error}") from None


class App:
    def __init__(
        self,
        settings: Settings,
        addresses: Addresses,
        *,
        secret: bytes | None = None,
        library: SoundLibrary | None = None,
        music: MusicFolder | None = None,
        backplane: Backplane | None = None,
    ) -> None:
        self.settings = settings
        self.addresses = addresses
        self.backplane = backplane
        operator = settings.operator
        self.metrics = PrometheusMetrics() if operator.metrics_address else Metrics()
        if backplane is None:
            self.hub = Hub(settings, secret=secret, library=library, observer=self.metrics)
        else:
            self.hub = Hub(
                settings,
                secret=secret,
                library=library,
                clock=backplane.clock,  # one clock for the hub and its backplane
                broker=backplane.broker,
                session_store=backplane.sessions,
                presence=backplane.presence,
                room_store=backplane.room_store,
                room_cluster=backplane.rooms,
                observer=self.metrics,
            )
            backplane.on_state = self.set_backplane
            backplane.on_lag = self.metrics.backplane_lag
        self.grpc = (
            GrpcServer(
                self.hub, addresses.grpc, metrics=self.metrics, reflection=operator.reflection
            )
            if addresses.grpc
            else None
        )
        self.stream = (
            StreamServer(self.hub, music, metrics=self.metrics) if addresses.stream else None
        )
        self.metrics.watch(self.hub)
        self.metrics_server = (
            MetricsServer(self.metrics.registry) if self.metrics.registry is not None else None
        )
        self._backplane_up = True
        self._stop = asyncio.Event()

    async def grpc_stop_now(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop(0)

    def request_stop(self) -> None:
        self._stop.set()

    def set_backplane(self, up: bool) -> None:
        """The backplane (Redis, shared by several hubs) became reachable or not.

        While it is not, health says NOT_SERVING: this hub would serve rooms
        cut off from the other hubs' members. Its return is a reconnection.
        """
        if up and not self._backplane_up:
            self.metrics.backplane_reconnected()
        self._backplane_up = up
        self.metrics.backplane_up(up)
        if self.grpc is not None:
            self.grpc.health.set_backplane(up)

    async def run(
        self,
        on_started: Callable[[list[str]], Awaitable[None]] | None = None,
        on_stopping: Callable[[], None] | None = None,
    ) -> None:
        """Serve until SIGINT or SIGTERM; ``on_started`` gets the bound addresses
        (gRPC ones first, then the stream one, then the metrics one). Raises
        ``StartError`` when the backplane is out of reach."""
        if self.backplane is not None:
            from hub.backplane import BackplaneError

            try:
                await self.backplane.start()
            except BackplaneError as error:
                await self.backplane.close()
                raise StartError(str(error)) from None
        try:
            await self._serve(on_started, on_stopping)
        finally:
            if self.backplane is not None:
                await self.backplane.close()

    async def _serve(
        self,
        on_started: Callable[[list[str]], Awaitable[None]] | None,
        on_stopping: Callable[[], None] | None,
    ) -> None:
        try:
            bound = await self._open_doors()
            await self._serve_until_stopped(bound, on_started, on_stopping)
        finally:
            if self.metrics_server is not None:
                await self.metrics_server.close()
            await self.hub.close()
            # Sounds encoded part of the way hold a file and a resampler each;
            # at exit those would be reported as leaked (see PacketCache.close).
            await self.hub.rooms.cache.close()

    async def _open_doors(self) -> list[str]:
        """Start the core, then bind every door; the addresses bound, as ``run`` says."""
        try:
            await self.hub.start()
        except Unavailable as error:  # the backplane went away since it answered
            raise StartError(error.message) from None
        bound = await self.grpc.start() if self.grpc else []
        try:
            if self.stream is not None and self.addresses.stream is not None:
                bound.append(await self._bind(self.stream.start, self.addresses.stream))
            metrics_address = self.settings.operator.metrics_address
            if self.metrics_server is not None and metrics_address is not None:
                bound.append(await self._bind(self.metrics_server.start, metrics_address))
        except BindError:
            await self.grpc_stop_now()
            if self.stream is not None:
                await self.stream.close()
            raise
        if self.grpc is not None:
            await self.grpc.health.ready()
        return bound

    async def _serve_until_stopped(
        self,
        bound: list[str],
        on_started: Callable[[list[str]], Awaitable[None]] | None,
        on_stopping: Callable[[], None] | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop.set)
        try:
            if on_started is not None:
                await on_started(bound)
            await self._stop.wait()
            # Health first: probes stop sending traffic before streams end.
            if self.grpc is not None:
                await self.grpc.health.stopping()
            if on_stopping is not None:
                on_stopping()
            log.info("shutting down")
            await self.hub.shutdown()
            if self.stream is not None:
                await self.stream.close()
            if self.grpc is not None:
                await self.grpc.stop(SHUTDOWN_GRACE)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    @staticmethod
    async def _bind(start: Callable[[str], Awaitable[str]], address: str) -> str:
        try:
            return await start(address)
        except OSError as error:
            raise BindError(f"{address}: {error.strerror or error}") from None
