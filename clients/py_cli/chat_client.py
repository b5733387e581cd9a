"""The reference chat protocol, client side, over grpc.aio: no printing, no input.

``ChatClient`` dials, logs in, opens the one ``Stream``, sends lines and logs
out; the terminal program (``clients.py_cli.chat``) decides what to show and
when to stop. Errors are gRPC's own ``grpc.aio.AioRpcError``; ``rpc_error_text``
renders one the way the reference (a Go program) prints it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from hub.proto import chat_pb2, chat_pb2_grpc

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-chat-token"

# The reference dials with a 1 s deadline and prints "context deadline
# exceeded" when it runs out; same here.
CONNECT_TIMEOUT = 1.0
# The reference gives Login 1 s. A busy Python server can take longer than a
# Go one, and a user would rather wait a moment than be turned away.
LOGIN_TIMEOUT = 5.0
# Logout happens on the way out: do not keep a leaving user waiting long.
LOGOUT_TIMEOUT = 2.0

# Go's names for the status codes (google.golang.org/grpc/codes), which the
# reference prints in its error lines; note Go's "Canceled".
GO_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def rpc_error_text(code: grpc.StatusCode | None, details: str | None) -> str:
    """``rpc error: code = Unauthenticated desc = password is incorrect``, as Go prints it."""
    name = GO_CODE_NAMES.get(code, "Unknown") if code is not None else "Unknown"
    desc = details or ""
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and desc == "Deadline Exceeded":
        desc = "context deadline exceeded"  # what a Go client says for the same thing
    return f"rpc error: code = {name} desc = {desc}"


def error_text(error: grpc.RpcError) -> str:
    """``rpc_error_text`` of a failed call."""
    if isinstance(error, grpc.aio.AioRpcError):
        return rpc_error_text(error.code(), error.details())
    return rpc_error_text(None, str(error))


class StreamEnded(Exception):
    """A line could not be sent: the stream has ended (``events`` tells why)."""


async def _write(call: grpc.aio.StreamStreamCall, request: chat_pb2.StreamRequest) -> None:
    """``call.write(request)`` without grpc.aio's status overwrite (grpc/grpc#36066).

    When a write is in flight as the server ends the stream (a refused line,
    the rate limit), grpc.aio's ``write`` sets INTERNAL "Internal error from
    Core" as the call's status, over the server's own or before it lands,
    and a read then reports that about half the time instead of, say,
    RESOURCE_EXHAUSTED. This sends the same bytes the same way but leaves the
    status to the server. Without the internal call object (a grpcio that
    changed), it is ``call.write``.
    """
    send = getattr(getattr(call, "_cython_call", None), "send_serialized_message", None)
    if send is None:
        await call.write(request)
        return
    if call.done():
        raise StreamEnded("the stream has ended")
    try:
        # As ``write`` does: our own headers go first (not the server's, which
        # a server may send only with its first message).
        await call.wait_for_connection()
    except grpc.aio.AioRpcError as error:
        raise StreamEnded("the stream has ended") from error
    if call.done():
        raise StreamEnded("the stream has ended")
    try:
        await send(request.SerializeToString())
    except grpc.aio.InternalError as error:  # Core refused the write: the stream is closed
        raise StreamEnded("the stream has ended") from error
    except asyncio.CancelledError:
        if not call.cancelled():
            call.cancel()
        raise


class ConnectTimeout(Exception):
    """The server could not be reached within the dial deadline."""


class ChatClient:
    """One user's connection to a chat server.

    The order is the reference's: ``connect``, ``login``, ``open_stream``, then
    ``events`` and ``send`` concurrently, and ``logout`` (or not, after the
    server said it is shutting down). ``close`` releases the channel.
    """

    def __init__(
        self,
        target: str,
        *,
        channel: grpc.aio.Channel | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        login_timeout: float = LOGIN_TIMEOUT,
        logout_timeout: float = LOGOUT_TIMEOUT,
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.login_timeout = login_timeout
        self.logout_timeout = logout_timeout
        self._channel = channel if channel is not None else grpc.aio.insecure_channel(target)
        self._stub = chat_pb2_grpc.ChatStub(self._channel)  # type: ignore[no-untyped-call]
        self.name = ""
        self.token = ""
        self._call: grpc.aio.StreamStreamCall | None = None
        # Own lines sent but not yet seen coming back from the room: the
        # server echoes every line to its sender, which is how a leaving
        # client knows its last lines were delivered (see ``flush``).
        self._unconfirmed = 0
        self._confirmed = asyncio.Event()
        self._confirmed.set()

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

    async def connect(self) -> None:
        """Wait until the channel is connected; ``ConnectTimeout`` after ``connect_timeout``."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self.connect_timeout)
        except TimeoutError:
            raise ConnectTimeout(
                f"{self.target}: not reachable within {self.connect_timeout:g} s"
            ) from None

    async def login(self, name: str, password: str) -> str:
        """Log in; returns the token. Raises ``grpc.aio.AioRpcError`` when refused."""
        response = await self._stub.Login(
            chat_pb2.LoginRequest(password=password, name=name), timeout=self.login_timeout
        )
        self.name = name
        self.token = response.token
        return self.token

    def open_stream(self) -> None:
        """Start the room's stream with the token; its failures surface in ``events``.

        Nothing is awaited: a server need not send a stream's headers before
        its first event (grpc-go servers, the reference among them, do not),
        so a client alone in the room would wait for them indefinitely. Lines
        may be sent at once; the server has this stream in the room only once
        an event arrives through it.
        """
        if not self.token:
            raise RuntimeError("open_stream before login")
        self._call = self._stub.Stream(metadata=((TOKEN_HEADER, self.token),))

    async def events(self) -> AsyncIterator[chat_pb2.StreamResponse]:
        """The stream's events until the server ends it.

        Ends quietly when the server closes the stream with OK; raises
        ``grpc.aio.AioRpcError`` when it ends with an error status.
        """
        call = self._require_call()
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            if (
                response.WhichOneof("event") == "client_message"
                and response.client_message.name == self.name
                and self._unconfirmed
            ):
                self._unconfirmed -= 1
                if not self._unconfirmed:
                    self._confirmed.set()
            yield response

    async def send(self, message: str) -> None:
        """Send one line to the room.

        Raises ``StreamEnded`` (or, from a plain ``call.write``,
        ``grpc.RpcError`` or ``asyncio.InvalidStateError``) when the stream has
        already ended; ``events`` then tells why.
        """
        call = self._require_call()
        self._unconfirmed += 1
        self._confirmed.clear()
        await _write(call, chat_pb2.StreamRequest(message=message))

    async def flush(self) -> None:
        """Wait until every line sent so far has come back from the room.

        Only meaningful while ``events`` is being consumed; bound it with a
        timeout (a peer with the same name can make the count inexact).
        """
        await self._confirmed.wait()

    def close_stream(self) -> None:
        """Cancel the stream, if open (Go's context cancel)."""
        if self._call is not None:
            self._call.cancel()

    async def logout(self) -> None:
        """Log out. Raises ``grpc.aio.AioRpcError`` when refused."""
        await self._stub.Logout(
            chat_pb2.LogoutRequest(token=self.token), timeout=self.logout_timeout
        )

    async def close(self) -> None:
        self.close_stream()
        await self._channel.close()

    def _require_call(self) -> grpc.aio.StreamStreamCall:
        if self._call is None:
            raise RuntimeError("the stream is not open")
        return self._call
