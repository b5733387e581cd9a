"""Every method of every service: raw bytes in, parsed in one place.

gRPC's own request deserializer cannot choose how a failure is answered: an
exception raised there becomes ``UNKNOWN`` with the exception's text and a
traceback in the log, per request (and on a stream, the end of it with
``UNAVAILABLE``). Bad bytes are the client's fault, so every method is
registered here without a deserializer and its requests are parsed here: one
that does not parse is refused with ``INVALID_ARGUMENT`` "malformed TYPE",
and logged as one warning line, a few a second at most (RateLimitedLog),
never a traceback.

A stream's requests are parsed as they are read: the first that does not
parse raises ``InvalidArgument`` from the request iterator, and the stream
ends with it. Any ``HubError`` that escapes a handler is its call's status
(``hub.rpc.status``), so no handler can leave a refusal to grpc's UNKNOWN.

Responses are bytes: every handler serializes its own (often once for many
streams), so no response serializer is registered either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from hub.clock import Clock
from hub.core.ratelimit import RateLimitedLog
from hub.errors import HubError, InvalidArgument, Unavailable
from hub.rpc.status import abort

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
R = TypeVar("R")  # what gRPC hands a method: bytes, or an iterator of them
# What a streaming handler is: an async generator of serialized responses.
Responses = AsyncGenerator[bytes, None]


class Closeable(Protocol):
    """A stream's outbound side: ``close(error)`` ends it with ``error`` as status."""

    def close(self, error: HubError | None = None) -> None: ...


class Methods:
    """One service's method table, built with ``unary_unary`` and the like."""

    def __init__(self, service: str, clock: Clock) -> None:
        self.service = service
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        # An operator should see an attack or a broken client, not a flood.
        self._warnings = RateLimitedLog(log, clock)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(self.service, self._handlers)

    def unary_unary(
        self,
        name: str,
        behaviour: Callable[[M, grpc.aio.ServicerContext], Awaitable[bytes]],
        request_type: type[M],
    ) -> None:
        async def method(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                request = self.parse(request_type, data, name, context)
                return await behaviour(request, context)
            except HubError as error:
                await abort(context, error)

        self._handlers[name] = grpc.unary_unary_rpc_method_handler(method)

    def unary_stream(
        self,
        name: str,
        behaviour: Callable[[M, grpc.aio.ServicerContext], Responses],
        request_type: type[M],
    ) -> None:
        def start(data: bytes, context: grpc.aio.ServicerContext) -> Responses:
            return behaviour(self.parse(request_type, data, name, context), context)

        self._handlers[name] = grpc.unary_stream_rpc_method_handler(_streaming(start))

    def stream_stream(
        self,
        name: str,
        behaviour: Callable[[AsyncIterator[M], grpc.aio.ServicerContext], Responses],
        request_type: type[M],
    ) -> None:
        def start(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Responses:
            return behaviour(self.parse_each(request_type, requests, name, context), context)

        self._handlers[name] = grpc.stream_stream_rpc_method_handler(_streaming(start))

    def parse(
        self, request_type: type[M], data: bytes, method: str, context: grpc.aio.ServicerContext
    ) -> M:
        """``data`` as a ``request_type``, or InvalidArgument (and a warning, rate-limited)."""
        try:
            return request_type.FromString(data)
        except DecodeError:
            type_name = request_type.DESCRIPTOR.full_name
            self._warn(type_name, method, context)
            raise InvalidArgument(f"malformed {type_name}") from None

    async def parse_each(
        self,
        request_type: type[M],
        requests: AsyncIterator[bytes],
        method: str,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[M]:
        async for data in requests:
            yield self.parse(request_type, data, method, context)

    def _warn(self, type_name: str, method: str, context: grpc.aio.ServicerContext) -> None:
        self._warnings.warning(
            "malformed %s from %s to %s/%s refused", type_name, context.peer(), self.service, method
        )


def _streaming(
    start: Callable[[R, grpc.aio.ServicerContext], Responses],
) -> Callable[[R, grpc.aio.ServicerContext], Responses]:
    """A streaming method: the responses of ``start(request, context)``, and
    a HubError raised by ``start`` (a malformed request) or by them as status."""

    async def method(request: R, context: grpc.aio.ServicerContext) -> Responses:
        try:
            async with aclosing(start(request, context)) as responses:
                async for response in responses:
                    yield response
        except HubError as error:
            await abort(context, error)

    return method


async def consume(
    requests: AsyncIterator[M],
    handle: Callable[[M], Awaitable[None]],
    stream: Closeable,
    label: str,
) -> None:
    """Hand each of a stream's requests to ``handle``, as the stream's reader task.

    The task ends with the requests; a refusal (a malformed request, a refused
    line) ends ``stream`` with its status, so the stream is never left open
    with nobody reading it. Run it beside the writer and cancel it when the
    writer ends.
    """
    try:
        async for request in requests:
            await handle(request)
    except HubError as error:
        stream.close(error)
    except asyncio.CancelledError:
        raise
    except (grpc.RpcError, grpc.aio.AbortError):
        # The peer went away mid-read, or the writer side aborted the call
        # with a status (which wakes this read with AbortError).
        pass
    except Exception:
        log.exception("%s: reading the stream failed", label)
        stream.close(Unavailable("internal error"))
