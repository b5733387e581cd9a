"""``hub``: the reference chat program's command line, and the hub's own.

Reference flags, same meanings and defaults: ``-s`` server mode, ``-p``
password, ``-h`` host:port (where the server binds, or which server a client
dials), ``-n`` the client's name, ``-v`` debug log. Since ``-h`` is taken, help
is ``--help``. Every option, and its HUB_* variable and config-file key, comes
from the one table in hub/config.py. Two commands stand before the flags:
``hub config`` prints the effective configuration, ``hub health`` probes a
server (hub/probe.py, the image's HEALTHCHECK).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import sys
import urllib.parse
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hub import logs, workers
from hub.app import Addresses, App, StartError, backplane_for
from hub.audio.library import SoundLibrary, default_sounds_folder
from hub.audio.music import MusicFolder
from hub.audio.opus import OpusSettings
from hub.config import LOG_FORMATS, LOOPS, Config, ConfigError, load
from hub.core.chat import CHANNEL
from hub.core.events import UserJoined, UserLeft
from hub.core.subscription import Overflow
from hub.core.tokens import SECRET_ENV, SECRET_FILE_ENV, load_secret
from hub.errors import Unavailable
from hub.lines import PROCESS, SERVER, Printer
from hub.rpc.server import BindError
from hub.settings import ChatSettings, DeviceSettings, OperatorSettings, Settings, StreamSettings

if TYPE_CHECKING:
    from hub.backplane import Backplane

log = logging.getLogger("hub")

T = TypeVar("T")


def run_on(loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on the named event loop: ``uvloop`` or the stdlib's."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def configure_logging(config: Config) -> None:
    """Log records per ``--log-format``/``--log-level``, with every secret
    masked should any record ever hold it."""
    logs.configure(config.log_level, config.log_format, secrets=secrets_of(config))


def secrets_of(config: Config) -> tuple[str, ...]:
    """Every secret the configuration holds or names: what logs must never show."""
    found = [config.password, config.token_secret]
    if config.token_secret_file:
        # Unreadable here, it is refused with its own line when the hub loads it.
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found.append(Path(config.token_secret_file).read_text().strip())
    if config.redis:
        found.append(urllib.parse.urlsplit(config.redis).password or "")
    return tuple(found)


def tune_gc() -> None:
    """Keep the garbage collector's pauses out of fan-out latency.

    What exists once the hub has started (modules, encoded sounds) lives as
    long as the process: freeze it out of the collector's sight, and collect
    the young generation less often. In the chat benchmark at 500 streams the
    longest pause fell from ~40 ms (full collections of the whole heap) to ~7 ms.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def settings_from(config: Config) -> Settings:
    return Settings(
        chat=ChatSettings(
            password=config.password,
            token_ttl=config.token_ttl,
            grace=config.grace,
            name_max_chars=config.max_name_chars,
            message_max_bytes=config.max_message_bytes,
            rate_per_second=config.rate,
            rate_burst=config.burst,
            queue_max=config.queue,
            login_failure_rate=config.login_failure_rate,
            login_failure_burst=config.login_failure_burst,
        ),
        devices=DeviceSettings(
            require_token=config.device_token,
            token_rooms=frozenset(r for r in config.token_rooms.split(",") if r),
            linger=config.room_linger,
            opus=OpusSettings(
                bitrate=config.opus_bitrate,
                complexity=config.opus_complexity,
                frame_ms=config.opus_frame_ms,
            ),
        ),
        stream=StreamSettings(
            require_token=config.stream_token,
            handshake_timeout=config.handshake_timeout,
            max_connections_per_peer=config.max_connections_per_peer,
        ),
        operator=OperatorSettings(
            metrics_address=None if config.metrics_address == "none" else config.metrics_address,
            reflection=config.reflection,
        ),
        reuse_port=config.workers > 1,
    )


def backplane_from(config: Config, settings: Settings) -> Backplane:
    """The backplane ``config.redis`` names; StartError if it cannot be had.

    The token signing secret is shared when it was given (flag, environment
    or file), not made up by each process."""
    shared_secret = bool(config.token_secret or config.token_secret_file)
    return backplane_for(config.redis, settings, shared_secret=shared_secret)


def door_lines(
    grpc_bound: list[str], stream_bound: str | None, metrics_bound: str | None = None
) -> list[str]:
    """What the server says it serves, one line for every door and port bound."""
    lines = [f"serving chat, rooms and devices (gRPC) on {where}" for where in grpc_bound]
    if stream_bound is not None:
        lines.append(f"serving music and room streaming (TCP) on {stream_bound}")
    if metrics_bound is not None:
        lines.append(f"serving Prometheus metrics (HTTP) on http://{metrics_bound}/metrics")
    return lines


async def serve(config: Config, printer: Printer) -> int:
    grpc_addresses = [config.host]
    # The same address twice is one door; port 0 twice asks for two free ports.
    same = config.device_address == config.host and not config.host.endswith(":0")
    if config.device_address != "none" and not same:
        grpc_addresses.append(config.device_address)
    stream_address = None if config.stream_address == "none" else config.stream_address
    try:
        settings = settings_from(config)
        backplane = backplane_from(config, settings) if config.redis else None
        secret = load_secret(
            {SECRET_ENV: config.token_secret, SECRET_FILE_ENV: config.token_secret_file}
        )
        library = SoundLibrary.from_folder(config.sounds or None, with_long=config.long_sound)
    except (ValueError, OSError, StartError) as error:
        printer.line(PROCESS, str(error))
        return 1
    app = App(
        settings,
        Addresses(grpc=grpc_addresses, stream=stream_address),
        secret=secret,
        library=library,
        music=MusicFolder(config.music or default_sounds_folder()),
        backplane=backplane,
    )
    if not config.password:
        log.warning("no password set (-p): anyone who reaches the server can log in")

    async def print_sessions() -> None:
        # The server's transcript is one more subscriber of the room; with
        # --redis it may be ended (events lost between hubs, logged) and
        # subscribes again.
        while not app.hub.closing:
            subscribed = False
            try:
                async with app.hub.subscribe(
                    CHANNEL, maxlen=65536, overflow=Overflow.DISCONNECT, label="transcript"
                ) as room:
                    subscribed = True
                    async for pub in room:
                        event = pub.event
                        if isinstance(event, UserJoined):
                            printer.line(SERVER, f"{event.session_id} ({event.name}) has logged in")
                        elif isinstance(event, UserLeft):
                            printer.line(
                                SERVER, f"{event.session_id} ({event.name}) has logged out"
                            )
                    return
            except Unavailable:
                if not subscribed:  # Redis is out of reach: try again in a while
                    await app.hub.clock.sleep(1.0)

    async def started(bound: list[str]) -> None:
        tune_gc()
        # The reference's line first, as it prints it; then every door.
        printer.line(SERVER, f'starting on {bound[0]} with password "{config.password}"')
        # App.run's order: the gRPC addresses, then the stream's, then the metrics'.
        rest = bound[len(grpc_addresses) :]
        stream_bound = rest.pop(0) if stream_address is not None else None
        metrics_bound = rest.pop(0) if settings.operator.metrics_address is not None else None
        for line in door_lines(bound[: len(grpc_addresses)], stream_bound, metrics_bound):
            printer.line(SERVER, line)
        app.hub.spawn(print_sessions())

    try:
        await app.run(started, on_stopping=lambda: printer.line(SERVER, "shutting down"))
    except BindError as error:
        printer.line(PROCESS, f"server unable to bind on provided host: {error}")
        return 1
    except StartError as error:
        printer.line(PROCESS, str(error))
        return 1
    return 0


# Commands beside the reference's flags; `hub config ...`, `hub health ...`.
COMMANDS = ("config", "health")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else ""
    printer = Printer(sys.stderr)
    try:
        config = load(argv, os.environ)
    except ConfigError as error:
        # A usage error, as argparse's own for a bad flag: exit status 2.
        printer.line(PROCESS, f"bad configuration: {error}")
        return 2
    configure_logging(config)
    if command == "config":
        sys.stdout.write(config.as_toml())
        return 0
    if command == "health":
        from hub.probe import probe

        return probe(config)
    if config.server:
        if config.workers > 1:
            return workers.run(config, argv, printer)
        return run_on(config.loop, serve(config, printer))
    from clients.py_cli.chat import run_client  # the client pulls in prompt_toolkit

    return run_client(config.namespace(), printer)


async def _after_start() -> None:
    tune_gc()


def music_main(argv: Sequence[str] | None = None) -> int:
    """``hub-music PORT FOLDER``: only the streaming door, on a music folder."""
    parser = argparse.ArgumentParser(
        prog="hub-music", description="Stream a music folder over TCP (docs/protocol.md)."
    )
    parser.add_argument("port", type=int, help="TCP port to listen on, all interfaces")
    parser.add_argument("folder", help="the music folder (mp3, wav, flac, ogg, ...)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug log")
    parser.add_argument("--loop", choices=LOOPS, default="uvloop", help="event loop (%(default)s)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text", help="text or json")
    args = parser.parse_args(argv)
    # Its own log is its only output: info by default.
    logs.configure("debug" if args.verbose else "info", args.log_format)
    app = App(
        Settings(),
        Addresses(grpc=[], stream=f"{args.host}:{args.port}"),
        music=MusicFolder(args.folder),
    )
    try:
        run_on(args.loop, app.run(lambda _bound: _after_start()))
    except BindError as error:
        log.error("cannot serve on %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
