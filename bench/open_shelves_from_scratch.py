"""Train from scratch on the v0001 train split within CPU budgets; report test count MAE, mask AP, AP50.

Needs ``v0001`` to hold the whole sample (100 train photos; ``bookcounter demo`` imports only
40): ``bookcounter dataset import-coco train.json val.json test.json --images DIR`` into a fresh
``BOOKCOUNTER_STATE_DIR``. Each budget (minutes) is a wall-clock
``max_minutes``: the LR schedule (warmup + cosine) follows the elapsed share of it and training
stops when it is spent. The counting operating point (score threshold, NMS IoU) is chosen on
val; the numbers are on test.
Nothing is registered.

    .venv/bin/python bench/open_shelves_from_scratch.py --budgets 10 30 60
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

from annotator.cli import open_store
from bookcounter.settings import get_settings
from trainer.cli import CPU_DEFAULTS
from trainer.evaluate import evaluate_model
from trainer.model import ModelConfig
from trainer.train import TrainConfig, train_and_save


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", nargs="+", type=float, default=[10, 30, 60], help="CPU minutes per training run")
    p.add_argument("--dataset", default="v0001")
    p.add_argument("--backbone", default=CPU_DEFAULTS["backbone"])
    p.add_argument("--image-size", type=int, default=CPU_DEFAULTS["image_size"])
    p.add_argument("--norm", default=CPU_DEFAULTS["norm"])
    p.add_argument("--width", type=int, default=CPU_DEFAULTS["width"])
    p.add_argument("--lr", type=float, default=CPU_DEFAULTS["lr"])
    p.add_argument("--anchor-size", type=int, default=ModelConfig.anchor_size)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--warmup", type=int, default=TrainConfig.warmup_iters, help="warmup iterations")
    p.add_argument("--threads", type=int, default=0, help="0: every core")
    p.add_argument("--tag", default="", help="added to the run directory's name")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    s = get_settings()
    store = open_store()
    version = store.get(args.dataset)
    n_train = len(version.coco("train")["images"])
    model = ModelConfig(backbone=args.backbone, image_size=args.image_size, norm=args.norm, width=args.width, anchor_size=args.anchor_size)
    rows = []
    for budget in args.budgets:
        cfg = TrainConfig(dataset=version.name, model=model, lr=args.lr, batch_size=args.batch_size, warmup_iters=args.warmup, seed=args.seed, threads=args.threads, max_minutes=budget)
        cfg.epochs = 10_000  # the budget ends the run
        print(f"budget {budget:g} min on {n_train} train photos", flush=True)
        run_dir = s.runs_dir / f"bench-scratch-{version.name}-{model.backbone}-{model.image_size}px-{budget:g}min{args.tag}"
        t0 = time.monotonic()
        out = train_and_save(cfg, store, run_dir, progress=False)
        minutes = (time.monotonic() - t0) / 60
        m = evaluate_model(out, version, "test", out_dir=run_dir / "report", progress=False)["metrics"]
        row = {"budget_min": budget, "train_min": round(minutes, 1), "epochs": json.loads((out / "model.json").read_text())["epochs_done"], **m}
        rows.append(row)
        print(
            f"budget {budget:g} min (trained {minutes:.1f} min incl. val): test count MAE {m['count_mae']:.2f} "
            f"(median baseline {m['baseline_count_mae']:.2f}), mask AP {m['segm_AP']:.3f}, AP50 {m['segm_AP50']:.3f}, "
            f"box AP50 {m['bbox_AP50']:.3f}, threshold {m['threshold']:.2f}, NMS IoU {m['nms_iou']:.1f}",
            flush=True,
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
