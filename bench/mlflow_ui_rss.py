"""What ``bookcounter ui mlflow`` costs: processes and total RSS of the MLflow UI's process tree.

Starts the UI the way bookcounter does (:func:`trainer.registry.start_ui`) on a throwaway
state dir and a free port, waits until it answers and ``--settle`` seconds more (the job
consumers start after the web workers), prints the processes by command and their summed
RSS, then stops it.

    .venv/bin/python -m bench.mlflow_ui_rss [--settle 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

from bookcounter.settings import Settings
from bookcounter.testing import free_port
from trainer.registry import start_ui, ui_server


def kind(p: psutil.Process) -> str:
    cmd = " ".join(p.cmdline())
    for needle, name in (
        ("huey", "huey job consumer"),
        ("resource_tracker", "multiprocessing tracker"),
        ("spawn_main", "uvicorn worker"),
        ("uvicorn", "uvicorn supervisor"),
        ("mlflow", "mlflow cli"),
    ):
        if needle in cmd:
            return name
    return p.name()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settle", type=float, default=20.0, help="seconds to wait after the UI answers")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(state_dir=Path(tmp) / "var", mlflow_ui_port=free_port())
        started = time.monotonic()
        url = start_ui(settings)
        print(f"answered after {time.monotonic() - started:.1f} s")
        page = httpx.get(f"{url}/", timeout=30)
        api = httpx.get(f"{url}/ajax-api/2.0/mlflow/registered-models/search", timeout=30)
        print(f"GET / -> {page.status_code}, registered-models/search -> {api.status_code}")
        time.sleep(args.settle)
        server = ui_server(settings)
        root = psutil.Process(server.pid())
        procs = [root, *root.children(recursive=True)]
        rss = {pr.pid: pr.memory_info().rss for pr in procs}
        kinds = Counter(kind(pr) for pr in procs)
        by_kind = Counter()
        for pr in procs:
            by_kind[kind(pr)] += rss[pr.pid]
        for k, n in kinds.most_common():
            print(f"{n:>3} x {k:<24} {by_kind[k] / 2**20:>7.0f} MiB")
        print(f"{len(procs):>3} processes in all        {sum(rss.values()) / 2**20:>7.0f} MiB RSS")
        server.stop()


if __name__ == "__main__":
    main()
