"""``hub -s --workers N``: N hub processes on the same ports, and their supervisor.

One grpc.aio event loop fills one core. To use a larger machine's cores, the
parent starts N ordinary hub processes, the *workers*, each listening on the
same ports with SO_REUSEPORT (``Settings.reuse_port``): the kernel spreads new
connections over them. They share sessions, chat and rooms through the Redis
backplane exactly as hubs on separate machines do, so ``--workers`` needs
``--redis``.

The parent serves nothing. It starts the workers as ``python -m hub.workers I
PARENT_PID <the same arguments>``, forwards SIGINT and SIGTERM to them, and exits when
they all have: 0 if every worker stopped cleanly. It restarts none. A worker
that exits on its own is logged, the others are stopped, and the parent exits
1: whoever supervises the parent (systemd, Docker's restart policy,
Kubernetes) then restarts the group, instead of the parent hiding a crash loop
behind silent restarts. A worker asks the kernel for SIGTERM when its parent
dies, even by SIGKILL, so no worker outlives its supervisor.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hub.lines import PROCESS, Printer

if TYPE_CHECKING:
    from hub.config import Config

# Not __name__: a worker runs this module as __main__ (python -m hub.workers).
log = logging.getLogger("hub.workers")

# How long the parent waits for its workers to finish after passing on a stop
# signal before it kills them: a worker's own budget (hub.app.SHUTDOWN_GRACE,
# then the streaming door's close) with room to spare, and still inside the
# 10 s that Docker and Kubernetes wait before their SIGKILL.
WORKER_STOP_TIMEOUT = 8.0
# <sys/prctl.h>: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def refusal(config: Config) -> str | None:
    """Why ``config`` cannot run as workers, in one line; None if it can."""
    if not config.redis:
        return (
            "--workers needs --redis URL (or HUB_REDIS_URL): without a shared backplane "
            "each worker would be a separate hub behind one port"
        )
    if config.metrics_address != "none":
        return (
            "--metrics-address with --workers is not supported: each worker counts its "
            "own share, and one shared port would show a different worker at each scrape"
        )
    from hub.app import StartError
    from hub.cli import backplane_from
    from hub.settings import Settings

    try:
        # The checks every worker would make (secret, redis package, URL), once.
        backplane_from(config, Settings())
    except StartError as error:
        return str(error)
    return None


def run(config: Config, argv: Sequence[str], printer: Printer) -> int:
    """``hub -s --workers N``: refuse in one line, or supervise N workers."""
    from hub.cli import run_on

    if why := refusal(config):
        printer.line(PROCESS, why)
        return 1
    return run_on(config.loop, supervise(argv, config))


# -- the parent ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Doors:
    """The three listening addresses a worker is given (``none`` for a shut door)."""

    host: str
    device: str
    stream: str

    @classmethod
    def of(cls, config: Config) -> Doors:
        return cls(config.host, config.device_address, config.stream_address)

    def as_args(self) -> list[str]:
        return ["-h", self.host, "--device-address", self.device, "--stream-address", self.stream]


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def reserve(doors: Doors) -> tuple[Doors, list[socket.socket]]:
    """Give every door on port 0 a real port that all workers can share.

    Port 0 would give each worker its own port. Instead the parent binds one
    socket per such door with SO_REUSEPORT, keeps it (bound, never listening,
    so it takes no connections) for the workers' lifetime so that nobody else
    takes the port, and hands the workers the real port.
    """
    held: list[socket.socket] = []

    def real(address: str) -> str:
        if address.lower() == "none":
            return address
        host, port = _split(address)
        if port != 0:
            return address
        family, kind, proto, _, where = socket.getaddrinfo(
            host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        held.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(where)
        return f"{address.rpartition(':')[0]}:{sock.getsockname()[1]}"

    try:
        # Each door on port 0 its own port, as hub.cli.serve gives one hub.
        return Doors(real(doors.host), real(doors.device), real(doors.stream)), held
    except BaseException:
        for sock in held:
            sock.close()
        raise


async def supervise(argv: Sequence[str], config: Config) -> int:
    """Run ``config.workers`` workers until a signal or until one exits; the exit status."""
    try:
        doors, held = reserve(Doors.of(config))
    except (OSError, ValueError) as error:
        log.error("cannot reserve the ports for the workers: %s", error)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    workers: list[asyncio.subprocess.Process] = []
    try:
        for index in range(config.workers):
            workers.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "hub.workers",
                    str(index),
                    str(os.getpid()),
                    *argv,
                    *doors.as_args(),
                    stdin=asyncio.subprocess.DEVNULL,
                )
            )
        log.info("started %d workers: pids %s", len(workers), " ".join(str(w.pid) for w in workers))
        return await _watch(workers, stop)
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        for sock in held:
            sock.close()


async def _watch(workers: list[asyncio.subprocess.Process], stop: asyncio.Event) -> int:
    exits = {asyncio.ensure_future(w.wait()): i for i, w in enumerate(workers)}
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([*exits, stopping], return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if stopping not in done:
            first = next(task for task in exits if task in done)
            worker = workers[exits[first]]
            log.error(
                "worker %d (pid %d) exited with status %s; stopping the others",
                exits[first],
                worker.pid,
                worker.returncode,
            )
            status = 1
        for worker in workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(WORKER_STOP_TIMEOUT):
                await asyncio.gather(*exits)
        except TimeoutError:
            late = [w.pid for w in workers if w.returncode is None]
            log.error("workers %s did not stop within %s s: killed", late, WORKER_STOP_TIMEOUT)
            return 1
        if any(w.returncode != 0 for w in workers):
            codes = ", ".join(f"{i}: {w.returncode}" for i, w in enumerate(workers))
            log.error("workers exited with statuses %s", codes)
            return 1
        return status
    finally:
        stopping.cancel()
        for task in exits:
            task.cancel()


# -- a worker ------------------------------------------------------------------


class _WorkerMarker(logging.Filter):
    """Puts ``worker I (pid P): `` before every record's message, in either log
    format, so that a reader sees which worker a line came from."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.marker = f"worker {index} (pid {os.getpid()}): "

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "hub_worker_marked", False):
            record.msg = self.marker + str(record.msg)
            record.hub_worker_marked = True
        return True


def worker_main(argv: Sequence[str]) -> int:
    """A worker: ``python -m hub.workers INDEX PARENT_PID <the hub's arguments>``.

    It runs the hub's own server (``hub.cli.serve``); ``--workers`` among its
    arguments puts it on the shared ports (``Settings.reuse_port``). It marks
    its log lines and stops when the parent is gone.
    """
    from hub import cli
    from hub.config import load

    index, parent, rest = int(argv[0]), int(argv[1]), list(argv[2:])
    config = load(rest, os.environ)
    cli.configure_logging(config)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerMarker(index))
    _stop_with_parent(parent)
    return cli.run_on(config.loop, cli.serve(config, Printer(sys.stderr)))


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies, however
    it dies (Linux's PR_SET_PDEATHSIG; elsewhere nothing is arranged)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        log.warning("cannot arrange to stop with the supervising process on this system")
        return
    if os.getppid() != parent:  # it died before the arrangement was made
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
