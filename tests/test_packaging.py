"""The package as pip installs it, away from this checkout and this prefix.

The bundled mode sounds are package data (``hub/sounds/``), found with
``importlib.resources`` wherever the package lands: here a wheel installed
with ``pip install --target`` (as a ``--user`` or system install would put it
elsewhere than ``sys.prefix``, where data-files would have gone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cli_helpers import timeout

ROOT = Path(__file__).resolve().parents[1]


def test_an_install_outside_the_prefix_finds_its_sounds(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ into the tree
    for part in ("hub", "clients"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        timeout=timeout(120),
    )
    (wheel,) = wheels.glob("hub-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        timeout=timeout(120),
    )
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hub, sys; from hub.audio.library import SoundLibrary, default_sounds_folder;"
            "print(hub.__file__); print(default_sounds_folder());"
            "print(len(SoundLibrary.from_folder()))",
        ],
        env=dict(os.environ, PYTHONPATH=str(target)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert found.returncode == 0, found.stderr
    module, folder, count = found.stdout.split("\n")[:3]
    assert module.startswith(str(target)), module  # the installed copy, not the checkout
    assert Path(folder) == target / "hub" / "sounds"
    assert count == "5"
