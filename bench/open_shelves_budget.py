"""Train the default recipe for given numbers of epochs on the whole open-shelves sample; check each model.

Needs ``v0001`` to hold the whole sample (100 / 34 / 15; ``bookcounter demo`` imports only 40
train photos): ``bookcounter dataset import-coco train.json val.json test.json --images DIR``
into a fresh ``BOOKCOUNTER_STATE_DIR``. Each run is sized in work (``--epochs``), so the same
command gives the same model on a busy or a quiet machine, only slower. The recipe is the
trainer's default (``default_train_config``) plus ``--set`` overrides; the counting operating
point is chosen on val; nothing is registered. Then ``bench/accuracy_check.py`` scores each model
(val and test by density, strips and sparse scenes) and checks it against the recorded limits.

    .venv/bin/python -m bench.open_shelves_budget --epochs 10 30
    .venv/bin/python -m bench.open_shelves_budget --epochs 30 --seeds 0 1 2 --set model.image_size=640
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

from bookcounter.dataset_store import DatasetStore
from bookcounter.settings import get_settings
from trainer.config import parse_overrides
from trainer.train import default_train_config, train_and_save


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--epochs", nargs="+", type=int, default=[30], help="epochs per training run (default 30, the CPU recipe)"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed and epoch count")
    p.add_argument("--dataset", default="v0001")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="training settings, e.g. model.image_size=640 lr=2e-3"
    )
    p.add_argument("--tag", default="", help="added to the run directory's name")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    store = DatasetStore.from_settings(get_settings())
    version = store.get(args.dataset)
    for epochs in args.epochs:
        for seed in args.seeds:
            cfg = default_train_config(
                version.name, "cpu", {**parse_overrides(args.set), "epochs": epochs, "seed": seed}
            )
            print(f"{epochs} epochs, seed {seed}: {json.dumps(cfg.to_dict())}", flush=True)
            run_dir = (
                get_settings().runs_dir
                / f"bench-{version.name}-{cfg.model.backbone}-{cfg.model.image_size}px-e{epochs}-s{seed}{args.tag}"
            )
            t0 = time.monotonic()
            out = train_and_save(cfg, store, run_dir, progress=False)
            print(f"trained in {(time.monotonic() - t0) / 60:.1f} min: {out}", flush=True)
            check = [
                sys.executable,
                str(Path(__file__).with_name("accuracy_check.py")),
                "--model",
                str(out),
                "--dataset",
                version.name,
                "--out",
                str(run_dir / "accuracy.json"),
            ]
            subprocess.run(check, check=False)


if __name__ == "__main__":
    main()
