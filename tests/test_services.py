"""``bookcounter start|status|stop``: every service in one list, and only ours stopped.

Two real services (the Prefect UI and the MLflow UI, the cheapest to start) are started the way
a person starts them (``bookcounter start``), and a server that bookcounter did not start listens on the ML backend's
port: ``status`` must tell them apart and ``stop`` must end ours, every process of them, and
leave the other alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bookcounter.processes import group_alive, is_alive
from bookcounter.settings import Settings, get_settings
from bookcounter.testing import free_port, wait_until_answers

pytestmark = pytest.mark.slow

NAMES = ["serving", "ml-backend", "labelstudio", "prefect-server", "mlflow-ui"]
COLUMNS = ("SERVICE", "NAME", "STATE", "PID", "UPTIME", "URL", "LOG")
# answers 200 to every GET: a server on the ML backend's port that bookcounter did not start
FOREIGN = """
import http.server, sys
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Ok).serve_forever()
"""


def bookcounter(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flows.main", *args]  # the ``bookcounter`` command
    done = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def status_table(out: str) -> dict[str, dict[str, str]]:
    """NAME -> {column: cell} of the service lines of ``bookcounter status``."""
    header, *lines = out.splitlines()
    starts = [header.index(c) for c in COLUMNS]
    table = {}
    for line in lines:
        if line.startswith("note: "):
            continue
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
        table[cells[1]] = dict(zip(COLUMNS, cells))
    return table


@pytest.fixture
def own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings of this test's own (state dir, every service on a free port), for it and its subprocesses."""
    monkeypatch.setenv("BOOKCOUNTER_STATE_DIR", str(tmp_path / "var"))
    for field in ("serve_port", "ml_backend_port", "ls_port", "prefect_port", "mlflow_ui_port"):
        monkeypatch.setenv(f"BOOKCOUNTER_{field.upper()}", str(free_port()))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_status_lists_every_service_and_stop_ends_only_ours(own_settings: Settings) -> None:
    from flows.prefect_server import prefect_ui_server, ui_url
    from trainer.registry import ui_server

    settings = own_settings
    foreign = subprocess.Popen([sys.executable, "-c", FOREIGN, str(settings.ml_backend_port)])
    ours = {"prefect-server": prefect_ui_server(settings), "mlflow-ui": ui_server(settings)}
    try:
        out = bookcounter("start", "prefect-server", "mlflow-ui").stdout
        assert out.splitlines() == [
            f"MLflow UI (mlflow-ui): started at {settings.mlflow_ui_url}",
            f"Prefect UI (prefect-server): started at {ui_url(settings)}",
        ]
        wait_until_answers(f"{settings.ml_backend_url}/health", 60, foreign)
        pids = {name: server.pid() for name, server in ours.items()}
        assert all(pids.values()), pids
        # the MLflow UI is one web worker, no job consumers (MLflow's defaults: 15 processes, 2.6 GB)
        mlflow_ui = psutil.Process(pids["mlflow-ui"])
        tree = [mlflow_ui, *mlflow_ui.children(recursive=True)]
        assert len(tree) <= 2 and not any("huey" in " ".join(p.cmdline()) for p in tree), [p.cmdline() for p in tree]

        out = bookcounter("status").stdout
        table = status_table(out)
        assert list(table) == NAMES
        for name, url in (("prefect-server", ui_url(settings)), ("mlflow-ui", settings.mlflow_ui_url)):
            row = table[name]
            assert (row["STATE"], row["PID"], row["URL"]) == ("up", str(pids[name]), url)
            assert row["LOG"] == str(settings.run_dir / f"{name}.log") and Path(row["LOG"]).is_file()
            assert re.fullmatch(r"\d+s|\d+m\d\ds", row["UPTIME"]), row
        for name in ("serving", "ml-backend", "labelstudio"):
            assert (table[name]["STATE"], table[name]["PID"], table[name]["UPTIME"]) == ("down", "-", "-")
        assert f"note: ml-backend: {settings.ml_backend_url} answers, but not a process bookcounter started" in out

        out = bookcounter("stop").stdout
        assert f"Prefect UI (prefect-server): stopped (pid {pids['prefect-server']})" in out
        assert f"MLflow UI (mlflow-ui): stopped (pid {pids['mlflow-ui']})" in out
        assert "Label Studio (labelstudio): not running" in out and "ML backend (ml-backend): not running" in out
        for pid in pids.values():  # the servers and every process they started
            assert not is_alive(pid) and not group_alive(pid)
        assert foreign.poll() is None, "stop ended a server bookcounter did not start"
        after = status_table(bookcounter("status").stdout)
        assert {name: row["STATE"] for name, row in after.items()} == dict.fromkeys(NAMES, "down")
    finally:
        for server in ours.values():
            server.stop()
        foreign.terminate()
        foreign.wait(timeout=30)
