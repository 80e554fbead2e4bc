"""How well the RPN's anchors fit the books: the share of books whose best anchor has IoU >= 0.7
(the RPN's positive threshold) and >= 0.5, for the model's anchors and for torchvision's usual ones.

Uses the real anchor generator of a built model on the train split of a dataset version.

    .venv/bin/python -m bench.anchor_coverage --dataset v0001
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from torchvision.ops import box_iou

from bookcounter.dataset_store import DatasetStore
from bookcounter.settings import get_settings
from trainer.model import ModelConfig, anchors_for


def coverage(config: ModelConfig, boxes_per_photo: list[torch.Tensor]) -> dict[str, float]:
    anchors = anchors_for(config)
    best = torch.cat([box_iou(b, anchors).max(1).values for b in boxes_per_photo if len(b)])
    return {
        "iou>=0.7": (best >= 0.7).float().mean().item(),
        "iou>=0.5": (best >= 0.5).float().mean().item(),
        "median": best.median().item(),
        "anchors": len(anchors),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="v0001")
    p.add_argument("--image-size", type=int, default=ModelConfig.image_size)
    args = p.parse_args()
    coco = DatasetStore.from_settings(get_settings()).get(args.dataset).coco("train")
    sizes = {im["id"]: max(im["width"], im["height"]) for im in coco["images"]}
    per_photo: dict[int, list[list[float]]] = {i: [] for i in sizes}
    for a in coco["annotations"]:
        x, y, w, h = (v * args.image_size / sizes[a["image_id"]] for v in a["bbox"])
        per_photo[a["image_id"]].append([x, y, x + w, y + h])
    boxes = [torch.tensor(b).reshape(-1, 4) for b in per_photo.values()]
    ours = ModelConfig(image_size=args.image_size)
    # torchvision's usual aspect ratios (0.5..2) with our sizes
    usual = replace(ours, aspect_ratios=(0.5, 1.0, 2.0))
    print(f"{len(torch.cat(boxes))} books in {len(boxes)} photos at {args.image_size} px")
    for name, cfg in (("ours", ours), ("ratios 0.5-2, same sizes", usual)):
        c = coverage(cfg, boxes)
        print(
            f"{name:28s} best anchor IoU >= 0.7: {c['iou>=0.7']:.0%}  >= 0.5: {c['iou>=0.5']:.0%}  "
            f"median {c['median']:.2f}  ({c['anchors']} anchors)"
        )


if __name__ == "__main__":
    main()
