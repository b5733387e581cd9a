"""The benchmarks' HTTP/2 gRPC client, sans-I/O: ``GrpcMux``.

The benchmarks' readers share two cores with the hub they measure: a grpc.aio
call costs tens of microseconds of Python per message received, and 1,000
devices at 50 packets a second are 50,000 messages a second. ``GrpcMux``
speaks just enough HTTP/2 (RFC 9113) and gRPC to open calls on one
connection and read their responses with no task, coroutine or future per
message: bytes in through ``receive`` (then a plain loop over the frames they
brought), bytes out through ``take``; no sockets, no event loop. Two thin
shims drive it: ``bench/devices_h2.py`` on asyncio (devices, many calls per
connection) and ``bench/h2client.py`` from an epoll loop (chat subscribers,
one call per connection).

What it does: sends request messages (a unary request closes its side with
END_STREAM; a bidirectional call keeps it open), answers SETTINGS and PING,
returns flow-control credit per stream and per connection as it consumes DATA
(so a reader that falls behind is still pushed back on, as with grpc's own
client), and decodes every header block with a stateful HPACK decoder (the
server indexes headers it repeats) for ``grpc-status``. HPACK (RFC 7541) is
without Huffman coding: it never codes what it sends, and received
Huffman-coded strings read as ``"<huffman>"`` (grpc-core codes only ``-bin``
metadata so).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9,
)  # fmt: skip
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20

# Our receive window: 1 MiB per stream and per connection, credit returned in
# 256 KiB steps. Like grpc's own clients (64 KiB, grown by BDP probes to a few
# MiB), a reader that stops reading stops the server's writes after a bound.
WINDOW = 1 << 20
CREDIT_STEP = 1 << 18

STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


def status_name(code: str) -> str:
    """A ``grpc-status`` value's name; an unknown one as it came, or ``"?"``."""
    if code.isdigit() and int(code) < len(STATUS_NAMES):
        return STATUS_NAMES[int(code)]
    return code or "?"


def frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    header = len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + stream.to_bytes(4, "big")
    return header + payload


def grpc_message(message: bytes) -> bytes:
    """One gRPC length-prefixed message, uncompressed."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


# -- HPACK (RFC 7541), what a gRPC client needs ------------------------------

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


# -- the sans-I/O connection -------------------------------------------------


# (payload bytes, arrival time in monotonic ns: one clock read per recv)
MessageHandler = Callable[[bytes, int], None]
# (status name, message) once, however the call ends
EndHandler = Callable[[str, str], None]


class Call:
    """One gRPC call (one HTTP/2 stream) on a ``GrpcMux``."""

    __slots__ = ("buf", "consumed", "ended", "on_end", "on_message", "sid", "status")

    def __init__(self, sid: int, on_message: MessageHandler, on_end: EndHandler) -> None:
        self.sid = sid
        self.on_message = on_message
        self.on_end = on_end
        self.buf = bytearray()  # an incomplete gRPC message
        self.consumed = 0  # DATA bytes not yet credited back
        self.ended = False
        self.status: tuple[str, str] | None = None

    def end(self, status: str, message: str) -> None:
        if not self.ended:
            self.ended = True
            self.status = (status, message)
            self.on_end(status, message)


class GrpcMux:
    """The client side of one HTTP/2 connection carrying many gRPC calls."""

    def __init__(self, authority: str) -> None:
        self.authority = authority
        settings = struct.pack(">HIHI", 0x2, 0, 0x4, WINDOW)  # no push; our window
        self.out = bytearray(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", WINDOW - 65535))
        )
        self.calls: dict[int, Call] = {}
        self._next_sid = 1
        self._pending = b""  # an incomplete frame
        self._consumed = 0  # connection-level DATA bytes not yet credited
        self._decoder = HpackDecoder()
        self._block = bytearray()  # a header block awaiting CONTINUATION
        self._block_sid = 0
        self._block_end = False
        self.closed = False

    def open(
        self,
        path: str,
        metadata: list[tuple[str, str]],
        on_message: MessageHandler,
        on_end: EndHandler,
        *,
        request: bytes | None = None,
        half_close: bool = False,
    ) -> Call:
        """Start a call; with ``request``, send it (and END_STREAM if ``half_close``)."""
        sid = self._next_sid
        self._next_sid += 2
        call = self.calls[sid] = Call(sid, on_message, on_end)
        block = b"".join(
            hpack_literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", self.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            )
        )
        if request is None:
            self.out += frame(HEADERS, END_HEADERS | (END_STREAM if half_close else 0), sid, block)
        else:
            self.out += frame(HEADERS, END_HEADERS, sid, block)
            self.out += frame(DATA, END_STREAM if half_close else 0, sid, grpc_message(request))
        return call

    def send(self, call: Call, message: bytes) -> None:
        """One request message on an open call (tiny messages: no send-window bookkeeping)."""
        if not call.ended:
            self.out += frame(DATA, 0, call.sid, grpc_message(message))

    def cancel(self, call: Call) -> None:
        if not call.ended:
            self.out += frame(RST_STREAM, 0, call.sid, struct.pack(">I", 0x8))  # CANCEL
            call.end("CANCELLED", "cancelled by the client")

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def receive(self, data: bytes, now: int) -> None:
        """Feed bytes from the socket; handlers run before this returns."""
        if self._pending:
            data = self._pending + data
        pos = 0
        size = len(data)
        calls = self.calls
        while size - pos >= 9:
            length = int.from_bytes(data[pos : pos + 3], "big")
            end = pos + 9 + length
            if end > size:
                break
            ftype = data[pos + 3]
            flags = data[pos + 4]
            sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            if ftype == DATA:
                self._consumed += length
                call = calls.get(sid)
                if call is not None:
                    call.consumed += length
                    payload = (
                        data[pos + 10 : end - data[pos + 9]]
                        if flags & PADDED
                        else data[pos + 9 : end]
                    )
                    if (
                        not call.buf
                        and len(payload) >= 5
                        and int.from_bytes(payload[1:5], "big") == len(payload) - 5
                    ):
                        call.on_message(payload[5:], now)  # the usual case: one message, one frame
                    else:
                        self._reassemble(call, payload, now)
                    if call.consumed >= CREDIT_STEP:
                        self.out += frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", call.consumed))
                        call.consumed = 0
                    if flags & END_STREAM:
                        self._finish(call, "UNKNOWN", "stream ended without trailers")
            else:
                self._control(ftype, flags, sid, data[pos + 9 : end])
            pos = end
        self._pending = data[pos:]
        if self._consumed >= CREDIT_STEP:
            self.out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._consumed))
            self._consumed = 0

    def lost(self, reason: str) -> None:
        """The connection is gone: every call still open ends UNAVAILABLE."""
        self.closed = True
        for call in list(self.calls.values()):
            call.end("UNAVAILABLE", reason)
        self.calls.clear()

    # -- internals --

    @staticmethod
    def _reassemble(call: Call, payload: bytes, now: int) -> None:
        buf = call.buf
        buf += payload
        while len(buf) >= 5:
            length = int.from_bytes(buf[1:5], "big")
            if len(buf) < 5 + length:
                break
            message = bytes(buf[5 : 5 + length])
            del buf[: 5 + length]
            call.on_message(message, now)

    def _finish(self, call: Call, status: str, message: str) -> None:
        self.calls.pop(call.sid, None)
        call.end(status, message)

    def _control(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == SETTINGS:
            if not flags & ACK:
                self.out += frame(SETTINGS, ACK, 0)
        elif ftype == PING:
            if not flags & ACK:
                self.out += frame(PING, ACK, 0, payload)
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                if flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
                self._block = bytearray(payload)
                self._block_sid = sid
                self._block_end = bool(flags & END_STREAM)
            else:
                self._block += payload
            if flags & END_HEADERS:
                # Decode every block, even of unknown streams: HPACK is stateful.
                headers = self._decoder.decode(bytes(self._block))
                call = self.calls.get(self._block_sid)
                if call is not None and self._block_end:
                    fields = dict(headers)
                    code = fields.get("grpc-status", "")
                    name = status_name(code)
                    self._finish(call, name, fields.get("grpc-message", ""))
        elif ftype == RST_STREAM:
            call = self.calls.get(sid)
            if call is not None:
                self._finish(
                    call, "UNAVAILABLE", f"RST_STREAM {int.from_bytes(payload[:4], 'big')}"
                )
        elif ftype == GOAWAY:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            error_code = int.from_bytes(payload[4:8], "big")
            for call in [c for s, c in self.calls.items() if s > last or error_code]:
                self._finish(call, "UNAVAILABLE", f"GOAWAY {error_code}")
