"""Warm start vs cold start on the same new dataset version (count MAE and mask AP50 on val and test).

The champion to warm from is ``--champion DIR`` (a model trained on a subset), or a ``v1`` trained
cold on the first ``--v1-photos`` train photos of the sample (by file name) for ``--v1-epochs``,
registered and made champion. The **new version** is then the whole sample (100 train photos; the
same val and test). On it, each ``--runs`` entry trains: ``warm`` fine-tunes the champion with the
trainer's warm-start settings (``trainer.train.WARM_START``), ``cold`` starts from the pretrained
default; ``:key=value`` fields set anything else (the one syntax of ``trainer.config.parse_overrides``),
e.g. ``warm:epochs=6:lr=1e-4``. Runs are sized in epochs, so results do not depend on the load.
``--threads`` each (1); ``--parallel`` runs them at the same time. ``--seeds`` repeats each run. The
counting operating point is chosen on val, as always; test picks nothing.

    .venv/bin/python -m bench.warm_start --v1-epochs 20 --runs warm:epochs=6 cold:epochs=30 --seeds 0 1 2 --parallel
    .venv/bin/python -m bench.warm_start --champion MODEL_DIR --runs warm:epochs=3 warm:epochs=3:warmup_iters=50
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

from trainer.config import parse_overrides


def parse_run(spec: str) -> tuple[str, dict]:
    """``warm|cold[:key=value...]`` -> (kind, training overrides)."""
    kind, *fields = spec.split(":")
    if kind not in ("warm", "cold"):
        raise SystemExit(f"run {spec!r}: begin with warm or cold")
    return kind, parse_overrides(fields)


def train_and_report(kind: str, overrides: dict, dataset: str, threads: int) -> dict:
    import torch

    from bookcounter.dataset_store import DatasetStore
    from bookcounter.settings import get_settings
    from trainer import registry
    from trainer.evaluate import evaluate_model
    from trainer.train import WARM_START, default_train_config, train_and_save

    torch.set_num_threads(threads)
    store = DatasetStore.from_settings(get_settings())
    if kind == "warm":  # the champion's weights as a file: a fine-tune whatever the retrain policy would choose
        overrides = {
            **WARM_START,
            "init": str(registry.model_dir(registry.champion().version) / "model.pt"),
            **overrides,
        }
    cfg = default_train_config(dataset, "cpu", {"threads": threads, **overrides})
    name = "-".join([kind, *(f"{k}{v}" for k, v in overrides.items() if k != "init")])
    load0 = os.getloadavg()[0]
    out = train_and_save(cfg, store, get_settings().runs_dir / f"{name}-{dataset}", progress=False, log=lambda _: None)
    meta = json.loads((out / "model.json").read_text())
    row = {
        "run": name,
        "seed": cfg.seed,
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
    p.add_argument("--v1-epochs", type=int, default=20)
    p.add_argument(
        "--champion", type=Path, help="a model directory trained on a subset to warm from, instead of training v1"
    )
    p.add_argument(
        "--runs",
        nargs="+",
        default=["warm:epochs=6", "cold"],
        help="warm or cold, with :key=value for any training setting (e.g. warm:epochs=6:lr=1e-4)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run of each per seed")
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
            f"champion: {args.champion} ({meta['epochs_done']} epochs, {len(meta['iter_losses'])} iterations)",
            flush=True,
        )
    if registry.champion() is None:
        v1 = store.commit(train[: args.v1_photos] + held_out, source=source).version
        print(f"v1: {v1.name} ({args.v1_photos} train photos), cold, {args.v1_epochs} epochs", flush=True)
        row = train_and_report("cold", {"epochs": args.v1_epochs}, v1.name, args.threads)
        print(json.dumps(row), flush=True)
        info = registry.register(get_settings().runs_dir / f"{row['run']}-{v1.name}" / "model")
        registry.set_champion(info.version)
    new = store.commit(train + held_out, source=source).version
    print(
        f"new version {new.name}: {len(new.coco('train')['images'])} train photos; champion "
        f"v{registry.champion().version}",
        flush=True,
    )
    runs = [
        (kind, {**over, "seed": seed}, new.name, args.threads)
        for kind, over in map(parse_run, args.runs)
        for seed in args.seeds
    ]
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
