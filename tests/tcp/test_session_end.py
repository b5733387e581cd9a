"""A TCP connection opened with a token ends with its session: expiry as Logout.

(``test_server.test_logout_ends_the_connection`` covers Logout.) The session
is ended the way its expiry timer ends it, so the test need not wait out a
token lifetime.
"""

from __future__ import annotations

import pytest
from chat_helpers import eventually
from tcp_helpers import ALPHA, Connect, Serve

from hub.core.events import LeaveReason
from hub.settings import StreamSettings
from hub.tcp.codec import ErrorCode, Ping, Play, Pong, StreamStart

pytestmark = pytest.mark.asyncio


async def test_expiry_ends_the_connection(serve: Serve, connect: Connect) -> None:
    served = await serve(StreamSettings(require_token=True))
    session, token = served.hub.sessions.create("alice")
    alice = await connect(served.address, token=token)
    bystander = await connect(served.address, token=served.hub.sessions.create("bob")[1])
    alice.send(Play(ALPHA))
    await alice.next(StreamStart)
    served.hub.sessions.end(session, LeaveReason.EXPIRED)
    error = await alice.fatal_error()
    assert (error.code, error.text) == (ErrorCode.UNAUTHENTICATED, "token expired")
    assert alice.eof
    await eventually(lambda: not session.streams, "the session has no stream left")
    bystander.send(Ping(1))
    assert (await bystander.next(Pong)).nonce == 1
