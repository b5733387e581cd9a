"""One asyncio event loop in a worker thread, owning every device's gRPC state.

Qt wants the main thread and qasync is not a dependency, so the grpc.aio
clients run on a loop of their own. Everything that touches a channel, a call
or a device's model happens on this loop; the Qt side only schedules work here
(``call_soon``, ``submit``) and hears back through queued Qt signals. One loop
for all devices keeps that rule simple: no state is shared between threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "device-grpc") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def call_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the loop thread; safe from any thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel whatever still runs on the loop, then end the thread."""
        if not self._thread.is_alive():
            return
        try:
            self.submit(self._cancel_all()).result(timeout)
        except TimeoutError:
            log.warning("loop tasks did not finish within %.1f s; stopping anyway", timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

    async def _cancel_all(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.loop.shutdown_asyncgens()
