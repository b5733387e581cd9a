"""The listening client (``hub-listen``) against the real streaming server, in process.

Every test runs a real ``Hub`` + ``StreamServer`` on 127.0.0.1, port 0, with a
music folder of small generated files (wav, flac, ogg, mp3: every format the
server lists), and talks to it over real loopback sockets: ``ListenClient``
in process, or the program itself as a subprocess fed through a pipe. Waits
are on events and output lines, each bounded by a timeout (scaled by
``HUB_TEST_TIMEOUT_FACTOR``); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
from cli_helpers import free_port
from waiting import scaled

from clients.py_cli import listen
from clients.py_cli.listen import Listener, clock, track_lines
from clients.py_cli.listen_audio import (
    AudioDeviceError,
    AudioOutput,
    SpeakerSink,
    StreamDecoder,
    WavSink,
)
from clients.py_cli.listen_client import (
    ConnectError,
    Event,
    ListenClient,
    RequestRefused,
)
from clients.py_cli.listen_ui import PlainScreen
from clients.qt_device.jitter import JitterBuffer
from hub.audio.library import SoundLibrary
from hub.audio.music import MusicFolder
from hub.audio.opus import OpusEncoder, OpusSettings
from hub.audio.sources import SAMPLE_RATE, FileSound, GeneratedSound, Pcm
from hub.audio.testing import best_correlation, read_all
from hub.core.hub import Hub
from hub.core.roomstate import Input
from hub.settings import DeviceSettings, Settings, StreamSettings
from hub.tcp import codec as proto
from hub.tcp.server import StreamServer

REPO = Path(__file__).resolve().parents[1]
LISTEN = [sys.executable, "-m", "clients.py_cli.listen"]
SECRET = b"x" * 32
E = TypeVar("E", bound=Event)
SECONDS = 2.0
# name, frequency, format, the file's own sample rate
TRACKS = [
    ("alpha.wav", 440.0, "WAV", 48_000),
    ("bravo.flac", 660.0, "FLAC", 44_100),
    ("charlie.ogg", 880.0, "OGG", 48_000),
    ("delta.mp3", 550.0, "MP3", 44_100),
]
A_FREQ, B_FREQ = TRACKS[0][1], TRACKS[1][1]
WINDOW = SAMPLE_RATE // 10  # 100 ms


def timeout(seconds: float = 10.0) -> float:
    """A sanity bound for one wait, scaled for slow machines."""
    return scaled(seconds)


def swelling_tone(freq: float, seconds: float, rate: int) -> Pcm:
    """A tone with a slow, track-specific swell, so that correlating with the
    right alignment means something (a bare sine matches itself at any lag)."""
    t = np.arange(round(seconds * rate)) / rate
    swell = 0.6 + 0.35 * np.sin(2 * np.pi * (freq / 400.0) * t)
    out: Pcm = (0.5 * swell * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return out


def peak_frequency(window: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    return float(np.fft.rfftfreq(len(window), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def band_energy(window: np.ndarray, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    freqs = np.fft.rfftfreq(len(window), 1 / SAMPLE_RATE)
    return float(spectrum[np.abs(freqs - freq) <= 20].sum())


def read_wav(path: Path) -> Pcm:
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    data, _ = sf.read(str(path), dtype="float32")
    out: Pcm = data
    return out


# -- the server --------------------------------------------------------------------


@pytest.fixture(scope="session")
def music_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("music")
    for name, freq, fmt, rate in TRACKS:
        sf.write(str(folder / name), swelling_tone(freq, SECONDS, rate), rate, format=fmt)
    return folder


@pytest.fixture
def music(tmp_path: Path, music_files: Path) -> Path:
    folder = tmp_path / "music"
    shutil.copytree(music_files, folder)
    return folder


@dataclass
class Served:
    hub: Hub
    server: StreamServer
    host: str
    port: int
    music: Path


Serve = Callable[..., Awaitable[Served]]


def quiet_library(seconds: float = 1.0) -> SoundLibrary:
    """The rooms' mode sounds: one generated sound, so start-up encodes nothing."""
    hum = GeneratedSound(
        "hum",
        key=f"test:hum:{seconds}",
        duration=seconds,
        render=lambda _first, n: np.zeros(n, np.float32),
    )
    return SoundLibrary({0: hum})


@pytest_asyncio.fixture
async def serve(music: Path) -> AsyncIterator[Serve]:
    async with AsyncExitStack() as stack:

        async def start(
            settings: Settings | None = None, library: SoundLibrary | None = None
        ) -> Served:
            library = library or quiet_library()
            hub = Hub(settings or Settings(), secret=SECRET, library=library)
            await hub.start()
            stack.push_async_callback(hub.close)
            server = StreamServer(hub, MusicFolder(music))
            host, _, port = (await server.start("127.0.0.1:0")).rpartition(":")
            stack.push_async_callback(server.close)
            stack.push_async_callback(hub.shutdown)
            return Served(hub, server, host, int(port), music)

        yield start


@pytest_asyncio.fixture
async def served(serve: Serve) -> Served:
    return await serve()


# -- in-process clients ----------------------------------------------------------------


class Recorder:
    """A client's events, the audio output they feed, and waits on both."""

    def __init__(self, output: AudioOutput | None = None) -> None:
        self.output = output or AudioOutput()
        self.events: list[Event] = []
        self.first_audio: dict[int, float] = {}  # stream id -> when its first sample was written
        self.samples_at_start: dict[int, int] = {}  # stream id -> samples written before it
        self._changed = asyncio.Event()

    def on_event(self, event: Event) -> None:
        if isinstance(event, proto.StreamStart):
            self.samples_at_start[event.stream_id] = self.output.samples_written
        self.output.handle(event)
        if (
            isinstance(event, proto.Audio)
            and event.stream_id not in self.first_audio
            and self.output.samples_written > self.samples_at_start.get(event.stream_id, 0)
        ):
            self.first_audio[event.stream_id] = time.monotonic()
        self.events.append(event)
        self._changed.set()

    async def until(self, condition: Callable[[], bool], seconds: float = 10.0) -> None:
        async with asyncio.timeout(timeout(seconds)):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def event(self, kind: type[E], where: Callable[[E], bool] = lambda _: True) -> E:
        """The first event of ``kind`` (matching ``where``) seen so far or to come."""
        found: list[E] = []

        def seen() -> bool:
            found[:] = [e for e in self.events if isinstance(e, kind) and where(e)]
            return bool(found)

        await self.until(seen)
        return found[0]

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest_asyncio.fixture
async def clients() -> AsyncIterator[list[ListenClient]]:
    made: list[ListenClient] = []
    yield made
    for client in made:
        await client.close()


async def connect(
    served: Served, made: list[ListenClient], recorder: Recorder, *, token: str | None = None
) -> ListenClient:
    client = ListenClient(recorder.on_event, token=token)
    made.append(client)
    await client.connect(served.host, served.port)
    return client


def track_path(served: Served, name: str) -> Path:
    return served.music / name


# -- the program as a subprocess ---------------------------------------------------------


class Cli:
    """``hub-listen`` in a subprocess: commands in, output lines out, with deadlines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, *args: str, stdin: int | None = asyncio.subprocess.PIPE) -> Cli:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = await asyncio.create_subprocess_exec(
            *LISTEN,
            *args,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        return cls(proc)

    async def expect(self, pattern: str, seconds: float = 10.0) -> re.Match[str]:
        """The next output line matching ``pattern`` (whole line); others are kept."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout(seconds)):
                while True:
                    raw = await self.proc.stdout.readline()
                    if not raw:
                        raise AssertionError(f"output ended before {pattern!r}")
                    line = raw.decode().rstrip("\n")
                    self.lines.append(line)
                    if match := re.fullmatch(pattern, line):
                        return match
        except (TimeoutError, AssertionError) as exc:
            transcript = "\n".join(self.lines)
            raise AssertionError(f"no line {pattern!r} ({exc!r}); output:\n{transcript}") from None

    async def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        await self.proc.stdin.drain()

    async def finish(self, seconds: float = 10.0) -> tuple[int, list[str], str]:
        """Exit status, the remaining output lines, and everything on stderr."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        async with asyncio.timeout(timeout(seconds)):
            out, err = await asyncio.gather(self.proc.stdout.read(), self.proc.stderr.read())
            status = await self.proc.wait()
        rest = out.decode().splitlines()
        self.lines += rest
        return status, rest, err.decode()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest_asyncio.fixture
async def clis() -> AsyncIterator[list[Cli]]:
    made: list[Cli] = []
    yield made
    for cli in made:
        cli.kill()
        await cli.proc.wait()


async def run_cli(made: list[Cli], *args: str, stdin: int | None = asyncio.subprocess.PIPE) -> Cli:
    cli = await Cli.start(*args, stdin=stdin)
    made.append(cli)
    return cli


def has_device(kind: str) -> bool:
    try:
        import sounddevice

        sounddevice.query_devices(kind=kind)
    except Exception:  # no PortAudio, or no such device
        return False
    return True


# -- listing -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_list_shows_every_format_and_is_asked_afresh_each_time(
    served: Served, clients: list[ListenClient]
) -> None:
    client = await connect(served, clients, Recorder())
    tracks = await client.list()
    assert [(t.track_id, t.title) for t in tracks] == [
        (1, "alpha"),
        (2, "bravo"),
        (3, "charlie"),
        (4, "delta"),
    ]
    for track in tracks:
        assert track.duration_ms is not None
        assert abs(track.duration_ms - SECONDS * 1000) <= 100, track
    assert track_lines(tracks)[:2] == ["4 tracks:", "  1  00:02  alpha"]

    # A file added while connected is in the next answer: nothing is cached.
    sf.write(str(served.music / "echo.wav"), swelling_tone(330.0, 1.0, 48_000), 48_000)
    again = await client.list()
    assert [(t.track_id, t.title) for t in again][-1] == (5, "echo")
    (served.music / "alpha.wav").unlink()
    assert [t.title for t in await client.list()] == ["bravo", "charlie", "delta", "echo"]


# -- playing -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_each_format_played_to_a_wav_file_matches_its_source(
    served: Served, clients: list[ListenClient], tmp_path: Path
) -> None:
    """Four clients at once, one track of each format each, into their --out files."""

    async def play_to_file(track_id: int, name: str) -> float:
        out = tmp_path / f"{name}.wav"
        recorder = Recorder(AudioOutput([WavSink(out)]))
        client = await connect(served, clients, recorder)
        await client.list()
        await client.play(track_id)
        end = await recorder.event(proto.StreamEnd)
        assert end.reason is proto.StreamEndReason.FINISHED
        recorder.output.close()
        played = read_wav(out)
        source = read_all(FileSound(track_path(served, name)))
        # All of it, no gaps: the packets of 2 s, the last one padded.
        assert abs(len(played) - len(source)) <= OpusSettings().frame_samples, name
        return best_correlation(played, source)

    scores = await asyncio.gather(
        *(play_to_file(i, name) for i, (name, *_) in enumerate(TRACKS, start=1))
    )
    print("correlation with the source:", dict(zip([t[0] for t in TRACKS], scores, strict=True)))
    assert all(score > 0.9 for score in scores), scores


def track_is(track_id: int) -> Callable[[proto.StreamStart], bool]:
    return lambda start: start.track_id == track_id


def has_audio(recorder: Recorder, stream_id: int) -> Callable[[], bool]:
    return lambda: stream_id in recorder.first_audio


@pytest.mark.asyncio
async def test_first_audio_comes_right_after_play(
    served: Served, clients: list[ListenClient]
) -> None:
    recorder = Recorder()
    client = await connect(served, clients, recorder)
    await client.list()
    latencies = []
    for track_id in (1, 2, 3, 4, 1):
        asked = time.monotonic()
        recorder.output.hold()  # as the program does: the old stream is silenced at once
        await client.play(track_id)
        start = await recorder.event(proto.StreamStart, track_is(track_id))
        await recorder.until(has_audio(recorder, start.stream_id))
        latencies.append(recorder.first_audio[start.stream_id] - asked)
        recorder.events.clear()
    print("first audio after play (ms):", [round(s * 1000, 1) for s in latencies])
    assert max(latencies) < 1.0


@pytest.mark.asyncio
async def test_play_while_playing_switches_with_no_old_audio_after(
    served: Served, clients: list[ListenClient], tmp_path: Path
) -> None:
    out = tmp_path / "switch.wav"
    recorder = Recorder(AudioOutput([WavSink(out)]))
    output = recorder.output
    client = await connect(served, clients, recorder)
    await client.list()
    await client.play(1)
    first = await recorder.event(proto.StreamStart)
    await recorder.until(lambda: (output.position or 0) >= 0.5)

    written_at_switch = output.samples_written
    asked = time.monotonic()
    output.hold()
    await client.play(2)
    second = await recorder.event(proto.StreamStart, lambda e: e.track_id == 2)
    await recorder.until(lambda: (output.position or 0) >= 0.5)
    await client.stop()
    await recorder.event(proto.StreamEnd, lambda e: e.stream_id == second.stream_id)
    output.close()
    waited = recorder.first_audio[second.stream_id] - asked
    print(f"switch: the new track's first audio {waited * 1000:.1f} ms after play")

    # The server ended the old stream for the switch; from the moment play
    # was sent, not one more sample of it was written.
    ends = recorder.of(proto.StreamEnd)
    assert (ends[0].stream_id, ends[0].reason) == (first.stream_id, proto.StreamEndReason.SWITCHED)
    switch = recorder.samples_at_start[second.stream_id]
    assert switch == written_at_switch

    played = read_wav(out)
    assert len(played) - switch >= 0.5 * SAMPLE_RATE
    before = [played[i : i + WINDOW] for i in range(WINDOW, switch - WINDOW + 1, WINDOW)]
    after = [played[i : i + WINDOW] for i in range(switch, len(played) - WINDOW + 1, WINDOW)]
    assert len(before) >= 3 and len(after) >= 4
    for window in before:
        assert abs(peak_frequency(window) - A_FREQ) <= 15
    for window in after:
        assert abs(peak_frequency(window) - B_FREQ) <= 15
        # Not a trace of the old track: its band is near silent.
        assert band_energy(window, A_FREQ) < 0.02 * band_energy(window, B_FREQ)


class JitterSink:
    """The speaker's jitter buffer, without the sound card."""

    def __init__(self) -> None:
        self.jitter = JitterBuffer(prefill_ms=60)

    def write(self, pcm: np.ndarray) -> None:
        self.jitter.push(pcm)

    def flush(self) -> None:
        self.jitter.clear()

    def drain(self) -> None:
        self.jitter.end()

    def close(self) -> None:
        self.jitter.clear()


@pytest.mark.asyncio
async def test_stop_ends_output_at_once(served: Served, clients: list[ListenClient]) -> None:
    speaker = JitterSink()
    recorder = Recorder(AudioOutput([speaker]))
    output = recorder.output
    client = await connect(served, clients, recorder)
    await client.list()
    await client.play(3)
    start = await recorder.event(proto.StreamStart)
    await recorder.until(lambda: (output.position or 0) >= 0.3)
    assert speaker.jitter.queued > 0

    output.hold()  # the program's stop: silent now, not when the answer comes
    written = output.samples_written
    assert speaker.jitter.queued == 0
    await client.stop()
    end = await recorder.event(proto.StreamEnd)
    assert (end.stream_id, end.reason) == (start.stream_id, proto.StreamEndReason.STOPPED)
    await client.sync()  # everything the server sent before answering is in
    assert output.samples_written == written
    assert output.current is None and not output.held
    assert speaker.jitter.queued == 0
    assert not speaker.jitter.pull(480).any()


# -- publishing ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_published_file_reaches_a_listener_in_the_room(
    served: Served, clients: list[ListenClient], clis: list[Cli], tmp_path: Path
) -> None:
    out = tmp_path / "room.wav"
    recorder = Recorder(AudioOutput([WavSink(out)]))
    listener = await connect(served, clients, recorder)
    await listener.join("kitchen")
    await recorder.event(proto.Joined)

    source = track_path(served, "bravo.flac")
    cli = await run_cli(
        clis,
        served.host,
        str(served.port),
        "--no-speaker",
        "--from",
        str(source),
        "--room",
        "kitchen",
        stdin=asyncio.subprocess.DEVNULL,
    )
    await cli.expect(r"publishing .*bravo\.flac into room kitchen")
    start = await recorder.event(proto.StreamStart)
    assert (start.track_id, start.title) == (None, "bravo")
    end = await recorder.event(proto.StreamEnd)
    assert end.reason is proto.StreamEndReason.FINISHED
    await cli.expect(r"published 00:02 into room kitchen")
    status, _, err = await cli.finish()
    assert (status, err) == (0, "")

    recorder.output.close()
    heard = read_wav(out)
    reference = read_all(FileSound(source))
    score = best_correlation(heard, reference)
    print(f"room listener vs published file: correlation {score:.4f}")
    assert score > 0.9
    assert abs(len(heard) - len(reference)) <= OpusSettings().frame_samples


@pytest.mark.asyncio
async def test_a_refused_publication_raises_after_publish_end(
    serve: Serve, clients: list[ListenClient], tmp_path: Path
) -> None:
    served = await serve(Settings(devices=DeviceSettings(require_token=True)))
    recorder = Recorder()
    client = await connect(served, clients, recorder)
    short = tmp_path / "short.wav"
    sf.write(str(short), swelling_tone(440.0, 0.2, 48_000), 48_000)
    with pytest.raises(RequestRefused) as refused:
        await client.publish_file(short, "kitchen")
    assert refused.value.error.code is proto.ErrorCode.UNAUTHENTICATED
    assert client.codec.uplink_stream is None  # PUBLISH_END went out
    assert not client.closed
    assert len(await client.list()) == 4  # and the connection carries on


# -- the program, driven from a pipe ----------------------------------------------------------


@pytest.mark.asyncio
async def test_program_driven_from_a_pipe(served: Served, clis: list[Cli], tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    cli = await run_cli(clis, "127.0.0.1", str(served.port), "--out", str(out), "--no-speaker")
    await cli.expect(rf"connected to hub at 127\.0\.0\.1:{served.port} \(session \w+\); .*")
    await cli.send("list\nplay 9\nplay 1\n")
    await cli.expect(r"4 tracks:")
    for i, (name, *_) in enumerate(TRACKS, start=1):
        await cli.expect(rf"  {i}  00:02  {name.split('.')[0]}")
    await cli.expect(r"error: not_found: no track 9 .*")
    await cli.expect(r"playing 1: alpha \(00:02\)")
    await cli.expect(r"finished: alpha")
    await cli.send("frobnicate\nquit\n")
    status, rest, err = await cli.finish()
    assert status == 0, cli.lines
    assert err == ""
    assert rest == ["unknown command: frobnicate (try help)"]
    played = read_wav(out)
    assert best_correlation(played, read_all(FileSound(track_path(served, "alpha.wav")))) > 0.9


@pytest.mark.asyncio
async def test_progress_shows_time_to_first_audio_from_the_request(
    serve: Serve, clis: list[Cli], clients: list[ListenClient]
) -> None:
    """Always, not only with -v: from the play, or from the join of a room
    that was playing; a room stream that starts later answers no request."""
    served = await serve(library=quiet_library(seconds=30.0))
    cli = await run_cli(clis, "127.0.0.1", str(served.port), "--no-speaker")
    await cli.expect(r"connected to hub at .*")
    await cli.send("play 2\n")
    await cli.expect(r"playing 2: bravo \(00:02\)")
    line = await cli.expect(r"  bravo  00:00 / 00:02  \(first audio (\d+) ms after play\)")
    assert int(line.group(1)) < scaled(1000)
    await cli.expect(r"finished: bravo")

    kitchen = served.hub.rooms.get("kitchen")
    await kitchen.press(Input.PLAY)
    # The room is playing (a listener hears it) before the program joins.
    there = Recorder()
    await (await connect(served, clients, there)).join("kitchen")
    start = await there.event(proto.StreamStart)
    await there.until(lambda: any(a.seq > 0 for a in there.of(proto.Audio)))
    await cli.send("join kitchen\n")
    await cli.expect(r"joined room kitchen")
    await cli.expect(r"playing in room kitchen: hum \(00:30\)")
    line = await cli.expect(r"  hum  00:00 / 00:30  \(first audio (\d+) ms after join\)")
    assert int(line.group(1)) < scaled(1000)
    await kitchen.press(Input.STOP)
    await cli.expect(r"stopped: hum")
    assert there.of(proto.StreamEnd)[0].stream_id == start.stream_id

    # Started by a device's Play long after the join: nobody's request here.
    await kitchen.press(Input.PLAY)
    await cli.expect(r"playing in room kitchen: hum \(00:30\)")
    await cli.expect(r"  hum  00:05 / 00:30", seconds=20)
    await kitchen.press(Input.STOP)
    await cli.expect(r"stopped: hum")
    await cli.send("quit\n")
    status, _, err = await cli.finish()
    assert (status, err) == (0, "")
    assert [n for n in cli.lines if "first audio" in n] == [
        n for n in cli.lines if re.search(r"first audio \d+ ms after (play|join)\)$", n)
    ]
    assert len([n for n in cli.lines if "first audio" in n]) == 2, cli.lines


@pytest.mark.asyncio
async def test_program_exits_0_at_end_of_input(served: Served, clis: list[Cli]) -> None:
    cli = await run_cli(clis, "127.0.0.1", str(served.port), "--no-speaker")
    await cli.send("join kitchen\n")
    assert cli.proc.stdin is not None
    cli.proc.stdin.close()
    status, rest, err = await cli.finish()
    # The answer to the last command is shown before leaving.
    assert (status, err) == (0, "")
    assert rest[-1] == "joined room kitchen", cli.lines


@pytest.mark.asyncio
async def test_connection_refused_is_one_line_and_status_1(clis: list[Cli]) -> None:
    port = free_port()
    cli = await run_cli(clis, "127.0.0.1", str(port), "--no-speaker")
    status, out, err = await cli.finish()
    assert status == 1
    assert out == []
    assert err == f"hub-listen: cannot connect to 127.0.0.1:{port}: connection refused\n"


@pytest.mark.asyncio
async def test_ctrl_c_leaves_with_status_0(served: Served, clis: list[Cli]) -> None:
    cli = await run_cli(clis, "127.0.0.1", str(served.port), "--no-speaker")
    await cli.expect(r"connected to hub .*")
    cli.proc.send_signal(signal.SIGINT)
    status, rest, err = await cli.finish()
    assert (status, rest, err) == (0, [], "")


@pytest.mark.asyncio
async def test_no_microphone_is_one_line_and_status_1(served: Served, clis: list[Cli]) -> None:
    if has_device("input"):
        pytest.skip("this machine has a microphone")
    cli = await run_cli(clis, "127.0.0.1", str(served.port), "--mic", "kitchen")
    status, out, err = await cli.finish()
    assert (status, out) == (1, [])
    assert re.fullmatch(r"hub-listen: no microphone to publish from: .+\n", err), err


def test_no_speaker_is_one_line_and_the_client_carries_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_device() -> SpeakerSink:
        raise AudioDeviceError("Error querying device -1")

    monkeypatch.setattr(listen, "SpeakerSink", no_device)
    text = io.StringIO()
    args = listen.parse_args(["127.0.0.1", "1", "--out", str(tmp_path / "x.wav")])
    sinks = listen.open_sinks(args, PlainScreen(text, live=False))
    assert [type(sink) for sink in sinks] == [WavSink]
    assert text.getvalue() == (
        "no audio output (Error querying device -1): continuing without speaker\n"
    )
    for sink in sinks:
        sink.close()
    if not has_device("output"):  # and the real one says so here
        with pytest.raises(AudioDeviceError):
            SpeakerSink()


@pytest.mark.asyncio
async def test_server_going_away_is_reported_with_status_1(served: Served, clis: list[Cli]) -> None:
    cli = await run_cli(clis, "127.0.0.1", str(served.port), "--no-speaker")
    await cli.expect(r"connected to hub .*")
    await served.hub.shutdown()
    await served.server.close()
    await cli.expect(r"connection closed by the server: shutdown: the server is shutting down")
    status, _, err = await cli.finish()
    assert (status, err) == (1, "")


@pytest.mark.asyncio
async def test_token_in_hello(serve: Serve, clis: list[Cli]) -> None:
    served = await serve(Settings(stream=StreamSettings(require_token=True)))
    without = await run_cli(clis, "127.0.0.1", str(served.port), "--no-speaker")
    status, _, err = await without.finish()
    assert status == 1
    assert (
        err == "hub-listen: the server refused us: unauthenticated: this server requires a token\n"
    )

    _, token = await served.hub.sessions.create("alice")
    cli = await run_cli(
        clis, "127.0.0.1", str(served.port), "--no-speaker", "--token", token, "--name", "test"
    )
    await cli.expect(r"connected to hub at .* as alice \(session \w+\); .*")
    await cli.send("quit\n")
    status, _, err = await cli.finish()
    assert (status, err) == (0, "")


# -- keepalive --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_pings_keep_a_quiet_connection_open(
    serve: Serve, clients: list[ListenClient]
) -> None:
    served = await serve(Settings(stream=StreamSettings(idle_timeout=0.3)))
    recorder = Recorder()
    client = await connect(served, clients, recorder)
    assert client.welcome is not None and client.welcome.idle_timeout_ms == 300
    # A PING every 100 ms of silence, each answered: past the idle timeout
    # several times over, and the server has not closed us.
    await recorder.until(lambda: len(recorder.of(proto.Pong)) >= 6)
    assert not client.closed
    assert client.pings_sent >= 6
    assert len(await client.list()) == 4


@pytest.mark.asyncio
async def test_server_pings_are_answered() -> None:
    """A fake server (the codec, server side) PINGs the client and gets its PONG."""
    pong: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = proto.Connection(proto.Role.SERVER)
        while data := await reader.read(65536):
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, proto.Hello):
                    writer.write(conn.send(proto.Welcome(1, "fake", "s1")))
                    writer.write(conn.send(proto.Ping(42)))
                elif isinstance(event, proto.Pong) and not pong.done():
                    pong.set_result(event.nonce)
        writer.close()

    server = await asyncio.start_server(serve_one, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = ListenClient()
    try:
        welcome = await client.connect("127.0.0.1", port)
        assert welcome.server_name == "fake"
        assert await asyncio.wait_for(pong, timeout(5)) == 42
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_connect_errors_are_sentences() -> None:
    client = ListenClient()
    with pytest.raises(
        ConnectError, match=r"cannot connect to 127\.0\.0\.1:\d+: connection refused"
    ):
        await client.connect("127.0.0.1", free_port())


# -- the audio output and the lines, without a network --------------------------------------


def packets(freq: float, count: int) -> list[bytes]:
    encoder = OpusEncoder(OpusSettings())
    pcm = swelling_tone(freq, count * 0.02, SAMPLE_RATE)
    return encoder.feed(pcm)


def test_gaps_in_seq_are_concealed_and_stale_audio_ignored() -> None:
    output = AudioOutput()
    frame = OpusSettings().frame_samples
    output.start(proto.StreamStart(7, 1, "t", 1000))
    sent = packets(440.0, 10)
    for seq in (0, 1, 2, 5, 6):  # 3 and 4 were skipped by the server
        output.audio(proto.Audio(7, seq, sent[seq]))
    assert output.samples_written == 7 * frame
    decoder = output.decoder
    assert isinstance(decoder, StreamDecoder)
    assert decoder.concealed == 2
    output.audio(proto.Audio(7, 6, sent[6]))  # not newer: dropped
    output.audio(proto.Audio(8, 7, sent[7]))  # another stream's: ignored
    assert output.samples_written == 7 * frame
    output.audio(proto.Audio(7, 500, sent[7]))  # a jump of 10 s: not concealed
    assert output.samples_written == 8 * frame
    assert output.position == pytest.approx(501 * 0.02)

    output.hold()  # a play was sent: the rest of stream 7 is not heard
    output.audio(proto.Audio(7, 501, sent[8]))
    assert output.samples_written == 8 * frame
    output.release()  # ... and refused: it is again
    output.audio(proto.Audio(7, 502, sent[9]))
    assert output.samples_written == 9 * frame


def test_progress_lines_and_hostile_titles() -> None:
    text = io.StringIO()
    listener = Listener(PlainScreen(text, live=False), AudioOutput())
    hostile = "\x1b[2J[bold]evil[/bold]\r"
    listener.on_event(proto.StreamStart(3, 2, hostile, 12_000))
    sent = packets(440.0, 1)[0]
    for seq in range(int(12 / 0.02)):
        listener.on_event(proto.Audio(3, seq, sent))
    listener.on_event(proto.StreamEnd(3, proto.StreamEndReason.FINISHED))
    listener.on_event(proto.Error(proto.ErrorCode.NOT_FOUND, "no track 9\x07", False))
    shown = "\\x1b[2J[bold]evil[/bold]\\x0d"
    assert text.getvalue().splitlines() == [
        f"playing 2: {shown} (00:12)",
        f"  {shown}  00:05 / 00:12",
        f"  {shown}  00:10 / 00:12",
        f"finished: {shown}",
        "error: not_found: no track 9\\x07",
    ]
    assert "\x1b" not in text.getvalue()

    # On a terminal the progress is one line redrawn in place.
    live = io.StringIO()
    listener = Listener(PlainScreen(live, live=True), AudioOutput())
    listener.on_event(proto.StreamStart(4, None, "live", None))
    listener.on_event(proto.Audio(4, 0, sent))
    assert live.getvalue().endswith("\r\x1b[K  live  00:00")
    assert [clock(s) for s in (None, 0, 61.9, 3_723)] == ["--:--", "00:00", "01:01", "1:02:03"]
