"""Click latency with 1 and with several annotators at once, through Label Studio to the ML backend.

Starts, in a temp state dir (nothing under ./var is touched), a Label Studio server (SQLite, or
PostgreSQL with ``--database-url``) and the ML backend (its own process, ``vit_t`` with random
weights). Then, for each annotator count, uploads fresh synthetic shelf photos as tasks and lets
that many simulated annotators work at once (``tests/annotator_crowd.py``: per task a click, a
submitted annotation, a second click, a correction; every click is Label Studio's
``predict_interactive``, as the editor sends it). Prints p50/p95 of the first click on a photo
(the image encoder runs) and of the later click (embedding cached), and the errors met.

    .venv/bin/python bench/annotators_concurrent.py --tasks-per-annotator 4
    .venv/bin/python bench/annotators_concurrent.py --annotators 1 4 8 \\
        --database-url postgresql://bookcounter:pw@127.0.0.1:5432/ls_bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bookcounter.settings import Settings  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotators", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--tasks-per-annotator", type=int, default=4)
    ap.add_argument("--database-url", default=None, help="Label Studio on this (empty) PostgreSQL database")
    args = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="bookcounter-bench-crowd-"))
    os.environ.update(
        BOOKCOUNTER_STATE_DIR=str(state),
        BOOKCOUNTER_LS_PORT=str(free_port()),
        BOOKCOUNTER_ML_BACKEND_PORT=str(free_port()),
        BOOKCOUNTER_SAM_RANDOM_INIT="true",
        BOOKCOUNTER_RETRAIN_EVERY_N_ANNOTATIONS="0",
    )  # clicks only: no training trigger
    if args.database_url:
        os.environ["BOOKCOUNTER_LS_DATABASE_URL"] = args.database_url
    from annotator_crowd import add_shelf_tasks, annotate_concurrently, click_line

    from annotator.labelstudio.ml_backend_link import connect_ml_backend
    from annotator.labelstudio.project import ensure_project
    from annotator.labelstudio.server import start_server, stop_server
    from serving.ml_backend.backend import TITLE
    from serving.ml_backend.server import start_backend, stop_backend

    settings = Settings()
    try:
        start_server(settings, timeout=300)
        start_backend(settings)
        project = ensure_project(settings)
        backend_id = connect_ml_backend(settings, project, settings.ml_backend_url, TITLE)
        print(
            f"Label Studio on {'PostgreSQL' if args.database_url else 'SQLite'}; ML backend vit_t (random weights); "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        seed = 0
        for n in args.annotators:
            tasks = add_shelf_tasks(settings, project, n * args.tasks_per_annotator, seed=seed)
            seed += len(tasks)
            started = time.perf_counter()
            tally = annotate_concurrently(settings, backend_id, tasks, n)
            print(
                f"{n} annotator(s), {len(tasks)} tasks in {time.perf_counter() - started:.0f} s: {click_line(tally)}; "
                f"5xx {len(tally.server_errors)}, other errors {len(tally.other_errors)}, "
                f"clicks without a mask {tally.empty_clicks}"
            )
    finally:
        stop_backend(settings)
        stop_server(settings)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
