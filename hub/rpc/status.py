"""HubError → gRPC status, in one place."""

from __future__ import annotations

import urllib.parse
from typing import NoReturn

import grpc

from hub.addresses import host_block
from hub.errors import Code, HubError

STATUS: dict[Code, grpc.StatusCode] = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


async def abort(context: grpc.aio.ServicerContext, error: HubError) -> NoReturn:
    await context.abort(STATUS[error.code], error.message)
    raise AssertionError("context.abort returned")  # it always raises


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else None
    return None


def peer_address(peer: str) -> str:
    """Who a gRPC peer is, for per-peer limits: its address's ``host_block``.

    ``ipv4:192.0.2.7:51234`` is ``192.0.2.7``; ``ipv6:[2001:db8:1:2::9]:443``
    is ``2001:db8:1:2::/64``. Anything else (a Unix socket) is itself.
    """
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    rest = urllib.parse.unquote(rest)  # grpc writes ipv6:%5B::1%5D:port
    return host_block(rest.rsplit(":", 1)[0].strip("[]"))
