"""Bytes that do not parse, at every method of every gRPC service.

Through real gRPC with raw channel methods (no serializer: the test sends the
bytes as they are). Every malformed request is answered ``INVALID_ARGUMENT``
"malformed TYPE" (on a stream: the stream ends with it), the hub logs a few
warnings at most and never a traceback, and the hub goes on serving.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from chat_helpers import PASSWORD, OpenChannel, ServeHub, login, timeout
from google.protobuf.message import DecodeError, Message

from hub.audio.library import SoundLibrary
from hub.audio.sources import long_sound
from hub.core.ratelimit import LOG_LINES_BURST, LOG_LINES_PER_SECOND
from hub.proto import chat_pb2, comms_pb2
from hub.rpc import methods
from hub.rpc.chat import TOKEN_HEADER
from hub.rpc.devices import DEVICE_ID_HEADER

pytestmark = pytest.mark.asyncio

Code = grpc.StatusCode
Metadata = tuple[tuple[str, str], ...]
DEVICE = "com.opalcamera.test.DeviceService"
ROOM = "fuzz"


@dataclass(frozen=True, slots=True)
class Method:
    path: str
    kind: str  # "unary_unary", "unary_stream" or "stream_stream"
    request_type: type[Message]
    sample: Message  # a valid request, cut short for truncated payloads
    needs_token: bool = False
    device: bool = False


METHODS = (
    Method(
        "/chat.Chat/Login",
        "unary_unary",
        chat_pb2.LoginRequest,
        chat_pb2.LoginRequest(name="alice", password=PASSWORD),
    ),
    Method(
        "/chat.Chat/Logout",
        "unary_unary",
        chat_pb2.LogoutRequest,
        chat_pb2.LogoutRequest(token="a.b.c" * 8),
    ),
    Method(
        "/chat.Chat/Stream",
        "stream_stream",
        chat_pb2.StreamRequest,
        chat_pb2.StreamRequest(message="hello there, everyone"),
        needs_token=True,
    ),
    Method(
        "/chat.Rooms/Watch",
        "unary_stream",
        chat_pb2.WatchRequest,
        chat_pb2.WatchRequest(room="kitchen-and-hall"),
        needs_token=True,
    ),
    Method(
        "/chat.Rooms/Press",
        "unary_unary",
        chat_pb2.PressRequest,
        chat_pb2.PressRequest(room="kitchen-and-hall", button=chat_pb2.PressRequest.PLAY),
        needs_token=True,
    ),
    Method(
        f"/{DEVICE}/StatusStream",
        "stream_stream",
        comms_pb2.DeviceStatusResponse,
        comms_pb2.DeviceStatusResponse(status="LED 3 failed to light up"),
        device=True,
    ),
    Method(
        f"/{DEVICE}/EventStream",
        "stream_stream",
        comms_pb2.DeviceEvent,
        comms_pb2.DeviceEvent(
            button_event=comms_pb2.ButtonEvent(
                button_id=comms_pb2.ButtonEvent.BUTTON_2, event=comms_pb2.ButtonEvent.PRESS
            )
        ),
        device=True,
    ),
    Method(
        f"/{DEVICE}/ServerAudioStream",
        "unary_stream",
        comms_pb2.AudioStreamRequest,
        # A lone bool is two bytes; a varint cut short is malformed.
        comms_pb2.AudioStreamRequest(start=True),
        device=True,
    ),
)


def malformed(request_type: type[Message], data: bytes) -> bool:
    try:
        request_type.FromString(data)
    except DecodeError:
        return True
    return False


def payloads(method: Method, count: int, rng: random.Random) -> list[bytes]:
    """``count`` byte strings that do not parse as the method's request type:
    every truncation of a valid request that breaks it, bad UTF-8, a varint
    that never ends, then random bytes."""
    whole = method.sample.SerializeToString()
    found = [whole[:cut] for cut in range(1, len(whole))]
    found += [b"\x0a\x02\xff\xfe", b"\x08" + b"\xff" * 11, b"\x0f", b"\x00"]
    found = [data for data in found if malformed(method.request_type, data)]
    while len(found) < count:
        data = rng.randbytes(rng.randint(1, 64))
        if malformed(method.request_type, data):
            found.append(data)
    return found[:count]


def metadata(method: Method, token: str) -> Metadata:
    if method.device:
        return ((DEVICE_ID_HEADER, ROOM),)
    if method.needs_token:
        return ((TOKEN_HEADER, token),)
    return ()


async def drain(call: grpc.aio.UnaryStreamCall | grpc.aio.StreamStreamCall) -> None:
    """Read a call's responses to its end: gRPC gives its status only after them."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError:
        pass


async def expect_malformed(
    channel: grpc.aio.Channel, method: Method, data: bytes, meta: Metadata
) -> None:
    if method.kind == "unary_unary":
        unary = channel.unary_unary(method.path)
        try:
            await unary(data, metadata=meta, timeout=timeout())
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details()
        else:
            raise AssertionError(f"{method.path} accepted {data!r}")
    else:
        if method.kind == "unary_stream":
            call = channel.unary_stream(method.path)(data, metadata=meta, timeout=timeout())
        else:
            call = channel.stream_stream(method.path)(metadata=meta, timeout=timeout())
            await call.write(data)
        await drain(call)
        code, details = await call.code(), await call.details()
    expected = f"malformed {method.request_type.DESCRIPTOR.full_name}"
    assert (code, details) == (Code.INVALID_ARGUMENT, expected), (method.path, data)


def tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()[:200]}"
        for r in records
        if r.exc_info is not None or r.exc_text or "Traceback" in r.getMessage()
    ]


async def test_every_method_answers_malformed_bytes_invalid_argument_without_a_traceback(
    serve_hub: ServeHub, open_channel: OpenChannel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    served = await serve_hub(library=SoundLibrary({0: long_sound(0.01)}))
    channel = open_channel(served.address)
    token = await login(channel, "fuzzer")
    rng = random.Random(11)
    per_method = 1000  # 1,000 payloads to every method
    started = time.monotonic()
    limit = asyncio.Semaphore(16)

    async def one(method: Method, data: bytes) -> None:
        async with limit:
            await expect_malformed(channel, method, data, metadata(method, token))

    jobs: list[Awaitable[None]] = [
        one(method, data) for method in METHODS for data in payloads(method, per_method, rng)
    ]
    assert len(jobs) == per_method * len(METHODS)
    await asyncio.gather(*jobs)
    elapsed = time.monotonic() - started

    assert not tracebacks(caplog.records)
    warned = [r for r in caplog.records if r.name == methods.__name__]
    assert warned, "malformed requests are logged"
    assert all(r.levelno == logging.WARNING for r in warned)
    # Rate-limited: a few lines a second per service (three services), not 1,000.
    bound = 3 * (LOG_LINES_BURST + LOG_LINES_PER_SECOND * (elapsed + 1))
    assert len(warned) <= bound, (len(warned), elapsed)

    # The hub goes on serving, the fuzzer's own session included.
    assert await login(channel, "after") != token
    assert served.hub.rooms.get(ROOM).members == 0


async def test_a_malformed_chat_line_ends_only_that_stream(
    serve_hub: ServeHub, open_channel: OpenChannel, caplog: pytest.LogCaptureFixture
) -> None:
    served = await serve_hub(library=SoundLibrary({0: long_sound(0.01)}))
    channel = open_channel(served.address)
    token = await login(channel, "alice")
    stream = channel.stream_stream("/chat.Chat/Stream")(
        metadata=((TOKEN_HEADER, token),), timeout=timeout()
    )
    good = chat_pb2.StreamRequest(message="before").SerializeToString()
    await stream.write(good)
    echo: Callable[[bytes], chat_pb2.StreamResponse] = chat_pb2.StreamResponse.FromString
    assert echo(await stream.read()).client_message.message == "before"
    await stream.write(b"\x0a\x05abc")  # a length that runs past the end
    assert await stream.code() is Code.INVALID_ARGUMENT
    assert await stream.details() == "malformed chat.StreamRequest"
    assert not tracebacks(caplog.records)
    # The session and its token live on: a new stream works.
    again = channel.stream_stream("/chat.Chat/Stream")(
        metadata=((TOKEN_HEADER, token),), timeout=timeout()
    )
    await again.write(chat_pb2.StreamRequest(message="after").SerializeToString())
    assert echo(await again.read()).client_message.message == "after"
    again.cancel()
