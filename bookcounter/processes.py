"""Background servers that bookcounter starts (Label Studio, the ML backend, the UIs).

Each one gets a pid file and a log under ``settings.run_dir``; ``stop`` ends only the process
group it started, and waits until none of it is left. Starting waits until a health URL
answers, and fails with a one-line error naming the log if the process dies or stays silent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bookcounter.errors import UserError


@dataclass(frozen=True)
class Server:
    name: str  # e.g. "label-studio"; names the pid file and the log
    run_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid if our process is alive, else None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        if not is_alive(pid):
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def started_at(self) -> float | None:
        """When our live process was started (the pid file is written as it starts), else None."""
        if self.pid() is None:
            return None
        try:
            return self.pid_file.stat().st_mtime
        except OSError:
            return None

    def start(
        self,
        cmd: Sequence[str],
        health_url: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
        cwd: Path | None = None,
    ) -> bool:
        """Start ``cmd`` unless running; wait for ``health_url`` to answer 2xx. True if started now."""
        if self.pid() is not None:
            wait_healthy(health_url, timeout, self)
            return False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                list(cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        try:
            wait_healthy(health_url, timeout, self, proc)
        except UserError:
            self.stop()
            raise
        return True

    def stop(self, timeout: float = 20) -> bool:
        """Stop the process group we started, every process of it; True if something was running."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and (is_alive(pid) or group_alive(pid)):
                time.sleep(0.2)
            if group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.pid_file.unlink(missing_ok=True)
        return True


def wait_healthy(url: str, timeout: float, server: Server, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise UserError(f"{server.name} exited with code {proc.returncode}; see {server.log_file}")
        if answers(url, timeout=3):
            return
        time.sleep(0.5)
    raise UserError(f"{server.name} did not answer on {url} within {timeout:.0f} s; see {server.log_file}")


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers a GET with a 2xx status."""
    try:
        return httpx.get(url, timeout=timeout).is_success
    except httpx.HTTPError:
        return False


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` (a server's workers included) still has a process."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a finished child of ours, a zombie until reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # not our child: kill(0) said it exists
        return True
