"""What a TCP client's downlink and uplink need of its connection, and no more.

``Downlink`` and ``Uplink`` send frames to the client and log about it; the
connection (``hub.tcp.server.ClientConnection``) owns the transport, the
codec and the requests. They see it through this protocol, so that neither
imports the server.
"""

from __future__ import annotations

import logging
from typing import Protocol

from hub.errors import HubError
from hub.tcp import codec as proto


class Peer(Protocol):
    @property
    def id(self) -> str:
        """The connection's session id, named on every log line about it."""

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]: ...

    @property
    def codec(self) -> proto.Connection: ...

    def send(self, message: proto.Message | proto.Prepared, *, droppable: bool = False) -> None:
        """A frame, checked by the codec (a ``Prepared`` one is encoded already)."""

    def write(self, data: bytes, *, droppable: bool = False) -> None:
        """Bytes the codec has already checked and encoded (the hot path)."""

    def end_downlink(self, reason: proto.StreamEndReason) -> None:
        """End the stream the client is hearing, if any."""

    def fail_with(self, error: HubError, request: proto.FrameType | None = None) -> None:
        """End the connection with ``error`` as a fatal ERROR."""
