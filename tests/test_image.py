"""The image built from the Dockerfile and a chat run through it, for real.

``scripts/image-test`` does it with podman (see its docstring and the README's
Docker section); this test runs it, and is skipped, saying why, only where
podman cannot run: the tools missing, not root, or ``podman info`` failing.
The stand-in base image is made on the first run (about a minute) and reused
after; the project's image is built afresh every time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import timeout

ROOT = Path(__file__).resolve().parents[1]


def why_podman_cannot_run() -> str | None:
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup --dev installs it)"
    if os.geteuid() != 0:
        return "podman with runc and host networking needs root on these machines"
    info = subprocess.run(["podman", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"podman info fails: {last}"
    return None


def test_the_image_builds_and_a_chat_runs_through_it() -> None:
    if reason := why_podman_cannot_run():
        print(f"skipped: {reason}", file=sys.stderr)
        pytest.skip(reason)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image-test")],
        capture_output=True,
        text=True,
        timeout=timeout(900),  # a cold run, base and all, takes a few minutes
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "image-test: HEALTHCHECK: exit 0: healthy: 127.0.0.1:" in output, output
    assert "image-test: probe of a closed port: exit 1: unhealthy" in output, output
    assert "] alice: hello from the image" in output, output
    assert "<<Server>>: shutting down" in output, output
    assert "image-test: image-test passed" in output, output
