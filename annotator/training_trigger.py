"""Start the collect -> retrain -> promote loop from the ML backend and return at once.

:func:`start_loop` is the one place that launches the loop: the Prefect ``loop`` flow
(``bookcounter flows run loop``) in a detached process whose flow run is named after the run
id, so ops find it in the Prefect UI. Each run leaves, under ``settings.run_dir / "training"``:

- ``<run_id>.json``: pid, command, reason, start time;
- ``<run_id>.log``: the flow's output;
- ``<run_id>.rc``: the exit status, written when the run ends.

At most one run at a time: while one is alive, :func:`start_loop` returns its id instead of
starting another. :class:`AnnotationCounter` counts new annotations (Label Studio webhook
events) so the backend can start the loop every ``settings.retrain_every_n_annotations``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bookcounter.locks import file_lock
from bookcounter.processes import is_alive
from bookcounter.settings import Settings

LOOP_COMMAND: tuple[str, ...] = ("flows", "run", "loop")  # bookcounter arguments that run the loop


@dataclass
class LoopRun:
    run_id: str
    started: bool  # False: a run was already in progress and this is its id
    command: str
    log_file: Path


def runs_dir(settings: Settings) -> Path:
    return settings.run_dir / "training"


def start_loop(settings: Settings, reason: str) -> LoopRun:
    """Launch the loop detached (unless one is running) and return its run id at once."""
    d = runs_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    with file_lock(d / "launch.lock"):
        running = current_run(settings)
        if running is not None:
            meta = json.loads((d / f"{running}.json").read_text())
            return LoopRun(running, False, meta["command"], d / f"{running}.log")
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        exe = Path(sys.executable).with_name("bookcounter")
        chain = shlex.join([str(exe), *LOOP_COMMAND, "--run-name", f"loop-{run_id}"])
        rc_file = d / f"{run_id}.rc"
        script = f"( {chain} ); echo $? > {shlex.quote(str(rc_file))}"
        log_file = d / f"{run_id}.log"
        with open(log_file, "ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} run {run_id} ({reason}): {chain}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                ["bash", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ.copy(),
                start_new_session=True,  # survives the backend; never its child's signals
            )
        meta = {"run_id": run_id, "pid": proc.pid, "command": chain, "reason": reason, "started_at": time.time()}
        (d / f"{run_id}.json").write_text(json.dumps(meta))
        return LoopRun(run_id, True, chain, log_file)


def run_status(settings: Settings, run_id: str) -> str:
    """``started`` while the run is alive, ``finished``/``failed`` after, ``unknown`` if no such run."""
    d = runs_dir(settings)
    if not run_id.replace("-", "").isalnum() or not (d / f"{run_id}.json").is_file():
        return "unknown"
    rc = d / f"{run_id}.rc"
    if rc.is_file():
        return "finished" if rc.read_text().strip() == "0" else "failed"
    pid = json.loads((d / f"{run_id}.json").read_text())["pid"]
    return "started" if is_alive(pid) else "failed"


def current_run(settings: Settings) -> str | None:
    """The id of the run still in progress, if any."""
    for meta_file in sorted(runs_dir(settings).glob("*.json"), reverse=True):
        run_id = meta_file.stem
        if run_status(settings, run_id) == "started":
            return run_id
    return None


class AnnotationCounter:
    """New annotations since the last loop start, kept in a file (survives backend restarts)."""

    def __init__(self, settings: Settings):
        self.path = settings.run_dir / "ml-backend-new-annotations.json"

    def add(self, n: int, every: int) -> bool:
        """Count ``n`` new annotations; True (and reset) when ``every`` > 0 is reached."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_suffix(".lock")):
            count = self.count() + n
            due = every > 0 and count >= every
            self.path.write_text(json.dumps({"count": 0 if due else count}))
        return due

    def count(self) -> int:
        try:
            return int(json.loads(self.path.read_text())["count"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0
