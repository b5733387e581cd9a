"""Several gRPC calls on one HTTP/2 connection, cheap enough for 1,000 devices.

The device benchmark's listeners share two cores with the hub they measure: a
grpc.aio call costs tens of microseconds of Python per message received, and
1,000 listeners at 50 packets a second are 50,000 messages a second. This
client speaks just enough HTTP/2 (RFC 9113) and gRPC to open calls and read
their responses with no task, coroutine or future per message: one
``data_received`` per ``recv``, then a plain loop over the frames it brought.

Layout as in python-websockets: ``GrpcMux`` is sans-I/O (bytes in through
``receive``, bytes out through ``take``; no sockets, no event loop) and
``MuxProtocol`` is the thin asyncio shim.

What it does: sends request messages (a unary request closes its side with
END_STREAM; a bidirectional call keeps it open), answers SETTINGS and PING,
returns flow-control credit per stream and per connection as it consumes DATA
(so a reader that falls behind is still pushed back on), and decodes every
header block with a stateful HPACK decoder (the server indexes headers it
repeats) for ``grpc-status``. It never Huffman-codes what it sends; received
Huffman-coded strings read as ``"<huffman>"`` (grpc-core codes only ``-bin``
metadata so).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import cast

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
    grpc_message,
    hpack_literal,
    status_name,
)

# (payload bytes, arrival time in monotonic ns: one clock read per recv)
MessageHandler = Callable[[bytes, int], None]
# (status name, message) once, however the call ends
EndHandler = Callable[[str, str], None]


# -- the sans-I/O connection -------------------------------------------------


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
