"""Where one training iteration of the default recipe spends its time, and its images/s.

Trains the default recipe (``default_train_config``, pretrained init) on the train split of a
dataset version for ``--iters`` iterations after ``--skip`` warm-up ones, and splits each
iteration into: data (loading, augmentation, resize), transform, backbone + FPN, RPN, box head,
mask head, backward and optimizer step (wall time, CPU threads synchronous). Options take the
candidate speed-ups one at a time, so a run per option compares them on the same photos.

    .venv/bin/python -m bench.train_profile --dataset v0001 --iters 30 --threads 2
    .venv/bin/python -m bench.train_profile --dataset v0001 --iters 30 --threads 2 --workers 1
    .venv/bin/python -m bench.train_profile --dataset v0001 --iters 30 --threads 2 --set model.rois_per_img=64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from bookcounter.dataset_store import DatasetStore
from bookcounter.settings import get_settings
from trainer.config import parse_overrides
from trainer.data import BookDataset, collate
from trainer.model import build_model, freeze_stages, load_init
from trainer.train import default_train_config

PARTS = {
    "transform": "transform",
    "backbone+FPN": "backbone",
    "RPN": "rpn",
    "box head": ("roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor"),
    "mask head": ("roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor"),
}


def time_modules(model: torch.nn.Module, sink: dict[str, float]) -> None:
    """Forward hooks that add each part's forward wall time to ``sink``."""
    modules = dict(model.named_modules())
    for part, names in PARTS.items():
        for name in (names,) if isinstance(names, str) else names:
            started: list[float] = []
            modules[name].register_forward_pre_hook(lambda *_, s=started: s.append(time.perf_counter()))
            modules[name].register_forward_hook(
                lambda *_, s=started, p=part: sink.__setitem__(p, sink.get(p, 0.0) + time.perf_counter() - s.pop())
            )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="latest")
    p.add_argument("--iters", type=int, default=30, help="measured iterations (default 30)")
    p.add_argument("--skip", type=int, default=3, help="warm-up iterations not measured (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (default 0: in the training process)"
    )
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for the model")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="training settings, e.g. model.rois_per_img=64"
    )
    p.add_argument("--out", type=Path, help="append the result as one JSON line to this file")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    store = DatasetStore.from_settings(get_settings())
    version = store.get(args.dataset)
    cfg = default_train_config(version.name, "cpu", parse_overrides(args.set))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    load_init(model, cfg.model, cfg.init, Path(torch.hub.get_dir()))
    freeze_stages(model, cfg.frozen_stages)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr * 0.1, weight_decay=cfg.weight_decay)
    dataset = BookDataset(version, "train", cfg.model, train=True, seed=0, view_p=cfg.view_p, sparse_p=cfg.sparse_p)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=args.workers > 0,
    )
    forward: dict[str, float] = {}
    time_modules(model, forward)
    rows: list[dict[str, float]] = []
    batches = iter(loader)
    model.train()
    for it in range(args.skip + args.iters):
        if it == args.skip:
            cpu0 = time.process_time()
        t0 = time.perf_counter()
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, targets = next(batches)
        t1 = time.perf_counter()
        forward.clear()
        losses = model(list(images), [dict(t) for t in targets])
        loss = sum(losses.values())
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        t4 = time.perf_counter()
        if it >= args.skip:
            rows.append(
                {
                    "data": t1 - t0,
                    **forward,
                    "forward other": (t2 - t1) - sum(forward.values()),
                    "backward": t3 - t2,
                    "optimizer": t4 - t3,
                    "total": t4 - t0,
                }
            )
    cpu_per_image = (time.process_time() - cpu0) / (cfg.batch_size * len(rows))
    parts = defaultdict(list)
    for r in rows:
        for k, v in r.items():
            parts[k].append(v)
    total = sum(parts["total"])
    ips = cfg.batch_size * len(rows) / total
    print(
        f"{version.name}, batch {cfg.batch_size}, {args.threads} thread(s), workers {args.workers}, "
        f"channels_last {args.channels_last}, overrides {args.set or '-'}"
    )
    print(f"{'part':>14} {'ms/iter (mean)':>15} {'share':>6}")
    for k, v in parts.items():
        if k != "total":
            print(f"{k:>14} {1000 * statistics.mean(v):>15.0f} {sum(v) / total:>6.1%}")
    print(
        f"{'total':>14} {1000 * total / len(rows):>15.0f}\ntrain images/s: {ips:.2f}; CPU seconds per image "
        f"(all threads; less sensitive to other load): {cpu_per_image:.2f}; load average {os.getloadavg()[0]:.1f}"
    )
    if args.out:
        with args.out.open("a") as f:
            f.write(
                json.dumps(
                    {
                        "args": vars(args) | {"out": str(args.out)},
                        "images_per_s": ips,
                        "cpu_s_per_image": cpu_per_image,
                        "ms_per_iter": {k: 1000 * statistics.mean(v) for k, v in parts.items()},
                        "load_avg_1m": os.getloadavg()[0],
                    }
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
