"""The asyncio shim of the benchmarks' HTTP/2 gRPC client (``bench.h2wire.GrpcMux``).

Several gRPC calls on one HTTP/2 connection, cheap enough for 1,000 devices:
one clock read and at most one write per ``recv``. Layout as in
python-websockets: ``GrpcMux`` is sans-I/O, ``MuxProtocol`` the thin asyncio
shim.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import cast

from bench.h2wire import GrpcMux


class MuxProtocol(asyncio.Protocol):
    """The asyncio shim: one clock read and at most one write per ``recv``."""

    def __init__(self, mux: GrpcMux) -> None:
        self.mux = mux
        self.transport: asyncio.Transport | None = None
        self.connected = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's transport (uvloop's is no asyncio.Transport subclass)
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.flush()
        if not self.connected.done():
            self.connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        mux = self.mux
        mux.receive(data, time.monotonic_ns())
        if mux.out:
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.mux.lost(f"connection lost: {exc}" if exc else "connection closed")

    def flush(self) -> None:
        if self.transport is not None and self.mux.out and not self.transport.is_closing():
            self.transport.write(self.mux.take())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
