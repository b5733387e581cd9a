"""The Dockerfile, checked without a Docker engine.

Its instructions are parsed and checked (base, system library, ports, a user
that is not root, exec-form entry point); then its ENTRYPOINT is run here, as
the venv's console script, with the reference's own command lines (only the
server's addresses moved to 127.0.0.1, port 0), and the transcripts are
compared with the contract.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import PASSWORD, SESSION, TIME, Procs, server_args

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    parsed: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        parsed.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return parsed


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def arguments(keyword: str) -> list[str]:
    return [args for kw, args in final_stage() if kw == keyword]


def entrypoint() -> list[str]:
    (args,) = arguments("ENTRYPOINT")
    argv = json.loads(args)  # exec form: signals reach the hub, not a shell
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def local_command(argv: list[str]) -> list[str]:
    """The entry point as this venv has it: its console script."""
    program, *rest = argv
    script = Path(sys.executable).with_name(program)
    found = str(script) if script.exists() else shutil.which(program)
    assert found is not None, f"{program} is not installed in this environment"
    return [found, *rest]


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs(local_command(entrypoint()))
    yield started
    started.stop_all()


def test_the_image_is_slim_python_with_libopus() -> None:
    assert arguments("FROM")[0].split()[0] == "python:3.11-slim-bookworm"
    runs = " && ".join(arguments("RUN"))
    install = re.search(r"apt-get install -y --no-install-recommends ([^&]*)", runs)
    assert install is not None and "libopus0" in install[1].split()
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert re.search(r"pip install --no-cache-dir \S+", runs)
    assert "PyQt5" not in runs and "[qt]" not in runs


def test_the_image_runs_as_a_user_that_is_not_root() -> None:
    steps = final_stage()
    users = [(i, args) for i, (keyword, args) in enumerate(steps) if keyword == "USER"]
    assert users, "no USER: the hub would run as root"
    index, user = users[-1]
    assert user.split(":")[0] not in ("root", "0")
    entry = next(i for i, (keyword, _) in enumerate(steps) if keyword == "ENTRYPOINT")
    assert index < entry
    creates = " ".join(args for keyword, args in steps[:index] if keyword == "RUN")
    assert re.search(rf"(useradd|adduser)\b.*\b{re.escape(user.split(':')[0])}\b", creates)


def test_the_image_exposes_every_door() -> None:
    ports = {port.split("/")[0] for args in arguments("EXPOSE") for port in args.split()}
    assert ports == {"6262", "50051", "8080"}  # chat and devices (gRPC), streaming (TCP)


def test_the_healthcheck_is_the_hub_probe() -> None:
    (healthcheck,) = arguments("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert json.loads(command) == ["hub", "health"]  # exec form, no shell in the image's way
    assert "--timeout" in options


def test_the_entry_point_is_the_console_script() -> None:
    assert entrypoint() == ["hub"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hub"] == "hub.__main__:main"
    assert not arguments("CMD"), "arguments come from `docker run IMAGE ...` only"


def test_every_run_step_is_valid_shell() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    for command in arguments("RUN"):
        checked = subprocess.run([bash, "-n", "-c", command], capture_output=True, text=True)
        assert checked.returncode == 0, (command, checked.stderr)


def test_the_context_leaves_out_local_state() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    assert not ignored & {"hub", "clients", "sounds", "pyproject.toml", "README.md"}


def test_the_entry_point_runs_the_readme_commands(procs: Procs) -> None:
    # `IMAGE -s -p "super-secret"`, with every door on loopback and a free port
    # of its own (both gRPC doors asked for 127.0.0.1:0: two ports).
    server, port = procs.server(*server_args(devices="127.0.0.1:0", stream="127.0.0.1:0"))
    grpc_door = rf"{TIME} <<Server>>: .*\(gRPC\) on 127\.0\.0\.1:(\d+)"
    assert int(server.expect(grpc_door)[1]) == port
    devices = int(server.expect(grpc_door)[1])
    stream = int(server.expect(rf"{TIME} <<Server>>: .*\(TCP\) on 127\.0\.0\.1:(\d+)")[1])
    # `docker run -i IMAGE -h "chat-server:6262" -p "super-secret" -n "alice"`
    alice = procs.start("-h", f"127.0.0.1:{port}", "-p", PASSWORD, "-n", "alice")
    alice.expect_line("<<Client>>: connected to stream")
    server.expect(rf"{TIME} <<Server>>: {SESSION} \(alice\) has logged in")
    alice.send("hello from a container")
    alice.expect_line("alice: hello from a container")
    alice.close_stdin()
    assert alice.wait() == 0
    server.expect(rf"{TIME} <<Server>>: {SESSION} \(alice\) has logged out")

    server.signal(signal.SIGTERM)  # `docker stop`
    assert server.wait(5) == 0
    assert server.transcript() == [
        f'[TIME] <<Server>>: starting on 127.0.0.1:{port} with password "{PASSWORD}"',
        f"[TIME] <<Server>>: serving chat, rooms and devices (gRPC) on 127.0.0.1:{port}",
        f"[TIME] <<Server>>: serving chat, rooms and devices (gRPC) on 127.0.0.1:{devices}",
        f"[TIME] <<Server>>: serving music and room streaming (TCP) on 127.0.0.1:{stream}",
        "[TIME] <<Server>>: SESSION (alice) has logged in",
        "[TIME] <<Server>>: SESSION (alice) has logged out",
        "[TIME] <<Server>>: shutting down",
    ]
    assert alice.transcript() == [
        "[TIME] <<Client>>: logged in successfully",
        "[TIME] <<Client>>: connected to stream",
        "[TIME] alice: hello from a container",
        "[TIME] <<Client>>: logging out",
    ]
