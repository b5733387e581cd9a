"""Fuzz the TCP protocol codec (hub/tcp/codec.py) with atheris.

Feeds arbitrary bytes, cut into arbitrary chunks, to a ``Connection`` of
either role, fresh or already past the handshake with a stream open (so the
fuzzer reaches AUDIO and the stream rules without first having to discover a
valid HELLO). The only exceptions allowed out of the codec are ProtocolError
subclasses, and only from ``send``; ``receive_data`` must never raise. On top
of that it checks what the parser promises:

- the buffer never holds more than one incomplete frame (HEADER_SIZE +
  max_frame_size bytes);
- every decoded message re-encodes to exactly the bytes it came from, so the
  encoding is canonical and decode/encode are inverses;
- a violation leaves the connection in ERROR with an ERROR frame to send.

``TestOneInput`` needs no atheris, so the tests run it under hypothesis too.
Run: see fuzzing/README.md.
"""

from __future__ import annotations

import sys

from hub.tcp.codec import (
    HEADER_SIZE,
    MIN_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Audio,
    Connection,
    ConnectionClosed,
    Error,
    Hello,
    LocalProtocolError,
    ProtocolViolation,
    PublishStart,
    Role,
    State,
    StreamStart,
    Welcome,
    decode_frame,
    encode,
)

# Small, so the fuzzer reaches the size limit without megabyte inputs.
MAX_FRAME_SIZE = MIN_MAX_FRAME_SIZE
STREAM_ID = 7


def _connections(role: Role, ready: bool) -> tuple[Connection, Connection]:
    """The connection under test and a mirror of the peer in the same state."""
    conn = Connection(role, max_frame_size=MAX_FRAME_SIZE)
    mirror = Connection(role.peer, max_frame_size=MAX_FRAME_SIZE)
    if not ready:
        return conn, mirror
    client, server = (conn, mirror) if role is Role.CLIENT else (mirror, conn)
    server.receive_data(client.send(Hello(PROTOCOL_VERSION, "fuzz")))
    client.receive_data(server.send(Welcome(PROTOCOL_VERSION, "fuzz", "s", None, MAX_FRAME_SIZE)))
    client.receive_data(server.send(StreamStart(STREAM_ID, None, "fuzz")))
    server.receive_data(client.send(PublishStart(STREAM_ID, "room")))
    client.receive_data(server.send(Audio(STREAM_ID, 0, b"\xf8\xff\xfe")))
    for side in (client, server):
        events = list(side.events())
        assert not any(isinstance(e, ProtocolViolation) for e in events), events
    return conn, mirror


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, chunk = data[0], data[1] % 97 + 1
    payload = data[2:]
    role = Role.SERVER if flags & 1 else Role.CLIENT
    conn, mirror = _connections(role, ready=bool(flags & 2))
    limit = HEADER_SIZE + conn.max_frame_size

    decoded = bytearray()
    diverged = False  # the mirror refused a message, so its state lags behind
    for start in range(0, len(payload), chunk):
        conn.receive_data(payload[start : start + chunk])
        assert conn.buffered <= limit, (conn.buffered, limit)
        for event in conn.events():
            if isinstance(event, (ProtocolViolation, ConnectionClosed)):
                continue
            frame = encode(event)
            decoded += frame
            assert decode_frame(frame[HEADER_SIZE], frame[HEADER_SIZE + 1 :]) == event
            # What one side accepts, the other side's send() allows: the state
            # table reads the same both ways. The one exception: a WELCOME
            # announcing another limit than the mirror's own.
            try:
                mirror.send(event)
            except LocalProtocolError:
                assert diverged or isinstance(event, Welcome), event
                diverged = True
    if flags & 4:
        conn.receive_data(b"")
        list(conn.events())

    # Decoded frames are exactly the bytes they came from, in order.
    assert payload.startswith(decoded)
    if conn.state is State.ERROR:
        assert conn.error is not None
        frame = conn.error_frame()
        report = decode_frame(frame[HEADER_SIZE], frame[HEADER_SIZE + 1 :])
        assert isinstance(report, Error) and report.fatal and report.code is conn.error.code
    elif conn.state is not State.CLOSED:
        assert len(decoded) + conn.buffered == len(payload)


def main() -> None:
    import atheris  # type: ignore[import-untyped]

    # The codec is already imported (above), so instrument what is loaded
    # rather than wrapping the imports: this keeps the module importable
    # without atheris, for the hypothesis test that runs TestOneInput.
    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
