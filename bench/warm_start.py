"""Warm start vs cold start on the same new dataset version (count MAE and mask AP50 on val and test).

The champion to warm from is ``--champion DIR`` (a model trained on a subset), or a ``v1``
trained cold on the first ``--v1-photos`` train photos of the sample (by file name) for
``--v1-minutes``, registered and made champion. The **new version** is then the whole sample
(100 train photos; the same val and test). On it, each ``--runs`` entry trains for its minutes:
``warm:M`` with ``init: champion`` (fine-tunes v1), ``cold:M`` with the pretrained default
(``init: imagenet``); ``warm:M:LR`` with learning rate LR. Fields ``key=value`` override any
other training setting, e.g. ``warm:600:epochs=1:warmup_iters=5`` trains one epoch with a
5-iteration warmup (600 minutes is only a cap, so neither the schedule nor the number of
iterations depends on the load; a warm run without minutes gets the 3-minute warm-start budget).
``--threads`` each (1); ``--parallel`` runs them at the same time (one process each, so they
share the load alike). The counting operating point is chosen on val, as always; test picks nothing.

    .venv/bin/python -m bench.warm_start --v1-minutes 5 --runs warm:3 warm:5 cold:10 --parallel
    .venv/bin/python -m bench.warm_start --champion DEMO_STATE/runs/v0001-.../model --parallel
    .venv/bin/python -m bench.warm_start --champion DIR --runs warm:600:epochs=1 warm:600:epochs=1:warmup_iters=5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path


def parse_run(spec: str) -> tuple[str, dict]:
    """``warm|cold[:MINUTES[:LR]][:key=value...]`` -> (kind, training overrides)."""
    kind, *fields = spec.split(":")
    overrides: dict = {}
    positional = [f for f in fields if "=" not in f]
    for key, value in (f.split("=", 1) for f in fields if "=" in f):
        overrides[key] = json.loads(value)
    for key, value in zip(("max_minutes", "lr"), positional):
        overrides[key] = float(value)
    return kind, overrides


def train_and_report(kind: str, overrides: dict, dataset: str, threads: int) -> dict:
    import torch

    from bookcounter.dataset_store import DatasetStore
    from bookcounter.settings import get_settings
    from trainer.evaluate import evaluate_model
    from trainer.train import default_train_config, train_and_save

    torch.set_num_threads(threads)
    store = DatasetStore.from_settings(get_settings())
    init = "champion" if kind == "warm" else "imagenet"
    cfg = default_train_config(dataset, "cpu", {"threads": threads, "init": init, **overrides})
    name = "-".join([kind, *(f"{k}{v}" for k, v in overrides.items())])
    load0 = os.getloadavg()[0]
    out = train_and_save(cfg, store, get_settings().runs_dir / f"{name}-{dataset}", progress=False, log=lambda _: None)
    meta = json.loads((out / "model.json").read_text())
    row = {
        "run": name,
        "lr": cfg.lr,
        "warmup_iters": cfg.warmup_iters,
        "init_loaded": meta["init_loaded"].get("init"),
        "iterations": len(meta["iter_losses"]),
        "first_loss": meta["iter_losses"][0],
        "load_start": round(load0, 1),
        "load_end": round(os.getloadavg()[0], 1),
    }
    for split in ("val", "test"):
        m = evaluate_model(out, store.get(dataset), split, progress=False)["metrics"]
        row[split] = {"count_mae": round(m["count_mae"], 2), "segm_AP50": round(m["segm_AP50"], 3)}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--v1-photos", type=int, default=40)
    p.add_argument("--v1-minutes", type=float, default=5.0)
    p.add_argument(
        "--champion", type=Path, help="a model directory trained on a subset to warm from, instead of training v1"
    )
    p.add_argument(
        "--runs",
        nargs="+",
        default=["warm:3", "warm:5", "cold:10"],
        help="warm:MINUTES or cold:MINUTES, with :LR to override the learning rate (e.g. warm:3:3e-4), "
        "and :key=value for any other setting",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    p.add_argument("--parallel", action="store_true", help="train the runs at the same time, one process each")
    p.add_argument("--state-dir", type=Path, default=None, help="default: a new temp dir")
    args = p.parse_args()
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="bookcounter-warm-start-"))
    state.mkdir(parents=True, exist_ok=True)
    os.environ["BOOKCOUNTER_STATE_DIR"] = str(state)

    from annotator.coco_import import read_coco
    from bookcounter.dataset_store import DatasetStore
    from bookcounter.settings import get_settings
    from trainer import registry

    sample = get_settings().sample_dir
    store = DatasetStore.from_settings(get_settings())
    train = sorted(read_coco(sample / "train.json", sample)[0], key=lambda i: i.file_name)
    held_out = read_coco(sample / "val.json", sample)[0] + read_coco(sample / "test.json", sample)[0]
    source = {"name": "open-shelves", "licence": "CC BY 4.0"}
    if registry.champion() is None and args.champion:
        info = registry.register(args.champion)
        registry.set_champion(info.version)
        meta = json.loads((args.champion / "model.json").read_text())
        print(
            f"champion: {args.champion} "
            f"({meta['train'].get('max_minutes')} min, {len(meta['iter_losses'])} iterations)",
            flush=True,
        )
    if registry.champion() is None:
        v1 = store.commit(train[: args.v1_photos] + held_out, source=source).version
        print(f"v1: {v1.name} ({args.v1_photos} train photos), cold, {args.v1_minutes:g} min", flush=True)
        row = train_and_report("cold", {"max_minutes": args.v1_minutes}, v1.name, args.threads)
        print(json.dumps(row), flush=True)
        info = registry.register(get_settings().runs_dir / f"{row['run']}-{v1.name}" / "model")
        registry.set_champion(info.version)
    new = store.commit(train + held_out, source=source).version
    print(
        f"new version {new.name}: {len(new.coco('train')['images'])} train photos; "
        f"champion v{registry.champion().version}",
        flush=True,
    )
    runs = [(*parse_run(r), new.name, args.threads) for r in args.runs]
    t0 = time.monotonic()
    if args.parallel:
        with multiprocessing.get_context("spawn").Pool(len(runs)) as pool:
            rows = pool.starmap(train_and_report, runs)
    else:
        rows = [train_and_report(*r) for r in runs]
    for row in rows:
        print(json.dumps(row))
    print(f"{(time.monotonic() - t0) / 60:.1f} min; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
