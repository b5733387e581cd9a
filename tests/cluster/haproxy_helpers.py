"""A real HAProxy in front of hub processes, run from deploy/haproxy.cfg itself.

The deployed configuration is what runs: only its addresses are moved, each
frontend's ``bind`` to 127.0.0.1 on a free port and each backend's
``server hubN`` to the Nth test hub's port for that door, and a stats socket
is added so the test can wait until HAProxy's health checks see every hub
up. Nothing sleeps to synchronise: the waits poll HAProxy's own state with a
deadline.
"""

from __future__ import annotations

import csv
import io
import re
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cli_helpers import free_port
from waiting import scaled

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED_CONFIG = ROOT / "deploy" / "haproxy.cfg"
DOORS = ("chat", "devices", "stream")


def local_config(
    text: str, hubs: Sequence[Mapping[str, int]], fronts: Mapping[str, int], stats: Path
) -> str:
    """``text`` (deploy/haproxy.cfg) with its addresses moved to this machine.

    ``hubs[i]`` maps each door to hub i+1's port; ``fronts`` each door to the
    port HAProxy listens on. Backends list exactly the hubs given.
    """
    out: list[str] = []
    section = ""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if line and not line[0].isspace() and words:
            section = " ".join(words)
            out.append(line)
            if section == "global":
                out.append(f"    stats socket {stats} level admin")
            continue
        kind, _, door = section.partition(" ")
        if kind == "frontend" and words[:1] == ["bind"]:
            out.append(f"    bind 127.0.0.1:{fronts[door]}")
        elif kind == "backend" and words[:1] == ["server"]:
            index = int(re.fullmatch(r"hub(\d+)", words[1])[1]) - 1  # type: ignore[index]
            if index < len(hubs):
                out.append(f"    server {words[1]} 127.0.0.1:{hubs[index][door]}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class Balancer:
    """A running HAProxy: the port of each door, its log, its stats socket."""

    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    stats: Path
    log: Path

    def address(self, door: str = "chat") -> str:
        return f"127.0.0.1:{self.ports[door]}"

    def ask(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(scaled(5))
            sock.connect(str(self.stats))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[tuple[str, str], dict[str, str]]:
        """Every backend server's stats row by (backend, server)."""
        text = self.ask("show stat").removeprefix("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            (row["pxname"], row["svname"]): row
            for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_all_up(self, seconds: float = 20.0) -> None:
        """Until HAProxy's health checks have every server UP (a sanity deadline)."""
        deadline = time.monotonic() + scaled(seconds)
        while True:
            states = {key: row["status"] for key, row in self.servers().items()}
            if states and all(state == "UP" for state in states.values()):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"HAProxy's servers are not all up: {states}\n{self.text()}")
            time.sleep(0.1)

    def sessions(self, door: str = "chat") -> dict[str, int]:
        """Connections each server of ``door``'s backend has been given so far."""
        return {
            server: int(row["stot"])
            for (backend, server), row in self.servers().items()
            if backend == door
        }

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(scaled(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_haproxy(
    directory: Path, hubs: Sequence[Mapping[str, int]], attempts: int = 3
) -> Balancer:
    """HAProxy on deploy/haproxy.cfg in front of ``hubs`` ({door: port} each), all up."""
    for attempt in range(attempts):
        fronts = {door: free_port() for door in DOORS}
        stats = directory / f"haproxy-{attempt}.sock"
        config = directory / f"haproxy-{attempt}.cfg"
        config.write_text(local_config(DEPLOYED_CONFIG.read_text(), hubs, fronts, stats))
        log = directory / f"haproxy-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["haproxy", "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        balancer = Balancer(proc, fronts, stats, log)
        deadline = time.monotonic() + scaled(10)
        while not stats.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None and stats.exists():
            balancer.wait_all_up()
            return balancer
        balancer.stop()
        # A free port taken by someone else between our check and HAProxy's bind: again.
        if "cannot bind socket" not in balancer.text():
            break
    raise AssertionError(f"HAProxy did not start:\n{balancer.text()}")
