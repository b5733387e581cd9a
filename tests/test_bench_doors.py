"""Every benchmark's hub binds each door it opens on a free port: it starts
while something else holds the defaults (6262, 50051, 8080), as the hub that
``scripts/run`` started would."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import chat, devices, tcp

DEFAULT_PORTS = (6262, 50051, 8080)


@pytest.fixture
def default_ports_held() -> Iterator[None]:
    """Listen on every default port (one already taken by someone else is
    held all the same)."""
    with contextlib.ExitStack() as stack:
        for port in DEFAULT_PORTS:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("0.0.0.0", port))
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                continue
            sock.listen()
        yield


def test_the_chat_benchmark_hub_starts_beside_held_default_ports(
    tmp_path: Path, default_ports_held: None
) -> None:
    check_starts(chat.Server(chat.build_parser().parse_args([]), tmp_path, "doors"))


def test_the_device_benchmark_hub_starts_beside_held_default_ports(
    tmp_path: Path, default_ports_held: None
) -> None:
    args = devices.build_parser().parse_args([])
    check_starts(devices.Server(args, tmp_path, "doors", 20.0))


def check_starts(server: chat.Server | devices.Server) -> None:
    try:
        server.start()
        assert server.address.startswith("127.0.0.1:")
        assert int(server.address.rpartition(":")[2]) not in DEFAULT_PORTS
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "Traceback" not in log, log


def test_the_tcp_benchmark_hub_starts_beside_held_default_ports(
    tmp_path: Path, default_ports_held: None
) -> None:
    music = tmp_path / "music"
    music.mkdir()
    args = tcp.build_parser().parse_args([])
    server = tcp.Server(args, tmp_path, "doors", 20.0)
    try:
        server.start(music)
        ports = {int(a.rpartition(":")[2]) for a in (server.address, server.stream_address)}
        assert not ports & set(DEFAULT_PORTS)
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "Traceback" not in log, log
