"""What the tests' stand-in gRPC servers share: a server stream fed by a queue.

A stand-in's streaming handler yields what others put on a queue of its own
(a room's LED frames, a chat's lines), while the call's requests, if any, are
read aside; when the call ends, both go.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

T = TypeVar("T")


@asynccontextmanager
async def fed_queue(
    queues: set[asyncio.Queue[T]], reading: Coroutine[Any, Any, None] | None = None
) -> AsyncIterator[asyncio.Queue[T]]:
    """A new queue, in ``queues`` (where what every stream gets is put) while
    the block lasts; ``reading`` (the call's requests) runs as a task as long."""
    queue: asyncio.Queue[T] = asyncio.Queue()
    queues.add(queue)
    reader = asyncio.create_task(reading) if reading is not None else None
    try:
        yield queue
    finally:
        queues.discard(queue)
        if reader is not None:
            reader.cancel()
