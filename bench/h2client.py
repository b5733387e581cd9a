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

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0,
    1,
    3,
    4,
    6,
    7,
    8,
    9,
)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
STREAM_ID = 1

# Our receive window: 1 MiB per stream and per connection, credit returned in
# 256 KiB steps. Like grpc's own clients (64 KiB, grown by BDP probes to a few
# MiB), a reader that stops reading stops the server's writes after a bound.
WINDOW = 1 << 20
CREDIT_STEP = 1 << 18

STATUS_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


def frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    header = len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + stream.to_bytes(4, "big")
    return header + payload


# -- HPACK (RFC 7541), just what this client needs ---------------------------

STATIC_TABLE: list[tuple[str, str]] = [
    ("", ""),  # index 0 is unused
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
]


def hpack_int(value: int, prefix_bits: int, flags: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: str, value: str) -> bytes:
    """A literal header field without indexing, new name, no Huffman coding."""
    n, v = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(n), 7, 0) + n + hpack_int(len(v), 7, 0) + v


class HpackDecoder:
    def __init__(self) -> None:
        self.dynamic: list[tuple[str, str]] = []  # newest first
        self.size = 0
        self.max_size = 4096

    @staticmethod
    def _int(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        value = data[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos

    def _str(self, data: bytes, pos: int) -> tuple[str, int]:
        huffman = data[pos] & 0x80
        length, pos = self._int(data, pos, 7)
        raw = data[pos : pos + length]
        return ("<huffman>" if huffman else raw.decode("latin-1")), pos + length

    def _entry(self, index: int) -> tuple[str, str]:
        if index < len(STATIC_TABLE):
            return STATIC_TABLE[index]
        return self.dynamic[index - len(STATIC_TABLE)]

    def _add(self, name: str, value: str) -> None:
        self.dynamic.insert(0, (name, value))
        self.size += len(name) + len(value) + 32
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size and self.dynamic:
            name, value = self.dynamic.pop()
            self.size -= len(name) + len(value) + 32

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        headers = []
        pos = 0
        while pos < len(block):
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index, pos = self._int(block, pos, 7)
                headers.append(self._entry(index))
                continue
            if byte & 0xC0 == 0x40:  # literal with incremental indexing
                index, pos = self._int(block, pos, 6)
                indexing = True
            elif byte & 0xE0 == 0x20:  # dynamic table size update
                self.max_size, pos = self._int(block, pos, 5)
                self._evict()
                continue
            else:  # literal without indexing, or never indexed
                index, pos = self._int(block, pos, 4)
                indexing = False
            if index:
                name = self._entry(index)[0]
            else:
                name, pos = self._str(block, pos)
            value, pos = self._str(block, pos)
            headers.append((name, value))
            if indexing:
                self._add(name, value)
        return headers


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
                    name = STATUS_NAMES.get(int(code), code) if code.isdigit() else code or "?"
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
