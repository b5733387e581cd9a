"""``hub -s --workers N``: N hub processes on the same ports, and their supervisor.

One grpc.aio event loop fills one core. To use a larger machine's cores, the
parent starts N ordinary hub processes, the *workers*, each listening on the
same ports with SO_REUSEPORT (``Settings.reuse_port``): the kernel spreads new
connections over them. They share sessions, chat and rooms through the Redis
backplane exactly as hubs on separate machines do, so ``--workers`` needs
``--redis``.

The parent serves nothing. It starts the workers as ``python -m hub <the same
arguments> --worker I``, forwards SIGINT and SIGTERM to them, and exits when
they all have: 0 if every worker stopped cleanly. It restarts none. A worker
that exits on its own is logged, the others are stopped, and the parent exits
1: whoever supervises the parent (systemd, Docker's restart policy,
Kubernetes) then restarts the group, instead of the parent hiding a crash loop
behind silent restarts. A worker's standard input is a pipe from the parent
that is never written: when the parent dies, even by SIGKILL, the pipe ends
and the worker stops itself, so no worker outlives its supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

# How long the parent waits for its workers to finish after passing on a stop
# signal before it kills them: a worker's own budget (hub.app.SHUTDOWN_GRACE,
# then the streaming door's close) with room to spare, and still inside the
# 10 s that Docker and Kubernetes wait before their SIGKILL.
WORKER_STOP_TIMEOUT = 8.0


def add_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the ports (SO_REUSEPORT), one per core; "
        "more than 1 needs --redis (default %(default)s)",
    )
    # Set by the parent on each worker it starts; not for people.
    group.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)


def wants_supervisor(args: argparse.Namespace) -> bool:
    """Whether this process is the parent of ``--workers N`` (N > 1)."""
    return bool(args.server and args.workers > 1 and args.worker is None)


def refusal(args: argparse.Namespace) -> str | None:
    """Why ``args`` cannot run as workers, in one line; None if they can."""
    if args.workers < 1:
        return f"--workers must be at least 1, not {args.workers}"
    if not args.redis:
        return (
            "--workers needs --redis URL (or HUB_REDIS_URL): without a shared backplane "
            "each worker would be a separate hub behind one port"
        )
    from hub.app import StartError, backplane_for
    from hub.settings import Settings

    try:
        # The checks every worker would make (secret, redis package, URL), once.
        backplane_for(args.redis, Settings())
    except StartError as error:
        return str(error)
    return None


# -- the parent ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Doors:
    """The three listening addresses a worker is given (``none`` for a shut door)."""

    host: str
    device: str
    stream: str

    @classmethod
    def of(cls, args: argparse.Namespace) -> Doors:
        return cls(args.host, args.device_address, args.stream_address)

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
        host = real(doors.host)
        # One address given twice is one gRPC door (hub.cli.serve binds it once).
        device = host if doors.device == doors.host else real(doors.device)
        return Doors(host, device, real(doors.stream)), held
    except BaseException:
        for sock in held:
            sock.close()
        raise


async def supervise(argv: Sequence[str], args: argparse.Namespace) -> int:
    """Run ``args.workers`` workers until a signal or until one exits; the exit status."""
    try:
        doors, held = reserve(Doors.of(args))
    except (OSError, ValueError) as error:
        log.error("cannot reserve the ports for the workers: %s", error)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    workers: list[asyncio.subprocess.Process] = []
    try:
        for index in range(args.workers):
            workers.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "hub",
                    *argv,
                    "--worker",
                    str(index),
                    *doors.as_args(),
                    stdin=asyncio.subprocess.PIPE,
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


def become_worker(index: int) -> None:
    """In a worker: mark its log lines, and stop when the parent is gone."""
    marker = f"worker {index} (pid {os.getpid()})"
    for handler in logging.getLogger().handlers:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {marker} %(levelname)s %(name)s: %(message)s")
        )
    threading.Thread(target=_stop_with_parent, name="parent-watch", daemon=True).start()


def _stop_with_parent() -> None:
    # Standard input is the parent's pipe, never written: it reads as ended
    # once the parent is gone, however it died.
    # (os.read, not sys.stdin: a daemon thread blocked in a buffered reader
    # holds its lock, which the interpreter's exit then waits on.)
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    log.warning("the supervising process is gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)
