"""Three hub processes on one Redis behind a real HAProxy, run from deploy/haproxy.cfg.

Clients dial only the balancer. Their connections land on different hubs
(HAProxy's own counters say so, and so do the hubs' logs), and still every
line reaches every client exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from chat_helpers import Stream, eventually, kind, login
from cluster_helpers import Cluster, ClusterHub
from haproxy_helpers import Balancer, start_haproxy
from waiting import Changes

from hub.proto import chat_pb2

STREAMING = re.compile(r".* INFO hub\.tcp\.server: streaming on 127\.0\.0\.1:(\d+)")
# Each client its own TCP connection through the balancer.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
CLIENTS = 6


def doors(hub: ClusterHub) -> dict[str, int]:
    """The hub's port for each door HAProxy fronts (from its -v start-up lines)."""
    (stream,) = (int(m[1]) for line in hub.proc.lines if (m := STREAMING.fullmatch(line)))
    # Every gRPC port serves every service: the devices' door is the chat port here.
    return {"chat": hub.port, "devices": hub.port, "stream": stream}


@pytest.fixture
def balanced(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[list[ClusterHub], Balancer]]:
    """Three hubs on the Redis of ``cluster``, and HAProxy in front of them."""
    hubs = [cluster.hub("-v") for _ in range(3)]
    balancer = start_haproxy(tmp_path, [doors(hub) for hub in hubs])
    yield hubs, balancer
    balancer.stop()


class Client:
    """A chat user on its own connection through the balancer; reads in the background."""

    def __init__(self, address: str, name: str) -> None:
        self.name = name
        self.channel = grpc.aio.insecure_channel(address, options=OWN_CONNECTION)
        self.messages: list[tuple[str, str]] = []
        self.changes = Changes()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        token = await login(self.channel, self.name)
        self.stream = Stream(self.channel, token)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.stream.call:
            assert isinstance(event, chat_pb2.StreamResponse)
            if kind(event) == "client_message":
                self.messages.append((event.client_message.name, event.client_message.message))
                self.changes.notify()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._reader
        await self.channel.close()


async def wait_all(clients: list[Client], text: str, seconds: float = 10) -> None:
    """Until every client has received a line starting with ``text``."""
    for client in clients:
        await client.changes.wait_for(
            lambda c=client: any(m.startswith(text) for _, m in c.messages),  # type: ignore[misc]
            seconds,
            lambda c=client: f"{c.name} never got {text!r}: {c.messages}",  # type: ignore[misc]
        )


@pytest.mark.asyncio
async def test_clients_chat_through_haproxy_across_three_hubs(
    balanced: tuple[list[ClusterHub], Balancer],
) -> None:
    hubs, balancer = balanced
    clients = [Client(balancer.address("chat"), f"user{i}") for i in range(CLIENTS)]
    try:
        for client in clients:
            await client.start()

        # The balancer spread the connections: every hub took some...
        landed = balancer.sessions("chat")
        assert sorted(landed) == ["hub1", "hub2", "hub3"]
        assert all(count >= 1 for count in landed.values()), landed
        # ...and each hub logged in the users whose connections it was given.
        for client in clients:
            await eventually(
                lambda c=client: any(logged_in(hub, c.name) for hub in hubs),  # type: ignore[misc]
                f"a hub logging {client.name}'s login",
            )
        logins = {
            client.name: [i for i, hub in enumerate(hubs) if logged_in(hub, client.name)]
            for client in clients
        }
        assert all(len(where) == 1 for where in logins.values()), logins
        assert {where[0] for where in logins.values()} == {0, 1, 2}, logins

        # Every stream subscribed on every hub: probe until all have seen one.
        for attempt in range(50):
            await clients[0].stream.send(f"probe {attempt}")
            with contextlib.suppress(AssertionError):
                await wait_all(clients, "probe", seconds=0.3)
                break
        else:
            raise AssertionError("the probes never reached every client")

        for client in clients:
            await client.stream.send(f"hello from {client.name}")
        for client in clients:
            await wait_all(clients, f"hello from {client.name}")
        await clients[-1].stream.send("the end")
        await wait_all(clients, "the end")
        for client in clients:
            hellos = Counter(m for _, m in client.messages if m.startswith("hello from"))
            assert hellos == {f"hello from {c.name}": 1 for c in clients}, client.name
            senders = {m: name for name, m in client.messages if m.startswith("hello from")}
            assert all(m == f"hello from {name}" for m, name in senders.items())
    finally:
        for client in clients:
            await client.close()


def logged_in(hub: ClusterHub, name: str) -> bool:
    pattern = re.compile(rf".* INFO hub\.core\.chat: [0-9a-f]+: '{name}' logged in.*")
    return any(pattern.fullmatch(line) for line in list(hub.proc.lines))
