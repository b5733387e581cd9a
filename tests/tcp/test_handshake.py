"""The handshake over real loopback sockets, as docs/protocol.md sections 2, 4
and 11 state it: what a stranger may send before WELCOME, how long it may
take, how many connections one address may hold, and how a HELLO is refused.

Bytes are written raw where a correct client would never send them; the
replies are read through the reference codec (``RawClient``).
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from chat_helpers import eventually
from raw_client import RawClient
from tcp_helpers import Connect, Serve

from hub.settings import StreamSettings
from hub.tcp.codec import (
    MIN_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    ErrorCode,
    FrameType,
    Hello,
    ListTracks,
    Ping,
    Pong,
    encode,
)

pytestmark = pytest.mark.asyncio


# -- section 2: 8,192 bytes before WELCOME -----------------------------------------


async def test_a_header_over_8192_before_welcome_is_refused_at_once(
    serve: Serve, connect: Connect
) -> None:
    """The server announces 64 KiB, but until WELCOME a header announcing
    8,193 bytes is refused as soon as it arrives, without its body."""
    served = await serve()
    header_only = await connect(served.address, hello=False)
    header_only.send_raw((MIN_MAX_FRAME_SIZE + 1).to_bytes(4) + bytes([FrameType.HELLO]))
    error = await header_only.fatal_error()
    assert error.code is ErrorCode.FRAME_TOO_LARGE
    assert "8192" in error.text

    # A whole 9,000-byte HELLO is not parsed either: refused by its length.
    big = await connect(served.address, hello=False)
    payload = PROTOCOL_VERSION.to_bytes(2) + (9000 - 5).to_bytes(2) + b"x" * (9000 - 5)
    big.send_raw((1 + len(payload)).to_bytes(4) + bytes([FrameType.HELLO]) + payload)
    assert (await big.fatal_error()).code is ErrorCode.FRAME_TOO_LARGE

    # Once welcomed, the announced 64 KiB applies: a 9,000-byte frame is read
    # (and judged by its content: a LIST with a payload is malformed).
    welcomed = await connect(served.address)
    assert welcomed.welcome is not None and welcomed.welcome.max_frame_size == 65536
    welcomed.send_raw((9000).to_bytes(4) + bytes([FrameType.LIST]) + bytes(8999))
    error = await welcomed.fatal_error()
    assert (error.code, error.request) == (ErrorCode.BAD_FRAME, FrameType.LIST)


# -- section 4: refusals of HELLO name HELLO ----------------------------------------


async def test_every_refusal_of_hello_names_hello(serve: Serve, connect: Connect) -> None:
    served = await serve(StreamSettings(require_token=True, max_connections=2))
    _, token = await served.hub.sessions.create("alice")

    missing = await connect(served.address, hello=False)
    missing.send(Hello(PROTOCOL_VERSION, "no token"))
    forged = await connect(served.address, hello=False)
    forged.send(Hello(PROTOCOL_VERSION, "forger", token[:-4] + "AAAA"))
    for client in (missing, forged):
        error = await client.fatal_error()
        assert (error.code, error.request) == (ErrorCode.UNAUTHENTICATED, FrameType.HELLO)
    await eventually(lambda: not served.server.clients, "the refused ones gone")

    await connect(served.address, token=token)
    await connect(served.address, token=token)
    third = await connect(served.address, hello=False)
    third.send(Hello(PROTOCOL_VERSION, "third", token))
    error = await third.fatal_error()
    assert (error.code, error.request) == (ErrorCode.UNAVAILABLE, FrameType.HELLO)

    late = await connect(served.address, hello=False)
    await served.hub.shutdown()  # the hub is stopping; the door is still open
    late.send(Hello(PROTOCOL_VERSION, "late", token))
    error = await late.fatal_error()
    assert (error.code, error.request) == (ErrorCode.SHUTDOWN, FrameType.HELLO)


async def test_a_request_right_behind_hello_is_bad_state(serve: Serve, connect: Connect) -> None:
    """Section 3: no pipelining across the handshake. A LIST that arrives
    before the server has sent WELCOME ends the connection as bad_state."""
    served = await serve()
    eager = await connect(served.address, hello=False)
    eager.send_raw(encode(Hello(PROTOCOL_VERSION, "eager")) + encode(ListTracks()))
    error = await eager.fatal_error()
    assert (error.code, error.request) == (ErrorCode.BAD_STATE, FrameType.LIST)


# -- section 11: the handshake deadline and connections per address -----------------


async def test_a_peer_that_drips_its_hello_is_closed_at_the_deadline(
    serve: Serve, connect: Connect
) -> None:
    """Every byte resets the idle timer (60 s here); the handshake deadline
    is not reset by anything."""
    served = await serve(StreamSettings(handshake_timeout=0.2))
    began = time.monotonic()
    dripper = await connect(served.address, hello=False)
    silent = await connect(served.address, hello=False)
    # Never reads, never closes: cut off once its ERROR has lingered for the
    # handshake deadline too (not for the idle timeout).
    stubborn = socket.socket()
    stubborn.setblocking(False)
    host, _, port = served.address.rpartition(":")
    await asyncio.get_running_loop().sock_connect(stubborn, (host, int(port)))
    hello = encode(Hello(PROTOCOL_VERSION, "drip" * 16))  # 75 bytes: 3.75 s at this pace
    sent = 0
    while not dripper.closed and sent < len(hello):
        dripper.send_raw(hello[sent : sent + 1])
        sent += 1
        await asyncio.sleep(0.05)  # the attacker's pace
    assert sent < len(hello), "the whole HELLO went through"
    for client in (dripper, silent):
        error = await client.fatal_error()
        assert error.code is ErrorCode.TIMEOUT
        assert error.text == "no HELLO answered within 0.2 s"
        assert client.eof
    told = next(r.time for r in dripper.received if r.event is dripper.errors()[-1])
    assert told - began >= 0.2
    # A client that said HELLO in time stays for as long as it likes.
    honest = await connect(served.address)
    await asyncio.sleep(0.4)  # twice the deadline
    honest.send(Ping(1))
    assert (await honest.next(Pong)).nonce == 1
    await eventually(lambda: len(served.server.clients) == 1, "only the honest one left")
    stubborn.close()


async def test_connections_per_address_are_bounded(serve: Serve, connect: Connect) -> None:
    served = await serve(StreamSettings(max_connections_per_peer=3))
    first = await connect(served.address)
    others = [await connect(served.address) for _ in range(2)]
    refused = await connect(served.address, hello=False)
    error = await refused.fatal_error()
    assert (error.code, error.request) == (ErrorCode.UNAVAILABLE, None)
    assert error.text == "too many connections from your address (at most 3)"
    assert refused.eof
    for client in others:  # the admitted ones are untouched
        client.send(Ping(2))
        assert (await client.next(Pong)).nonce == 2
    # A slot that frees up can be taken again.
    first.close()
    await eventually(lambda: served.server.per_peer["127.0.0.1"] == 2, "the slot freed")
    again = await RawClient.connect(served.address)
    await again.hello()
    again.close()
    again.check()
