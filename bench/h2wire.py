"""The HTTP/2 and gRPC wire pieces both benchmark clients share (sans-I/O).

``bench/h2client.py`` (one server-streaming call per connection, for chat
subscribers) and ``bench/devices_h2.py`` (many calls on one connection, for
devices) speak just enough HTTP/2 (RFC 9113) to be cheap; what they both need
is here: frame and flag numbers, framing, the gRPC status names, and HPACK
(RFC 7541) without Huffman coding (grpc-core codes only ``-bin`` metadata so;
received Huffman-coded strings read as ``"<huffman>"``).
"""

from __future__ import annotations

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
