"""A minimal gRPC-over-HTTP/2 client for one server-streaming read, cheap to run.

The benchmark's subscribers must cost as little CPU as possible: they share two
cores with the server they measure, and a grpc.aio stream costs tens of
microseconds of Python per message received. This client speaks just enough
HTTP/2 (RFC 9113) to open one gRPC call per TCP connection and read its
responses: no task, coroutine or future per message, and one ``data_received``
per ``recv`` however many messages it brought. ``GrpcStreamReader`` is an
``asyncio.Protocol``; the benchmark drives it without asyncio, from an epoll
loop, through ``SocketTransport``.

It never sends a request message (a chat subscriber only listens), answers
SETTINGS and PING as the protocol requires, returns flow-control credit as it
consumes DATA (so a reader that falls behind is still pushed back on, as with a
real client), and decodes the trailers' HPACK block for ``grpc-status``.
Huffman-coded strings are not decoded (grpc-core sends non-binary metadata
uncoded); they read as ``"<huffman>"``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from bench.h2wire import (
    ACK,
    CONTINUATION,
    CREDIT_STEP,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW,
    WINDOW_UPDATE,
    HpackDecoder,
    frame,
    hpack_literal,
    status_name,
)

STREAM_ID = 1


# -- the client --------------------------------------------------------------


class SocketTransport:
    """The two transport calls the reader makes, on a plain non-blocking socket.

    Lets an epoll loop drive ``GrpcStreamReader`` without asyncio. What it
    writes are a few small control frames, so a full send buffer is rare; it
    then blocks until all is sent.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def write(self, data: bytes) -> None:
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

    def close(self) -> None:
        self._sock.close()


# (status name, message) when the call ends; status "OK" for a clean end.
EndHandler = Callable[[str, str], None]


class GrpcStreamReader(asyncio.Protocol):
    """One gRPC call on its own connection, handing each response to ``on_message``.

    ``on_message`` gets each response message's bytes; ``on_end`` is called once
    with the final status, however the call ends (trailers, RST_STREAM, GOAWAY,
    lost connection).
    """

    def __init__(
        self,
        authority: str,
        path: str,
        metadata: list[tuple[str, str]],
        on_message: Callable[[bytes], None],
        on_end: EndHandler,
    ) -> None:
        self._authority = authority
        self._path = path
        self._metadata = metadata
        self._on_message = on_message
        self._on_end = on_end
        self._transport: asyncio.Transport | SocketTransport | None = None
        self._pending = b""  # an incomplete frame
        self._message = bytearray()  # an incomplete gRPC message
        self._header_block = bytearray()
        self._header_end_stream = False
        self._consumed = 0
        self._decoder = HpackDecoder()
        self.ended = False
        self.status: tuple[str, str] | None = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport | SocketTransport) -> None:
        assert isinstance(transport, asyncio.Transport | SocketTransport)
        self._transport = transport
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, WINDOW)  # no push
        block = b"".join(
            hpack_literal(name, value)
            for name, value in [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", self._path),
                (":authority", self._authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *self._metadata,
            ]
        )
        transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", WINDOW - 65535))
            + frame(HEADERS, END_HEADERS, STREAM_ID, block)
        )

    def data_received(self, data: bytes) -> None:
        if self._pending:
            data = self._pending + data
        pos = 0
        size = len(data)
        while size - pos >= 9:
            length = int.from_bytes(data[pos : pos + 3], "big")
            end = pos + 9 + length
            if end > size:
                break
            ftype = data[pos + 3]
            flags = data[pos + 4]
            if ftype == DATA:
                self._consumed += length
                if flags & PADDED:
                    self._grpc(data[pos + 10 : end - data[pos + 9]])
                else:
                    self._grpc(data[pos + 9 : end])
                if flags & END_STREAM:
                    self._end("UNKNOWN", "stream ended without trailers")
            else:
                self._control(ftype, flags, data[pos + 5 : pos + 9], data[pos + 9 : end])
            pos = end
        self._pending = data[pos:]
        if self._consumed >= CREDIT_STEP and self._transport is not None:
            credit = struct.pack(">I", self._consumed)
            self._consumed = 0
            self._transport.write(
                frame(WINDOW_UPDATE, 0, 0, credit) + frame(WINDOW_UPDATE, 0, STREAM_ID, credit)
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("UNAVAILABLE", f"connection lost: {exc}" if exc else "connection closed")

    # -- frames --

    def _grpc(self, payload: bytes) -> None:
        if not self._message and int.from_bytes(payload[1:5], "big") == len(payload) - 5:
            self._on_message(payload[5:])  # the usual case: one message, one frame
            return
        buf = self._message
        buf += payload
        while len(buf) >= 5:
            length = int.from_bytes(buf[1:5], "big")
            if len(buf) < 5 + length:
                break
            self._on_message(bytes(buf[5 : 5 + length]))
            del buf[: 5 + length]

    def _control(self, ftype: int, flags: int, stream: bytes, payload: bytes) -> None:
        transport = self._transport
        if ftype == SETTINGS:
            if not flags & ACK and transport is not None:
                transport.write(frame(SETTINGS, ACK, 0))
        elif ftype == PING:
            if not flags & ACK and transport is not None:
                transport.write(frame(PING, ACK, 0, payload))
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                if flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
                self._header_block = bytearray(payload)
                self._header_end_stream = bool(flags & END_STREAM)
            else:
                self._header_block += payload
            if flags & END_HEADERS:
                headers = self._decoder.decode(bytes(self._header_block))
                if self._header_end_stream:
                    fields = dict(headers)
                    code = fields.get("grpc-status", "")
                    name = status_name(code)
                    self._end(name, fields.get("grpc-message", ""))
        elif ftype == RST_STREAM:
            self._end("UNAVAILABLE", f"RST_STREAM {int.from_bytes(payload[:4], 'big')}")
        elif ftype == GOAWAY:
            error_code = int.from_bytes(payload[4:8], "big")
            if error_code:
                self._end("UNAVAILABLE", f"GOAWAY {error_code}")

    def _end(self, status: str, message: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.status = (status, message)
        self._on_end(status, message)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
