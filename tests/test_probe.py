"""``hub health`` (the image's HEALTHCHECK) against a real `hub -s`."""

from __future__ import annotations

import signal
import subprocess
import sys

from cli_helpers import Procs, free_port, hub_env, timeout

from hub.probe import probe_address


def health(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", "health", *args],
        env=hub_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )


def test_the_probe_finds_the_server_where_the_server_was_told_to_be(procs: Procs) -> None:
    server, port = procs.server()
    by_flag = health("-h", f"127.0.0.1:{port}")
    assert by_flag.returncode == 0, by_flag.stdout + by_flag.stderr
    assert by_flag.stdout.startswith(f"healthy: 127.0.0.1:{port}")
    by_env = health(HUB_HOST=f"127.0.0.1:{port}")  # as the HEALTHCHECK finds it
    assert by_env.returncode == 0, by_env.stdout + by_env.stderr

    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    gone = health("-h", f"127.0.0.1:{port}")
    assert gone.returncode == 1
    assert gone.stdout.startswith(f"unhealthy: 127.0.0.1:{port}")


def test_a_closed_port_is_unhealthy_at_once() -> None:
    port = free_port()
    done = health("-h", f"127.0.0.1:{port}")
    assert done.returncode == 1
    assert done.stdout == f"unhealthy: 127.0.0.1:{port}: UNAVAILABLE\n"


def test_an_any_interface_address_is_probed_on_loopback() -> None:
    assert probe_address("0.0.0.0:6262") == "127.0.0.1:6262"
    assert probe_address("[::]:6262") == "127.0.0.1:6262"
    assert probe_address("10.1.2.3:6262") == "10.1.2.3:6262"
