"""Train from scratch on the v0001 train split within CPU budgets; report test count MAE, mask AP, AP50.

Needs the sample imported (``bookcounter demo``). For each budget (minutes) the number of
epochs is set from a short timing probe so the LR schedule (warmup + cosine) ends near the
budget, and ``max_minutes`` stops training at the end of the epoch that crosses it. The
counting threshold is chosen on val; the numbers are on test. Nothing is registered.

    .venv/bin/python bench/open_shelves_from_scratch.py --budgets 10 30 60
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings

import torch

from annotator.cli import open_store
from bookcounter.settings import get_settings
from trainer.cli import CPU_DEFAULTS
from trainer.data import BookDataset, collate
from trainer.evaluate import evaluate_model
from trainer.model import ModelConfig, build_model
from trainer.train import TrainConfig, cpu_threads, train_and_save


def seconds_per_iteration(cfg: TrainConfig, probe_iters: int = 3) -> float:
    """Median time of a few training iterations on real photos (after one warm-up)."""
    torch.set_num_threads(cfg.threads or cpu_threads())
    version = open_store().get(cfg.dataset)
    data = BookDataset(version, "train", cfg.model.image_size, train=True)
    model = build_model(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    times = []
    for i in range(probe_iters + 1):
        images, targets = collate([data[(2 * i + k) % len(data)] for k in range(cfg.batch_size)])
        t = time.perf_counter()
        loss = sum(model(list(images), list(targets)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", nargs="+", type=float, default=[10, 30, 60], help="CPU minutes per training run")
    p.add_argument("--dataset", default="v0001")
    p.add_argument("--backbone", default=CPU_DEFAULTS["backbone"])
    p.add_argument("--image-size", type=int, default=CPU_DEFAULTS["image_size"])
    p.add_argument("--norm", default=CPU_DEFAULTS["norm"])
    p.add_argument("--width", type=int, default=CPU_DEFAULTS["width"])
    p.add_argument("--lr", type=float, default=CPU_DEFAULTS["lr"])
    p.add_argument("--threads", type=int, default=0, help="0: auto (idle cores)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    s = get_settings()
    store = open_store()
    version = store.get(args.dataset)
    n_train = len(version.coco("train")["images"])
    model = ModelConfig(backbone=args.backbone, image_size=args.image_size, norm=args.norm, width=args.width)
    rows = []
    for budget in args.budgets:
        cfg = TrainConfig(dataset=version.name, model=model, lr=args.lr, seed=args.seed, threads=args.threads, max_minutes=budget)
        spi = seconds_per_iteration(cfg)
        iters_per_epoch = math.ceil(n_train / cfg.batch_size)
        cfg.epochs = max(1, int(budget * 60 / (spi * iters_per_epoch)))
        print(f"budget {budget:g} min: {spi:.2f} s/iteration -> {cfg.epochs} epochs of {iters_per_epoch} iterations", flush=True)
        run_dir = s.runs_dir / f"bench-scratch-{version.name}-{model.backbone}-{model.image_size}px-{budget:g}min"
        t0 = time.monotonic()
        out = train_and_save(cfg, store, run_dir, progress=False)
        minutes = (time.monotonic() - t0) / 60
        m = evaluate_model(out, version, "test", out_dir=run_dir / "report", progress=False)["metrics"]
        row = {"budget_min": budget, "train_min": round(minutes, 1), "epochs": json.loads((out / "model.json").read_text())["epochs_done"], **m}
        rows.append(row)
        print(
            f"budget {budget:g} min (trained {minutes:.1f} min incl. val): test count MAE {m['count_mae']:.2f} "
            f"(median baseline {m['baseline_count_mae']:.2f}), mask AP {m['segm_AP']:.3f}, AP50 {m['segm_AP50']:.3f}, "
            f"box AP50 {m['bbox_AP50']:.3f}, threshold {m['threshold']:.2f}",
            flush=True,
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
