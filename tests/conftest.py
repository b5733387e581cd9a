"""Shared fixtures: a real Hub behind a real grpc.aio server on 127.0.0.1, port 0.

- ``token_secret``: the signing secret every test hub uses (40 bytes).
- ``hub_settings``: the Settings ``hub_server`` starts with; override it in a
  module (redefine the fixture) or per test
  (``@pytest.mark.parametrize("hub_settings", [...], indirect=True)``).
- ``hub_options``: more keyword arguments for ``Hub(...)`` in ``hub_server``
  (e.g. ``library=``); none by default.
- ``serve_hub``: a factory, ``await serve_hub(settings, clock=..., **hub_options)``,
  that starts one more hub and server and stops them at teardown.
- ``hub_server``: one running hub with ``hub_settings``: a ``ServedHub`` that
  unpacks as ``hub, address = hub_server``.
- ``open_channel``: a factory, ``open_channel(address, options=())``, of
  insecure channels, closed at teardown.
- ``channel``: a channel to ``hub_server``.
- ``procs``: real `hub` processes (``cli_helpers.Procs``), stopped at teardown.

Their types (``ServedHub``, ``ServeHub``, ``OpenChannel``), the constants, the
wait helpers (``timeout``, ``eventually``), ``settings_param`` for a settings
fixture and the ``no_errors_logged`` fixture (autouse where imported) live in
``chat_helpers``: import that, never ``conftest`` (each test folder has its
own). The one fake clock is ``fake_clock.FakeClock`` (``clock_from_now()``
for a hub whose timestamps must look recent): given to a hub, its grace,
expiry, linger and flash timers run only when the test moves time on, so a
test of them waits no real second. Every timeout is a sanity bound scaled by
``HUB_TEST_TIMEOUT_FACTOR``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest
import pytest_asyncio
from chat_helpers import (
    PASSWORD,
    SECRET,
    OpenChannel,
    ServedHub,
    ServeHub,
    run_hub,
    settings_param,
)
from cli_helpers import Procs

from hub.clock import Clock
from hub.core.hub import Hub
from hub.settings import ChatSettings, Settings


@pytest.fixture
def token_secret() -> bytes:
    return SECRET


@pytest.fixture
def hub_settings(request: pytest.FixtureRequest) -> Settings:
    return settings_param(request, lambda: Settings(chat=ChatSettings(password=PASSWORD)))


@pytest_asyncio.fixture
async def serve_hub(token_secret: bytes) -> AsyncIterator[ServeHub]:
    async with AsyncExitStack() as stack:

        async def serve(
            settings: Settings | None = None, *, clock: Clock | None = None, **options: Any
        ) -> ServedHub:
            settings = settings or Settings(chat=ChatSettings(password=PASSWORD))
            hub = Hub(settings, clock=clock, secret=token_secret, **options)
            address, server = await run_hub(stack, hub)
            return ServedHub(hub, address, server)

        yield serve


@pytest.fixture
def hub_options() -> dict[str, Any]:
    return {}


@pytest_asyncio.fixture
async def hub_server(
    serve_hub: ServeHub, hub_settings: Settings, hub_options: dict[str, Any]
) -> ServedHub:
    return await serve_hub(hub_settings, **hub_options)


@pytest_asyncio.fixture
async def open_channel() -> AsyncIterator[OpenChannel]:
    channels: list[grpc.aio.Channel] = []

    def open_(address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address, options=options)
        channels.append(channel)
        return channel

    yield open_
    for channel in channels:
        await channel.close()


@pytest_asyncio.fixture
async def channel(hub_server: ServedHub, open_channel: OpenChannel) -> grpc.aio.Channel:
    return open_channel(hub_server.address)


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    yield started
    started.stop_all()
