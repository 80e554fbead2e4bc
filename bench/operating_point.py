"""What choosing the NMS IoU with the threshold does to counting, on one trained model.

Runs the model once over val and test keeping the boxes before NMS, then chooses the operating
point on val twice: the threshold alone at NMS IoU 0.5 (torchvision's, what models used before)
and threshold plus NMS IoU (what training does now). Prints count MAE on val and test for both;
the model directory is not changed.

    .venv/bin/python bench/operating_point.py var/runs/RUN/model [--dataset v0001]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from annotator.cli import open_store
from trainer.model import DEFAULT_NMS_IOU
from trainer.evaluate import NMS_IOUS, candidates, choose_operating_point, count_mae_at, kept_scores
from trainer.predictor import Predictor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--dataset", default=None, help="default: the model's own dataset version")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    predictor = Predictor(args.model_dir, device="cpu")
    version = open_store().get(args.dataset or json.loads((args.model_dir / "model.json").read_text())["dataset_version"])
    gt = {split: version.coco(split) for split in ("val", "test")}
    cands = {split: candidates(predictor, version, split) for split in gt}
    for name, ious in ((f"threshold only, NMS IoU {DEFAULT_NMS_IOU}", (DEFAULT_NMS_IOU,)), ("threshold and NMS IoU", NMS_IOUS)):
        threshold, iou = choose_operating_point(gt["val"], cands["val"], ious)
        maes = [count_mae_at(gt[split], kept_scores(cands[split], iou), threshold) for split in gt]
        print(f"{name:28s}: threshold {threshold:.2f}, NMS IoU {iou:.1f}: count MAE val {maes[0]:.2f}, test {maes[1]:.2f}")


if __name__ == "__main__":
    main()
