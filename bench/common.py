"""What every benchmark needs: the hub as a watched subprocess, a quiet machine.

``HubProcess`` starts ``python -m <module> ...`` with its output in a log file,
waits for the reference start line (``starting on HOST:PORT``) and samples the
process's CPU and memory from outside every 100 ms until ``stop``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

# The token secret every benchmark's hub signs with (the value is no secret).
SECRET = "bench-secret-bench-secret-bench-secret-0"
STARTING = re.compile(r"starting on (\S+):(\d+)")


class HubProcess:
    """The hub as a subprocess, its CPU and memory watched from outside."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""  # the chat address from the start line
        self.rss_peak = 0
        self.cpu_samples: list[tuple[float, float]] = []  # (monotonic, cpu seconds)
        self._window_peak = 0
        self._in_window = False
        self._stop = threading.Event()

    def start(
        self,
        module: str,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        import psutil

        environment = dict(os.environ, HUB_TOKEN_SECRET=SECRET)
        environment.pop("HUB_TOKEN_SECRET_FILE", None)
        environment.update(env or {})
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env=environment,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if match := STARTING.search(text):
                self.address = f"{match.group(1)}:{match.group(2)}"
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
        self.ps = psutil.Process(self.proc.pid)
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            try:
                rss = self.ps.memory_info().rss
                times = self.ps.cpu_times()
            except Exception:
                return
            self.rss_peak = max(self.rss_peak, rss)
            if self._in_window:
                self._window_peak = max(self._window_peak, rss)
            self.cpu_samples.append((time.monotonic(), times.user + times.system))

    def window(self, on: bool) -> None:
        """Start or end the measured window, for ``window_peak_mb``."""
        if on:
            self._window_peak = self.ps.memory_info().rss
        self._in_window = on

    @property
    def window_peak_mb(self) -> float:
        return self._window_peak / 2**20

    def cpu(self) -> float:
        """CPU seconds of the server so far, user + system, all threads."""
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def peak_cpu_pct(self, t0: float, t1: float, span: float = 1.0) -> float:
        """The busiest ``span`` seconds between t0 and t1, in % of one core."""
        s = [x for x in self.cpu_samples if t0 <= x[0] <= t1]
        best, j = 0.0, 0
        for i in range(len(s)):
            while s[i][0] - s[j][0] > span:
                j += 1
            if s[i][0] - s[j][0] >= span * 0.8:
                best = max(best, (s[i][1] - s[j][1]) / (s[i][0] - s[j][0]))
        return 100 * best

    def vm_hwm_mb(self) -> float | None:
        """The server's peak resident set over its whole life (setup included)."""
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else None

    def stop(self) -> None:
        self._stop.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every core, every process)."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def wait_quiet(limit_s: float, quiet_pct: float) -> float:
    """Wait (up to ``limit_s``) for a second in which the machine is nearly idle.

    The machine is shared: anything else running (tests, another benchmark)
    takes CPU from the server and the clients and spoils the figures. Returns
    the last second's busy CPU, in % of one core.
    """
    start = time.monotonic()
    said = 0.0
    while True:
        b0, t0 = machine_busy(), time.monotonic()
        time.sleep(1.0)
        busy = 100 * (machine_busy() - b0) / (time.monotonic() - t0)
        waited = time.monotonic() - start
        if busy <= quiet_pct or waited >= limit_s:
            if waited > 2:
                print(f"   (waited {waited:.0f} s for a quiet machine; now {busy:.0f}% busy)")
            return busy
        if waited - said >= 30 or not said:
            said = waited or 0.001
            print(f"   (machine {busy:.0f}% of a core busy before the run: waiting)", flush=True)


def server_env(items: Sequence[str]) -> dict[str, str]:
    """``--server-env KEY=VALUE`` options as a mapping."""
    return dict(item.partition("=")[::2] for item in items)
