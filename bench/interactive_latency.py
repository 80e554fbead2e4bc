"""Latency of interactive SAM clicks, driven over HTTP against the real ML backend.

Starts, in a temp state dir (nothing under ./var is touched), a Label Studio server and the
ML backend (``bookcounter ml-backend`` process manager) with ``vit_t`` random-init weights,
uploads sample photos as tasks, then posts Label Studio-shaped ``/predict`` requests straight
to the backend and prints p50/p95 of

- the first click on a new photo: fetch from Label Studio, decode, image encoder, decoder;
- later clicks on a photo whose embedding is cached: prompt encoder + mask decoder + RLE.

Later clicks mix one positive point, positive + negative points, a box, and a box with a point.
One warm-up photo (first forward passes) is left out of the numbers. Targets: cached p50 <= 50
ms, p95 <= 120 ms with the whole stack running; first click <= 1.0 s.

``--with-stack`` also starts the counting server and the Prefect and MLflow UIs (how annotators
run it: ``bookcounter demo`` leaves them all up) and stops them at the end. The load average
and the state of every service are printed with the numbers. ``--prompt-runtime torch``
measures the PyTorch prompt path instead of ONNX Runtime.

``--champion MODEL_DIR``: no SAM; the model directory is registered as the champion in the temp
state and answers clicks (points only): the first click on a photo runs it on the whole photo,
later clicks reuse its detections (a click on a detection) or run its mask head on a book-sized
box (a click off every detection; told apart by the answer's score, 0 there).

    .venv/bin/python -m bench.interactive_latency --photos 6 --clicks 20
    .venv/bin/python -m bench.interactive_latency --photos 6 --clicks 20 --with-stack
    .venv/bin/python -m bench.interactive_latency --photos 6 --clicks 20 --with-stack --prompt-runtime torch
    .venv/bin/python -m bench.interactive_latency --photos 6 --clicks 20 \
        --champion MODEL_DIR
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bookcounter.images import sha256_bytes
from bookcounter.settings import REPO_ROOT, Settings, get_settings
from bookcounter.testing import free_port


def keypoint(x: float, y: float, positive: bool = True) -> dict:
    return {
        "type": "keypointlabels",
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": ["book"]},
    }


def box(x: float, y: float, w: float, h: float) -> dict:
    return {
        "type": "rectanglelabels",
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["book"]},
    }


def random_prompt(rng: random.Random) -> list[dict]:
    x, y = rng.uniform(10, 90), rng.uniform(10, 90)
    kind = rng.randrange(4)
    if kind == 0:
        return [keypoint(x, y)]
    if kind == 1:
        return [keypoint(x, y), keypoint(min(x + 5, 99), y, positive=False), keypoint(x, min(y + 4, 99))]
    if kind == 2:
        return [box(x - 5, y - 15, 10, 30)]
    return [box(x - 5, y - 15, 10, 30), keypoint(x, y)]


def random_click(rng: random.Random) -> list[dict]:
    x, y = rng.uniform(5, 95), rng.uniform(5, 95)
    if rng.randrange(2):
        return [keypoint(x, y)]
    return [keypoint(x, y), keypoint(min(x + 3, 99), min(y + 20, 99), positive=False)]


def click(http: httpx.Client, task: dict, regions: list[dict]) -> tuple[float, dict]:
    body = {"tasks": [task], "project": "1.0", "label_config": "", "params": {"context": {"result": regions}}}
    t0 = time.perf_counter()
    r = http.post("/predict", json=body)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    return dt, r.json()["results"][0]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=6, help="photos measured (plus one warm-up)")
    ap.add_argument("--clicks", type=int, default=20, help="cached clicks per photo")
    ap.add_argument("--sample", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "open-shelves" / "test")
    ap.add_argument(
        "--with-stack",
        action="store_true",
        help="also run the counting server and the Prefect and MLflow UIs while measuring",
    )
    ap.add_argument(
        "--prompt-runtime", choices=("onnx", "torch"), default="onnx", help="SAM prompt path (default onnx)"
    )
    ap.add_argument(
        "--onnx-threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: the setting, 2)"
    )
    ap.add_argument("--champion", type=Path, default=None, help="model directory: no SAM, this champion answers clicks")
    args = ap.parse_args()
    if args.champion is not None and not (args.champion / "model.json").is_file():
        sys.exit(f"{args.champion}: not a model directory (no model.json)")

    photos = sorted(p for p in args.sample.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[
        : args.photos + 1
    ]
    if len(photos) < 2:
        sys.exit(f"need at least 2 photos in {args.sample}")
    state = Path(tempfile.mkdtemp(prefix="bookcounter-bench-"))
    os.environ.update(
        BOOKCOUNTER_STATE_DIR=str(state),
        BOOKCOUNTER_LS_PORT=str(free_port()),
        BOOKCOUNTER_ML_BACKEND_PORT=str(free_port()),
        BOOKCOUNTER_SAM_MODEL_TYPE="vit_t",
        BOOKCOUNTER_SAM_RANDOM_INIT="0" if args.champion else "1",
        BOOKCOUNTER_SAM_PROMPT_RUNTIME=args.prompt_runtime,
        BOOKCOUNTER_SERVE_PORT=str(free_port()),
        BOOKCOUNTER_PREFECT_PORT=str(free_port()),
        BOOKCOUNTER_MLFLOW_UI_PORT=str(free_port()),
    )
    if args.onnx_threads:
        os.environ["BOOKCOUNTER_SAM_ONNX_THREADS"] = str(args.onnx_threads)
    get_settings.cache_clear()
    settings = get_settings()
    if args.champion is not None:
        from trainer import registry

        registry.set_champion(registry.register(args.champion.resolve()).version)

    from annotator.labelstudio.project import create_task, ensure_project, upload_photo
    from annotator.labelstudio.server import start_server
    from flows.services import services, status_lines
    from serving.ml_backend.server import start_backend

    load_before = os.getloadavg()
    print(
        f"state in {state}; starting Label Studio and the ML backend"
        f"{', the counting server, the Prefect and MLflow UIs' if args.with_stack else ''} ...",
        flush=True,
    )
    start_server(settings)
    try:
        start_backend(settings)
        if args.with_stack:
            start_stack(settings)
        project = ensure_project(settings)
        tasks = []
        for p in photos:
            data = p.read_bytes()
            url = upload_photo(settings, project, data, p.name)
            sha = sha256_bytes(data)
            tid = create_task(settings, project, {"image": url, "sha256": sha, "file_name": p.name}, [])
            tasks.append({"id": tid, "data": {"image": url, "sha256": sha}})

        rng = random.Random(0)
        first, cached, off, failures = [], [], [], 0
        prompt = random_click if args.champion else random_prompt
        with httpx.Client(base_url=settings.ml_backend_url, timeout=120) as http:
            for i, task in enumerate(tasks):
                dt, res = click(http, task, [keypoint(50, 50)])
                if i:  # task 0 is the warm-up
                    first.append(dt)
                for _ in range(args.clicks if i else 3):
                    dt, res = click(http, task, prompt(rng))
                    failures += "error" in res and "no object" not in res["error"]
                    if i:
                        (off if args.champion and res.get("score") == 0.0 else cached).append(dt)
            health = http.get("/health").json()
        running = status_lines(settings)
        log = (settings.run_dir / "ml-backend.log").read_text(errors="replace")
    finally:
        for service in services(settings):  # only what this bench started: its own pid files
            service.process.stop()
        shutil.rmtree(state, ignore_errors=True)

    runtime = next(
        (line[line.index("SAM prompt path") :] for line in log.splitlines() if "SAM prompt path" in line),
        "PyTorch (--prompt-runtime torch)",
    )
    print(
        "\n".join(["services while measuring (this bench's own; other jobs on the machine are not listed):", *running])
    )
    print(
        f"CPU: {os.cpu_count()} cores, load average (1/5/15 min) before {fmt_load(load_before)}, "
        f"after {fmt_load(os.getloadavg())} (shared machine: other jobs slow this down)"
    )
    print(f"prompt path: {runtime}")
    if args.champion:
        print(
            f"champion {args.champion} (no SAM): photos {len(first)} (+1 warm-up), "
            f"clicks on a detection {len(cached)}, off every detection {len(off)}; "
            f"champion runs {health['detector_calls']} (expected {len(tasks)}), request errors {failures}"
        )
        print(f"first click on a new photo:   p50 {pct(first, 50):7.1f} ms   p95 {pct(first, 95):7.1f} ms")
        if cached:
            print(f"click on a detection:         p50 {pct(cached, 50):7.1f} ms   p95 {pct(cached, 95):7.1f} ms")
        if off:
            print(
                f"click off every detection:    p50 {pct(off, 50):7.1f} ms   p95 {pct(off, 95):7.1f} ms   "
                "(mask head on a box)"
            )
        return
    print(
        f"photos {len(first)} (+1 warm-up), cached clicks {len(cached)}, "
        f"encoder runs {health['encoder_calls']} (expected {len(tasks)}), request errors {failures}"
    )
    print(
        f"first click on a new photo: p50 {pct(first, 50):7.1f} ms   p95 {pct(first, 95):7.1f} ms   (target <= 1000 ms)"
    )
    print(
        f"click, embedding cached:    p50 {pct(cached, 50):7.1f} ms   p95 {pct(cached, 95):7.1f} ms   "
        "(targets p50 <= 50, p95 <= 120 ms)"
    )


def start_stack(settings: Settings) -> None:
    """The rest of the demo's services, with their own starters: counting server, Prefect and MLflow UIs."""
    from flows.prefect_server import configure_prefect
    from flows.prefect_server import start_ui as start_prefect_ui
    from serving.cli import start_in_background
    from trainer.registry import start_ui as start_mlflow_ui

    start_in_background(settings)
    configure_prefect(settings)
    start_prefect_ui(settings)
    start_mlflow_ui(settings)


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.1f}" for v in load)


if __name__ == "__main__":
    main()
