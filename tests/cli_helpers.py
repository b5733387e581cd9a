"""Real `hub` processes for the command-line tests: start, feed, read, stop.

Every process's standard error is read line by line by a thread; ``expect``
waits for the next line matching a pattern, with a deadline (scaled by
``HUB_TEST_TIMEOUT_FACTOR``), and fails with the transcript so far. A client
can also run on a pseudo-terminal (``Terminal``): keystrokes in, screen out.
Nothing here sleeps to synchronise. Servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Sequence
from typing import IO

from waiting import scaled

PASSWORD = "super-secret"
SECRET = "0123456789abcdef0123456789abcdef01234567"  # 40 characters

HUB = [sys.executable, "-m", "hub"]
# The reference's time format: 12-hour, zero padded, AM/PM.
TIME = r"\[(?:0[1-9]|1[0-2]):[0-5]\d:[0-5]\d [AP]M\]"
STARTING = re.compile(
    rf'{TIME} <<Server>>: starting on 127\.0\.0\.1:(?P<port>\d+) with password "{PASSWORD}"'
)
SESSION = r"[0-9a-f]{8}"


def timeout(seconds: float = 10.0) -> float:
    """A sanity bound for one wait, scaled for slow machines."""
    return scaled(seconds)


def free_port() -> int:
    """A loopback port with nothing listening on it (for a door or a target to give a process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def hub_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HUB_TOKEN_SECRET_FILE", None)
    env["HUB_TOKEN_SECRET"] = SECRET
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def server_args(*, devices: str = "none", stream: str = "none") -> tuple[str, ...]:
    """``hub -s -p PASSWORD`` on 127.0.0.1, port 0; the other doors shut unless given."""
    return (
        "-s",
        "-p",
        PASSWORD,
        "-h",
        "127.0.0.1:0",
        "--device-address",
        devices,
        "--stream-address",
        stream,
    )


def normalize(line: str) -> str:
    """Times become ``[TIME]``; the session ids of server lines become ``SESSION``."""
    line = re.sub(rf"^{TIME} ", "[TIME] ", line)
    return re.sub(rf"^(\[TIME\] <<Server>>: ){SESSION} \(", r"\1SESSION (", line)


class Proc:
    """A process whose standard error is collected as lines by a thread."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else hub_env(),
        )
        self.lines: list[str] = []
        self.stdout = bytearray()
        self._cursor = 0  # lines before it were matched or skipped by expect
        self._eof = False
        self._changed = threading.Condition()
        assert self.popen.stderr is not None and self.popen.stdout is not None
        self._threads = [
            threading.Thread(target=self._read_lines, args=(self.popen.stderr,), daemon=True),
            threading.Thread(target=self._read_stdout, args=(self.popen.stdout,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_lines(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").removesuffix("\n")
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _read_stdout(self, stream: IO[bytes]) -> None:
        while chunk := stream.read1(65536):
            self.stdout += chunk

    # -- reading -----------------------------------------------------------

    def expect(self, pattern: str | re.Pattern[str], seconds: float = 10.0) -> re.Match[str]:
        """Wait for the next line that fully matches ``pattern`` (earlier ones are skipped)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout(seconds)
        with self._changed:
            while True:
                while self._cursor < len(self.lines):
                    line = self.lines[self._cursor]
                    self._cursor += 1
                    if match := regex.fullmatch(line):
                        return match
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "its output ended" if self._eof else "timed out"
                    raise AssertionError(
                        f"{why} waiting for {regex.pattern!r} from {self.argv}; "
                        f"lines so far:\n" + "\n".join(self.lines)
                    )
                self._changed.wait(left)

    def expect_line(self, text: str, seconds: float = 10.0) -> re.Match[str]:
        """Wait for ``[TIME] text`` exactly."""
        return self.expect(rf"{TIME} {re.escape(text)}", seconds)

    def join(self, name: str) -> None:
        """Wait until this client, ``name``, is in the room: a line of its own came back.

        A client says "connected to stream" once its call has started; only
        an event through the stream shows that the server has it in the room.
        """
        self.expect_line("<<Client>>: connected to stream")
        self.send(f"{name} is here")
        self.expect_line(f"{name}: {name} is here")

    def transcript(self) -> list[str]:
        with self._changed:
            return [normalize(line) for line in self.lines]

    # -- driving -----------------------------------------------------------

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text.encode() + b"\n")
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        assert self.popen.stdin is not None
        if not self.popen.stdin.closed:
            self.popen.stdin.close()

    def signal(self, signum: int = signal.SIGINT) -> None:
        self.popen.send_signal(signum)

    def wait(self, seconds: float = 10.0) -> int:
        """The exit status; also waits until all its output is read."""
        status = self.popen.wait(timeout(seconds))
        for thread in self._threads:
            thread.join(timeout(seconds))
        return status

    def stop(self) -> None:
        """Make sure the process is gone and its pipes closed (teardown)."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        for thread in self._threads:
            thread.join(timeout(5))
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None and not stream.closed:
                stream.close()


class Procs:
    """Starts servers and clients; ``stop_all`` at teardown."""

    def __init__(self, hub: Sequence[str] = HUB) -> None:
        self.hub = list(hub)
        self.started: list[Proc] = []
        self.terminals: list[Terminal] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc([*self.hub, *args], env=env)
        self.started.append(proc)
        return proc

    def server(self, *args: str) -> tuple[Proc, int]:
        """A server on 127.0.0.1 (port 0 unless ``args`` say otherwise), and its port."""
        proc = self.start(*(args or server_args()))
        match = proc.expect(STARTING, seconds=20)
        return proc, int(match["port"])

    def client(self, port: int, name: str, password: str = PASSWORD) -> Proc:
        return self.start("-h", f"127.0.0.1:{port}", "-p", password, "-n", name)

    def terminal(self, port: int, name: str, password: str = PASSWORD) -> Terminal:
        """A client on a pseudo-terminal of its own, as a person runs it."""
        terminal = Terminal([*self.hub, "-h", f"127.0.0.1:{port}", "-p", password, "-n", name])
        self.terminals.append(terminal)
        return terminal

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()
        for terminal in self.terminals:
            terminal.stop()


# -- a client on a pseudo-terminal ------------------------------------------------

ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78])")


class Terminal:
    """A client on a pseudo-terminal: keystrokes in, screen bytes out."""

    def __init__(self, argv: list[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
        env = hub_env(TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1")
        env.pop("NO_COLOR", None)
        # Standard output is not the terminal: the prompt and every line must
        # go to standard error, as the reference's lines do.
        self.popen = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError as error:  # EIO: the other side is closed
                assert error.errno == errno.EIO
                chunk = b""
            with self._changed:
                if not chunk:
                    self._changed.notify_all()
                    return
                self.output += chunk
                self._changed.notify_all()

    def screen_text(self) -> str:
        """Everything written so far, without escape sequences."""
        with self._changed:
            raw = bytes(self.output)
        return ANSI.sub("", raw.decode("utf-8", "replace"))

    def wait_for(self, pattern: str, start: int = 0, seconds: float = 10.0) -> int:
        """Wait until ``pattern`` is on screen after ``start``; where the match ends.

        Positions are in ``screen_text()``.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout(seconds)
        with self._changed:
            while not (match := regex.search(self.screen_text(), start)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {pattern!r}; screen:\n{self.screen_text()!r}"
                    )
                self._changed.wait(left)
            return match.end()

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, seconds: float = 10.0) -> int:
        """The exit status; also waits until all it wrote is read."""
        status = self.popen.wait(timeout(seconds))
        self._reader.join(timeout(seconds))
        return status

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        self._reader.join(timeout(5))
        os.close(self.master)
        assert self.popen.stdout is not None
        self.popen.stdout.close()
