"""``hub``: the reference chat program's command line, and the hub's own.

Reference flags, same meanings and defaults: ``-s`` server mode, ``-p``
password, ``-h`` host:port (where the server binds, or which server a client
dials), ``-n`` the client's name, ``-v`` debug log. Since ``-h`` is taken, help
is ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

# gRPC's C core writes log lines of its own to standard error (a failed bind
# comes out twice, once in its format, before ours); the reference prints only
# its lines. Core reads this once, when grpc loads: so here, before any import
# of it. An explicit GRPC_VERBOSITY (e.g. debug) still wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from hub.app import Addresses, App
from hub.audio.library import SoundLibrary, default_sounds_folder
from hub.audio.music import MusicFolder
from hub.audio.opus import OpusSettings
from hub.core.chat import CHANNEL
from hub.core.events import UserJoined, UserLeft
from hub.core.subscription import Overflow
from hub.lines import PROCESS, SERVER, Printer
from hub.rpc.server import BindError
from hub.settings import ChatSettings, DeviceSettings, OperatorSettings, Settings, StreamSettings

log = logging.getLogger("hub")

DEFAULT_HOST = "0.0.0.0:6262"
DEFAULT_DEVICE_ADDRESS = "0.0.0.0:50051"
DEFAULT_STREAM_ADDRESS = "0.0.0.0:8080"

T = TypeVar("T")


LOOPS = ("uvloop", "asyncio")


def run_on(loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on the named event loop: ``uvloop`` or the stdlib's."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def build_parser() -> argparse.ArgumentParser:
    defaults = ChatSettings()
    device_defaults = DeviceSettings()
    opus_defaults = OpusSettings()
    parser = argparse.ArgumentParser(
        prog="hub",
        add_help=False,
        description="Real-time hub: gRPC chat (reference-compatible), devices, streaming.",
    )
    parser.add_argument("--help", action="help", help="show this help and exit")
    ref = parser.add_argument_group("reference flags")
    ref.add_argument("-s", "--server", action="store_true", help="run the server")
    ref.add_argument("-p", "--password", default="", help="the server's password")
    ref.add_argument(
        "-h",
        "--host",
        default=DEFAULT_HOST,
        help=f"server: bind address; client: server to dial (default {DEFAULT_HOST})",
    )
    ref.add_argument("-n", "--name", default="", help="client: your name")
    ref.add_argument("-v", "--verbose", action="store_true", help="debug log")
    client = parser.add_argument_group("client")
    client.add_argument(
        "--room",
        default="",
        help="watch this device room; /mode, /play and /stop press its buttons",
    )
    srv = parser.add_argument_group("server")
    srv.add_argument(
        "--device-address",
        default=DEFAULT_DEVICE_ADDRESS,
        help="a second gRPC address, where the stock device client dials "
        f"(default {DEFAULT_DEVICE_ADDRESS}; 'none' to serve only -h)",
    )
    srv.add_argument(
        "--grace",
        type=float,
        default=defaults.grace,
        help="seconds a session outlives its last stream (default %(default)s)",
    )
    srv.add_argument(
        "--token-ttl",
        type=float,
        default=defaults.token_ttl,
        help="token lifetime in seconds (default %(default)s)",
    )
    srv.add_argument(
        "--rate",
        type=float,
        default=defaults.rate_per_second,
        help="messages a second per session, 0 for no limit (default %(default)s)",
    )
    srv.add_argument(
        "--burst",
        type=float,
        default=defaults.rate_burst,
        help="message burst per session (default %(default)s)",
    )
    srv.add_argument(
        "--max-message-bytes",
        type=int,
        default=defaults.message_max_bytes,
        help="largest chat line (default %(default)s)",
    )
    srv.add_argument(
        "--max-name-chars",
        type=int,
        default=defaults.name_max_chars,
        help="longest user name (default %(default)s)",
    )
    srv.add_argument(
        "--queue",
        type=int,
        default=defaults.queue_max,
        help="events a stream may fall behind before it is cut (default %(default)s)",
    )
    srv.add_argument(
        "--loop",
        choices=LOOPS,
        default="uvloop",
        help="the server's event loop (default %(default)s: more lines per second per core, "
        "bench/README.md)",
    )
    ops = parser.add_argument_group("operating it (health is always on)")
    ops.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    ops.add_argument(
        "--no-reflection",
        action="store_true",
        help="do not serve gRPC reflection (grpcurl list/describe)",
    )
    tcp = parser.add_argument_group("streaming over TCP (docs/protocol.md)")
    tcp.add_argument(
        "--stream-address",
        default=DEFAULT_STREAM_ADDRESS,
        help=f"where to serve it (default {DEFAULT_STREAM_ADDRESS}; 'none' to shut it)",
    )
    tcp.add_argument(
        "--music",
        metavar="DIR",
        help="the music folder clients list and play (default: the bundled sounds/)",
    )
    tcp.add_argument(
        "--stream-token", action="store_true", help="listeners must send a valid token in HELLO"
    )
    dev = parser.add_argument_group("devices")
    dev.add_argument(
        "--sounds",
        metavar="DIR",
        help="folder of mode sounds, one mode per file in name order "
        "(default: the bundled sounds/)",
    )
    dev.add_argument(
        "--long-sound",
        action="store_true",
        help="add the 20-minute generated sound as the last mode",
    )
    dev.add_argument(
        "--device-token",
        action="store_true",
        help="devices must send a valid x-chat-token (the stock client cannot)",
    )
    dev.add_argument(
        "--token-rooms",
        default="",
        metavar="ROOM,ROOM",
        help="with --device-token: require it only in these rooms",
    )
    dev.add_argument(
        "--room-linger",
        type=float,
        default=device_defaults.linger,
        help="seconds an empty room keeps its mode (default %(default)s)",
    )
    dev.add_argument(
        "--opus-bitrate",
        type=int,
        default=opus_defaults.bitrate,
        help="bits a second (default %(default)s)",
    )
    dev.add_argument(
        "--opus-complexity",
        type=int,
        default=opus_defaults.complexity,
        help="0-10 (default %(default)s)",
    )
    dev.add_argument(
        "--opus-frame-ms",
        type=float,
        default=opus_defaults.frame_ms,
        help="packet duration: 2.5, 5, 10, 20, 40 or 60 (default %(default)s); "
        "shorter is lower latency and more packets a second",
    )
    return parser


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # The per-session lines are for -v; the reference lines say enough.
        logging.getLogger("hub").setLevel(logging.WARNING)


def tune_gc() -> None:
    """Keep the garbage collector's pauses out of fan-out latency.

    What exists once the hub has started (modules, encoded sounds) lives as
    long as the process: freeze it out of the collector's sight, and collect
    the young generation less often. In the chat benchmark at 500 streams the
    longest pause fell from ~40 ms (full collections of the whole heap) to ~7 ms.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        chat=ChatSettings(
            password=args.password,
            token_ttl=args.token_ttl,
            grace=args.grace,
            name_max_chars=args.max_name_chars,
            message_max_bytes=args.max_message_bytes,
            rate_per_second=args.rate,
            rate_burst=args.burst,
            queue_max=args.queue,
        ),
        devices=DeviceSettings(
            require_token=args.device_token,
            token_rooms=frozenset(r for r in args.token_rooms.split(",") if r),
            linger=args.room_linger,
            opus=OpusSettings(
                bitrate=args.opus_bitrate,
                complexity=args.opus_complexity,
                frame_ms=args.opus_frame_ms,
            ),
        ),
        stream=StreamSettings(require_token=args.stream_token),
        operator=OperatorSettings(
            metrics_address=args.metrics_address, reflection=not args.no_reflection
        ),
    )


async def serve(args: argparse.Namespace, printer: Printer) -> int:
    grpc_addresses = [args.host]
    if args.device_address.lower() != "none" and args.device_address != args.host:
        grpc_addresses.append(args.device_address)
    try:
        settings = settings_from(args)
        library = SoundLibrary.from_folder(args.sounds, with_long=args.long_sound)
    except (ValueError, OSError) as error:
        printer.line(PROCESS, str(error))
        return 1
    stream_address = None if args.stream_address.lower() == "none" else args.stream_address
    app = App(
        settings,
        Addresses(grpc=grpc_addresses, stream=stream_address),
        library=library,
        music=MusicFolder(args.music or default_sounds_folder()),
    )
    if not args.password:
        log.warning("no password set (-p): anyone who reaches the server can log in")

    async def print_sessions() -> None:
        # The server's transcript is one more subscriber of the room.
        async with app.hub.subscribe(
            CHANNEL, maxlen=65536, overflow=Overflow.DISCONNECT, label="transcript"
        ) as room:
            async for pub in room:
                event = pub.event
                if isinstance(event, UserJoined):
                    printer.line(SERVER, f"{event.session_id} ({event.name}) has logged in")
                elif isinstance(event, UserLeft):
                    printer.line(SERVER, f"{event.session_id} ({event.name}) has logged out")

    async def started(bound: list[str]) -> None:
        tune_gc()
        printer.line(SERVER, f'starting on {bound[0]} with password "{args.password}"')
        app.hub.spawn(print_sessions())

    try:
        await app.run(started, on_stopping=lambda: printer.line(SERVER, "shutting down"))
    except BindError as error:
        printer.line(PROCESS, f"server unable to bind on provided host: {error}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    printer = Printer(sys.stderr)
    if args.server:
        return run_on(args.loop, serve(args, printer))
    from clients.py_cli.chat import run_client  # the client pulls in prompt_toolkit

    return run_client(args, printer)


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
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    logging.getLogger("hub").setLevel(logging.DEBUG if args.verbose else logging.INFO)
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
