"""One gRPC server-streaming read per TCP connection, driven from an epoll loop.

The chat subscribers' client: each subscriber is one connection carrying one
call, read by ``GrpcStreamReader``, the epoll shim of the benchmarks'
sans-I/O HTTP/2 client (``bench.h2wire.GrpcMux``, which sends the call's
headers, answers SETTINGS and PING, returns flow-control credit and decodes
the trailers' ``grpc-status``). No asyncio: the loop that owns the sockets
hands each ``recv``'s bytes to ``data_received``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from bench.h2wire import EndHandler, GrpcMux


class GrpcStreamReader:
    """One gRPC call on its own non-blocking socket, handing each response to ``on_message``.

    ``on_end`` is called once with the final status (name, message), however
    the call ends (trailers, RST_STREAM, GOAWAY, lost connection).
    """

    def __init__(
        self,
        sock: socket.socket,
        authority: str,
        path: str,
        metadata: list[tuple[str, str]],
        on_message: Callable[[bytes], None],
        on_end: EndHandler,
    ) -> None:
        self._sock = sock
        self._mux = GrpcMux(authority)
        self.call = self._mux.open(path, metadata, lambda data, _now: on_message(data), on_end)
        self._flush()

    def data_received(self, data: bytes) -> None:
        mux = self._mux
        mux.receive(data, 0)
        if mux.out:
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._mux.lost(f"connection lost: {exc}" if exc else "connection closed")

    def _flush(self) -> None:
        # A few small control frames: a full send buffer is rare, and then
        # this blocks until all is sent.
        data = self._mux.take()
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._sock.setblocking(True)
            try:
                self._sock.sendall(data[sent:])
            finally:
                self._sock.setblocking(False)
