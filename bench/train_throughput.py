"""Training and inference throughput (images/s) per backbone, norm and input size on this machine.

Uses a synthetic batch shaped like a shelf photo (40 tall thin books), so it needs no dataset.
Timings on a shared CPU are noisy: the median of several iterations is printed.

    .venv/bin/python -m bench.train_throughput --backbones mobilenet_v3_fpn resnet18_fpn --sizes 384 512 640
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from trainer.model import ModelConfig, build_model


def shelf_batch(size: int, n_images: int, books: int = 40) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = [], []
    for _ in range(n_images):
        masks = torch.zeros(books, size, size, dtype=torch.uint8)
        boxes = []
        for i in range(books):
            x = (i % 20) * size // 20
            y = (i // 20) * size // 2
            x1, y1 = x + size // 25, y + size // 2 - 10
            masks[i, y + 10 : y1, x:x1] = 1
            boxes.append([x, y + 10, x1, y1])
        images.append(torch.rand(3, size, size))
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.ones(books, dtype=torch.int64),
                "masks": masks,
            }
        )
    return images, targets


def measure(cfg: ModelConfig, batch: int, iters: int) -> tuple[float, float]:
    model = build_model(cfg)
    images, targets = shelf_batch(cfg.image_size, batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for _ in range(iters + 1):  # the first iteration warms up
        t = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    train_ips = batch / statistics.median(times[1:])
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(iters + 1):
            t = time.perf_counter()
            model(images[:1])
            times.append(time.perf_counter() - t)
    return train_ips, 1 / statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=["mobilenet_v3_fpn", "resnet18_fpn", "resnet50_fpn"])
    p.add_argument("--sizes", nargs="+", type=int, default=[384, 512, 640])
    p.add_argument("--norms", nargs="+", default=["bn"])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, width {args.width}, "
        f"median of {args.iters}"
    )
    print(f"{'backbone':18s} {'norm':4s} {'size':>4s} {'params':>7s} {'train img/s':>11s} {'infer img/s':>11s}")
    for backbone in args.backbones:
        for norm in args.norms:
            for size in args.sizes:
                cfg = ModelConfig(backbone=backbone, image_size=size, norm=norm, width=args.width)
                params = sum(p.numel() for p in build_model(cfg).parameters()) / 1e6
                train_ips, infer_ips = measure(cfg, args.batch, args.iters)
                print(
                    f"{backbone:18s} {norm:4s} {size:4d} {params:6.1f}M {train_ips:11.2f} {infer_ips:11.2f}", flush=True
                )


if __name__ == "__main__":
    main()
