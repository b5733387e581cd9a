"""scripts/setup: what it installs, and that it installs only when something changed.

The stamp tests run the real script in a copy of the repository's top level
whose ``.venv/bin/python`` is a stub that records how it was called, so each
run takes a fraction of a second and touches no real virtualenv; dpkg-query
is a stub that reports every system package installed, and apt-get a stub
that fails, so the apt step stays out of it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup"
DEV_INSTALL = "-m pip install -q -e .[dev,qt,redis]"
BASE_INSTALL = "-m pip install -q -e ."

PYTHON_STUB = """#!/bin/sh
echo "$*" >>"$STUB_LOG"
exit "${STUB_PIP_EXIT:-0}"
"""
DPKG_QUERY_STUB = """#!/bin/sh
printf 'install ok installed'
"""
APT_STUB = """#!/bin/sh
echo "apt-get $*" >>"$STUB_LOG"
exit 99
"""


def write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@dataclass
class Checkout:
    """The files scripts/setup reads, in a temporary directory."""

    root: Path

    @property
    def log(self) -> Path:
        return self.root / "calls.log"

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def setup(self, *args: str, pip_exit: int = 0) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.root / 'stubs'}{os.pathsep}{env['PATH']}"
        env["PYTHON"] = sys.executable  # the version check's interpreter
        env["STUB_LOG"] = str(self.log)
        env["STUB_PIP_EXIT"] = str(pip_exit)
        return subprocess.run(
            [str(self.root / "scripts" / "setup"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    write_executable(tmp_path / "scripts" / "setup", SETUP.read_text())
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    write_executable(tmp_path / ".venv" / "bin" / "python", PYTHON_STUB)
    write_executable(tmp_path / "stubs" / "dpkg-query", DPKG_QUERY_STUB)
    for name in ("apt-get", "sudo"):
        write_executable(tmp_path / "stubs" / name, APT_STUB)
    return Checkout(tmp_path)


def pip_installs(calls: list[str]) -> list[str]:
    return [call for call in calls if "pip install" in call]


def test_a_second_setup_does_not_run_pip(checkout: Checkout) -> None:
    first = checkout.setup("--dev")
    assert first.returncode == 0, first.stderr
    assert pip_installs(checkout.calls())[-1] == DEV_INSTALL

    before = checkout.calls()
    again = checkout.setup("--dev")
    plain = checkout.setup()  # --dev installed everything the plain setup needs

    assert again.returncode == plain.returncode == 0
    assert checkout.calls() == before
    assert "setup: up to date" in again.stderr
    assert "setup: up to date" in plain.stderr


def test_a_changed_pyproject_installs_again(checkout: Checkout) -> None:
    checkout.setup("--dev")
    pyproject = checkout.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# a new pin\n")
    count = len(pip_installs(checkout.calls()))

    changed = checkout.setup("--dev")

    assert changed.returncode == 0, changed.stderr
    assert pip_installs(checkout.calls())[count:][-1] == DEV_INSTALL
    assert "up to date" not in changed.stderr


def test_asking_for_the_dev_extras_after_a_plain_setup_installs_them(checkout: Checkout) -> None:
    checkout.setup()
    assert pip_installs(checkout.calls())[-1] == BASE_INSTALL
    checkout.setup()
    count = len(pip_installs(checkout.calls()))

    checkout.setup("--dev")

    assert pip_installs(checkout.calls())[count:][-1] == DEV_INSTALL


def test_a_failed_install_is_tried_again(checkout: Checkout) -> None:
    failed = checkout.setup("--dev", pip_exit=1)
    assert failed.returncode != 0
    count = len(pip_installs(checkout.calls()))

    retried = checkout.setup("--dev")

    assert retried.returncode == 0, retried.stderr
    assert pip_installs(checkout.calls())[count:][-1] == DEV_INSTALL


# Qt's xcb platform plugin and its GL integrations: what `python -m
# clients.qt_device` loads on a real X display. Offscreen Qt loads none of it.
X_LIBRARY = re.compile(r"^lib(xcb|X11|Xext|xkbcommon)")


def xcb_plugins() -> list[Path]:
    pyqt5 = pytest.importorskip("PyQt5")
    plugins = Path(pyqt5.__file__).parent / "Qt5" / "plugins"
    found = [plugins / "platforms" / "libqxcb.so", *plugins.glob("xcbglintegrations/*.so")]
    assert found[0].exists(), f"no xcb plugin in {plugins}"
    return found


def owning_package(library: Path) -> str:
    # Debian's merged /usr: dpkg may have recorded either spelling of the path.
    real = library.resolve()
    spellings = [real, Path(str(real).removeprefix("/usr")), Path("/usr" + str(real))]
    for path in spellings:
        owner = subprocess.run(["dpkg", "-S", str(path)], capture_output=True, text=True)
        if owner.returncode == 0:
            return owner.stdout.split(":")[0]
    raise AssertionError(f"no package owns {real}")


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="not a Debian system")
def test_setup_dev_installs_every_x_library_the_xcb_plugin_loads() -> None:
    listed = SETUP.read_text()
    missing: list[str] = []
    unlisted: set[str] = set()
    for plugin in xcb_plugins():
        linked = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, check=True)
        for line in linked.stdout.splitlines():
            name, _, where = line.strip().partition(" => ")
            if "not found" in where:
                missing.append(f"{plugin.name}: {name}")
            elif X_LIBRARY.match(name):
                package = owning_package(Path(where.split(" (")[0]))
                if not re.search(rf"(?<![\w-]){re.escape(package)}(?![\w-])", listed):
                    unlisted.add(package)
    assert missing == [], "run scripts/setup --dev; still missing: " + ", ".join(missing)
    assert unlisted == set(), f"scripts/setup --dev does not name {sorted(unlisted)}"
