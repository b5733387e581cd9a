"""``hub-listen HOST PORT``: listen to a hub's music and rooms, and publish into rooms.

Commands (typed at the prompt, or one per line on a pipe)::

    list          the server's tracks (asked afresh every time)
    play N        play track N; switches at once if something is playing
    stop          stop the track
    join ROOM     listen to a device room
    leave         stop listening to the room
    help          this list
    quit          leave (so do end of input and Ctrl-C)

Sound goes to the speaker (unless ``--no-speaker``, or there is no output
device: one line says so and the client carries on) and to ``--out FILE.wav``.
``--from FILE --room ROOM`` publishes a file into a room in real time and
exits when it is done (interactive: carries on); ``--mic ROOM`` publishes the
microphone until you quit.

Exit status: 0 after ``quit``, end of input, Ctrl-C or a finished ``--from``;
1 when the server cannot be reached, refuses us, closes the connection on
its own, or refuses a ``--from`` publication; 2 for bad arguments.

The protocol is ``listen_client``'s, the audio ``listen_audio``'s, the
terminal ``listen_ui``'s; this module is the glue and the words.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import io
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import soundfile as sf

from clients.py_cli.listen_audio import (
    AudioDeviceError,
    AudioOutput,
    Microphone,
    Sink,
    SpeakerSink,
    WavSink,
)
from clients.py_cli.listen_client import (
    CLIENT_NAME,
    Closed,
    ConnectError,
    ConnectionEnded,
    Event,
    ListenClient,
    ListenError,
    RequestRefused,
    error_text,
)
from clients.py_cli.listen_ui import (
    PlainScreen,
    Screen,
    is_interactive,
    prompt_terminal,
)
from clients.py_cli.terminal import (
    Interrupted,
    LineSource,
    PipeLines,
    stop_signals,
    unless_stopped,
)
from hub.audio.opus import OpusSettings
from hub.lines import literal
from hub.tcp import codec as proto

log = logging.getLogger(__name__)

HELP = """\
commands:
  list          the server's tracks
  play N        play track N (switches at once)
  stop          stop the track
  join ROOM     listen to a device room
  leave         stop listening to the room
  help          this list
  quit          leave (also end of input, Ctrl-C)"""

# Not a terminal: a progress line every this many seconds of a stream.
PROGRESS_EVERY = 5.0
# A terminal: redraw the progress line at most this often.
STATUS_INTERVAL = 0.25
# A server answers LIST at once; this only bounds a wedged one.
LIST_TIMEOUT = 10.0
# On quit, how long to wait for the answers to the commands sent before it.
QUIT_FLUSH = 2.0
# Requests whose answer replaces or ends the open stream: their refusal means
# the stream goes on (AudioOutput.release).
HELD_REQUESTS = frozenset(
    {proto.FrameType.PLAY, proto.FrameType.STOP, proto.FrameType.JOIN, proto.FrameType.LEAVE}
)


def clock(seconds: float | None) -> str:
    """``mm:ss`` (``h:mm:ss`` past an hour); ``--:--`` when unknown."""
    if seconds is None:
        return "--:--"
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def ms_clock(ms: int | None) -> str:
    return clock(None if ms is None else ms / 1000)


def track_lines(tracks: Sequence[proto.TrackInfo]) -> list[str]:
    """The answer to ``list``, titles shown literally."""
    if not tracks:
        return ["no tracks"]
    width = len(str(max(t.track_id for t in tracks)))
    lines = [f"{len(tracks)} track{'s' if len(tracks) != 1 else ''}:"]
    lines += [
        f"  {t.track_id:>{width}}  {ms_clock(t.duration_ms):>5}  {literal(t.title)}" for t in tracks
    ]
    return lines


class Listener:
    """What the program does with the server's events: sound out, lines shown."""

    def __init__(self, screen: Screen, output: AudioOutput) -> None:
        self.screen = screen
        self.output = output
        self.room: str | None = None
        self.stream: proto.StreamStart | None = None
        # The play or join sent last and not yet answered: (request, when).
        self._asked: tuple[proto.FrameType, float] | None = None
        # What the open stream answers, if it answers one of ours.
        self._answers: tuple[proto.FrameType, float] | None = None
        # "first audio N ms after play", for the open stream's progress line.
        self._first_audio = ""
        self._heard = False  # the open stream has been written to the sinks
        self._next_progress = PROGRESS_EVERY
        self._status_at = 0.0

    def asked(self, request: proto.FrameType) -> None:
        """A PLAY or JOIN was sent: time the first audio of the stream it starts."""
        self._asked = (request, time.monotonic())

    def on_event(self, event: Event) -> None:
        # Audio first: nothing printed may delay the sound.
        self.output.handle(event)
        if isinstance(event, proto.Audio):
            self._audio(event)
        elif isinstance(event, proto.StreamStart):
            self._start(event)
        elif isinstance(event, proto.StreamEnd):
            self._end(event)
        elif isinstance(event, proto.Joined):
            self.room = event.room
            self.screen.line(f"joined room {literal(event.room)}")
        elif isinstance(event, proto.Left):
            if self.room == event.room:
                self.room = None
            self.screen.line(f"left room {literal(event.room)}")
        elif isinstance(event, proto.Error):
            if event.request in HELD_REQUESTS:
                self.output.release()
            if self._asked is not None and event.request is self._asked[0]:
                self._asked = None  # refused: no stream of ours comes
            self.screen.line(f"error: {literal(error_text(event))}")
        elif isinstance(event, proto.ListResult):  # a page nobody asked for
            for text in track_lines(event.tracks):
                self.screen.line(text)

    def _start(self, start: proto.StreamStart) -> None:
        self.stream = start
        self._heard = False
        self._first_audio = ""
        # A track's stream answers our PLAY; a room's our JOIN, if the room
        # was playing when we joined (see _audio). A room stream started
        # later by a device or a publisher answers nothing of ours.
        asked, self._answers = self._asked, None
        wanted = proto.FrameType.PLAY if start.track_id is not None else proto.FrameType.JOIN
        if asked is not None and asked[0] is wanted:
            self._answers, self._asked = asked, None
        self._next_progress = PROGRESS_EVERY
        title = literal(start.title)
        length = f" ({ms_clock(start.duration_ms)})" if start.duration_ms is not None else ""
        if start.track_id is not None:
            self.screen.line(f"playing {start.track_id}: {title}{length}")
        else:
            where = f" in room {literal(self.room)}" if self.room else ""
            self.screen.line(f"playing{where}: {title}{length}")

    def _audio(self, audio: proto.Audio) -> None:
        stream = self.stream
        position = self.output.position
        if stream is None or position is None or self.output.held:
            return
        first = not self._heard
        if first:
            self._heard = True
            self._first_audio = self._time_to_first_audio(audio)
        text = self.progress_text(stream, position, self._first_audio)
        if self.screen.live:
            now = time.monotonic()
            if first or now - self._status_at >= STATUS_INTERVAL:
                self._status_at = now
                self.screen.status(text)
        elif (first and self._first_audio) or position >= self._next_progress:
            # Off a terminal, the first audio gets a line of its own when it
            # answers a request: a track shorter than PROGRESS_EVERY has no other.
            if not first:
                self._next_progress += PROGRESS_EVERY
            self.screen.line(text)

    def _time_to_first_audio(self, audio: proto.Audio) -> str:
        """``first audio N ms after play``, or "" if the stream answers no request of ours."""
        answers, self._answers = self._answers, None
        if answers is None:
            return ""
        request, asked_at = answers
        # A room joined mid-stream starts at a later seq; a room stream that
        # begins at seq 0 began after the join, at someone else's request.
        if request is proto.FrameType.JOIN and audio.seq == 0:
            return ""
        elapsed_ms = (time.monotonic() - asked_at) * 1e3
        log.info("first audio %.0f ms after %s", elapsed_ms, request.name)
        return f"first audio {elapsed_ms:.0f} ms after {request.name.lower()}"

    @staticmethod
    def progress_text(stream: proto.StreamStart, position: float, note: str = "") -> str:
        duration = None if stream.duration_ms is None else stream.duration_ms / 1000
        note = f"  ({note})" if note else ""
        if duration is not None:
            position = min(position, duration)
            return f"  {literal(stream.title)}  {clock(position)} / {clock(duration)}{note}"
        return f"  {literal(stream.title)}  {clock(position)}{note}"

    def _end(self, end: proto.StreamEnd) -> None:
        stream, self.stream = self.stream, None
        self.screen.status(None)
        if end.reason is proto.StreamEndReason.SWITCHED:
            return  # the next "playing" line says it all
        title = literal(stream.title) if stream is not None else f"stream {end.stream_id}"
        self.screen.line(f"{end.reason.name.lower()}: {title}")


class Ending(enum.Enum):
    QUIT = "quit"  # the quit command
    EOF = "eof"  # end of input, or Ctrl-C at the prompt
    GONE = "gone"  # the connection ended under a command


async def run_command(text: str, client: ListenClient, listener: Listener) -> Ending | None:
    """Carry out one command line; an Ending for quit."""
    screen, output = listener.screen, listener.output
    word, _, rest = text.strip().partition(" ")
    word, rest = word.lower(), rest.strip()
    if not word:
        return None
    if word in ("quit", "exit", "q"):
        return Ending.QUIT
    if word in ("help", "?"):
        for line in HELP.splitlines():
            screen.line(line)
    elif word in ("list", "ls"):
        tracks = await asyncio.wait_for(client.list(), LIST_TIMEOUT)
        for line in track_lines(tracks):
            screen.line(line)
    elif word == "play":
        try:
            track_id = int(rest)
            proto.Play(track_id)  # in range?
        except (ValueError, proto.LocalProtocolError):
            screen.line("usage: play N (a track number from list)")
            return None
        # Silence the old stream now: nothing of it is heard after a play.
        output.hold()
        listener.asked(proto.FrameType.PLAY)
        await client.play(track_id)
    elif word == "stop":
        if output.current is not None and output.current.track_id is not None:
            output.hold()
        await client.stop()
    elif word == "join":
        if not rest:
            screen.line("usage: join ROOM")
            return None
        try:
            proto.Join(rest)
        except proto.LocalProtocolError as exc:
            screen.line(f"error: {exc.message}")
            return None
        output.hold()
        listener.asked(proto.FrameType.JOIN)
        await client.join(rest)
    elif word == "leave":
        if output.current is not None and output.current.track_id is None:
            output.hold()
        await client.leave()
    else:
        screen.line(f"unknown command: {literal(word)} (try help)")
    return None


async def command_loop(lines: LineSource, client: ListenClient, listener: Listener) -> Ending:
    while (text := await lines.read()) is not None:
        try:
            ending = await run_command(text, client, listener)
        except ConnectionEnded:
            return Ending.GONE
        except RequestRefused as exc:
            listener.screen.line(f"error: {literal(str(exc))}")
        except TimeoutError:
            listener.screen.line("error: no answer from the server")
        else:
            if ending is not None:
                return ending
    return Ending.EOF


def open_sinks(args: argparse.Namespace, screen: Screen) -> list[Sink]:
    sinks: list[Sink] = []
    if args.out is not None:
        sinks.append(WavSink(args.out))  # OSError / sf error: reported by main
    if not args.no_speaker:
        try:
            sinks.append(SpeakerSink())
        except AudioDeviceError as exc:
            screen.line(f"no audio output ({exc}): continuing without speaker")
    return sinks


async def session(
    args: argparse.Namespace,
    screen: Screen,
    lines: LineSource,
    signalled: asyncio.Event,
    microphone: Microphone | None,
    interactive: bool,
) -> int:
    """Connect, then run commands and publications until the session ends; the status."""
    try:
        output = AudioOutput(open_sinks(args, screen))
    except (OSError, sf.SoundFileError) as exc:
        print(f"hub-listen: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    listener = Listener(screen, output)
    client = ListenClient(listener.on_event, name=args.name, token=args.token)
    try:
        try:
            welcome = await unless_stopped(client.connect(args.host, args.port), [signalled])
        except ConnectError as exc:
            print(f"hub-listen: {exc}", file=sys.stderr)
            return 1
        except Interrupted:  # Ctrl-C while connecting
            return 0
        who = f" as {literal(welcome.user)}" if welcome.user else ""
        screen.line(
            f"connected to {literal(welcome.server_name) or 'hub'} at {args.host}:{args.port}"
            f"{who} (session {literal(welcome.session_id)}); type help for commands"
        )
        return await converse(args, client, listener, lines, signalled, microphone, interactive)
    finally:
        await client.close()
        output.close()


async def converse(
    args: argparse.Namespace,
    client: ListenClient,
    listener: Listener,
    lines: LineSource,
    signalled: asyncio.Event,
    microphone: Microphone | None,
    interactive: bool,
) -> int:
    screen = listener.screen
    commands = asyncio.create_task(command_loop(lines, client, listener), name="commands")
    closed = asyncio.create_task(client.wait_closed(), name="closed")
    signals = asyncio.create_task(signalled.wait(), name="signals")
    publisher: asyncio.Task[int] | None = None
    if args.source is not None:
        screen.line(f"publishing {literal(str(args.source))} into room {literal(args.room)}")
        publisher = asyncio.create_task(
            client.publish_file(args.source, args.room, title=args.title), name="publish file"
        )
    elif microphone is not None:
        screen.line(f"publishing the microphone into room {literal(args.mic)}")
        publisher = asyncio.create_task(
            client.publish_mic(args.mic, microphone, title=args.title or "microphone"),
            name="publish mic",
        )
    pending: set[asyncio.Task[Any]] = {commands, closed, signals}
    if publisher is not None:
        pending.add(publisher)
    status: int | None = None
    try:
        while status is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                ending: Closed = closed.result()
                screen.status(None)
                screen.line(f"connection closed by the server: {literal(ending.reason)}")
                status = 1
            elif signals in done:
                status = 0
            elif commands in done:
                result = commands.result()
                if result is Ending.GONE:
                    continue  # ``closed`` says why
                file_publishing = publisher is not None and args.source is not None
                if result is Ending.EOF and file_publishing and publisher in pending:
                    continue  # no more commands: leave once the file is published
                # Show the answers to the last commands before leaving.
                with contextlib.suppress(ListenError, TimeoutError):
                    await asyncio.wait_for(client.sync(), QUIT_FLUSH)
                status = 0
            elif publisher is not None and publisher in done:
                status = publication_over(publisher, args, screen, interactive)
    finally:
        for task in (commands, closed, signals, publisher):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (commands, closed, signals, publisher) if t is not None),
            return_exceptions=True,
        )
    return status


def publication_over(
    publisher: asyncio.Task[int], args: argparse.Namespace, screen: Screen, interactive: bool
) -> int | None:
    """Report the end of a publication; the exit status, or None to carry on."""
    room = literal(args.room or args.mic or "")
    try:
        packets = publisher.result()
    except ConnectionEnded:
        return None  # ``closed`` says why
    except (ListenError, OSError, sf.SoundFileError, proto.LocalProtocolError) as exc:
        text = exc.message if isinstance(exc, proto.LocalProtocolError) else str(exc)
        screen.line(f"error: cannot publish into room {room}: {literal(text)}")
        return None if interactive else 1
    seconds = packets * OpusSettings().frame_seconds
    screen.line(f"published {clock(seconds)} into room {room}")
    return None if interactive else 0


async def amain(args: argparse.Namespace) -> int:
    if args.source is not None:
        try:
            sf.info(str(args.source))  # fail now, not once connected
        except (OSError, sf.SoundFileError) as exc:
            print(f"hub-listen: cannot read {args.source}: {exc}", file=sys.stderr)
            return 1
    signalled = asyncio.Event()
    with stop_signals(signalled):
        microphone = None
        if args.mic is not None:
            microphone = Microphone(OpusSettings().frame_samples)
            try:
                microphone.open()
            except AudioDeviceError as exc:
                print(f"hub-listen: no microphone to publish from: {exc}", file=sys.stderr)
                return 1
        try:
            if is_interactive():
                with prompt_terminal() as (prompt, screen):
                    return await session(args, screen, prompt, signalled, microphone, True)
            return await session(args, PlainScreen(), PipeLines(), signalled, microphone, False)
        finally:
            if microphone is not None:
                microphone.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hub-listen",
        description="Listen to a hub's music and rooms over its TCP streaming protocol.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("host", help="the hub's address")
    parser.add_argument("port", type=int, help="the hub's streaming port")
    parser.add_argument("--out", metavar="FILE.wav", type=Path, help="also write what plays here")
    parser.add_argument("--no-speaker", action="store_true", help="do not play through the speaker")
    parser.add_argument("--token", help="a token from the chat Login, for HELLO")
    parser.add_argument("--name", default=CLIENT_NAME, help="this client's name, for the logs")
    publish = parser.add_mutually_exclusive_group()
    publish.add_argument("--mic", metavar="ROOM", help="publish the microphone into ROOM")
    publish.add_argument(
        "--from", dest="source", metavar="FILE", type=Path, help="publish FILE (needs --room)"
    )
    parser.add_argument("--room", help="the room --from publishes into")
    parser.add_argument("--title", help="the title listeners see for a publication")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"port {args.port} is not in 1..65535")
    if args.source is not None and not args.room:
        parser.error("--from needs --room ROOM")
    if args.room and args.source is None:
        parser.error("--room goes with --from FILE (to listen to a room, use the join command)")
    for what, value in (("--name", args.name), ("--token", args.token)):
        limit = proto.MAX_NAME_BYTES if what == "--name" else proto.MAX_TOKEN_BYTES
        if value is not None and len(value.encode("utf-8", "replace")) > limit:
            parser.error(f"{what} is longer than {limit} bytes")
    room = args.room or args.mic
    if room is not None and not 0 < len(room.encode("utf-8", "replace")) <= proto.MAX_NAME_BYTES:
        parser.error(f"a room name is 1 to {proto.MAX_NAME_BYTES} bytes")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="hub-listen: %(message)s",
    )
    # Titles and names come from the server: never fail to print one.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were in place
        return 0


if __name__ == "__main__":
    sys.exit(main())
