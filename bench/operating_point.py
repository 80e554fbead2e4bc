"""What the counting operating point is chosen on, and with which NMS IoUs, on one trained model.

Runs the model once over val, test and sparse scenes made from val (boxes before NMS), then
chooses the operating point four ways: on val alone or on val plus one sparse scene per val
photo (what training does), each with the NMS IoU fixed at 0.5 or searched in 0.3-0.7. Prints
count MAE on val, test and on other sparse scenes (other seeds, not chosen on); the model
directory is not changed.

    .venv/bin/python -m bench.operating_point var/runs/RUN/model [--dataset v0001]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from bookcounter.dataset_store import DatasetStore
from bookcounter.settings import get_settings
from trainer.evaluate import (
    NMS_IOUS,
    SPARSE_SEED,
    candidates,
    choose_operating_point,
    count_mae_at,
    kept_scores,
    operating_point_set,
)
from trainer.model import DEFAULT_NMS_IOU
from trainer.predictor import Predictor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--dataset", default=None, help="default: the model's own dataset version")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    predictor = Predictor(args.model_dir, device="cpu")
    version = DatasetStore.from_settings(get_settings()).get(
        args.dataset or json.loads((args.model_dir / "model.json").read_text())["dataset_version"]
    )
    val = version.coco("val")
    chosen_on = {
        "val": (val, candidates(predictor, version, "val")),
        "val + sparse": operating_point_set(predictor, version),
    }
    check, check_cands = operating_point_set(predictor, version, seed=SPARSE_SEED + 1000)
    sparse_ids = {im["id"] for im in check["images"]} - {im["id"] for im in val["images"]}
    sparse = {
        "images": [{"id": i} for i in sparse_ids],
        "annotations": [a for a in check["annotations"] if a["image_id"] in sparse_ids],
    }
    measured = {
        "val": (val, chosen_on["val"][1]),
        "test": (version.coco("test"), candidates(predictor, version, "test")),
        "other sparse": (sparse, check_cands),
    }
    for on, (gt, cands) in chosen_on.items():
        for name, ious in ((f"IoU {DEFAULT_NMS_IOU}", (DEFAULT_NMS_IOU,)), ("IoU 0.3-0.7", NMS_IOUS)):
            threshold, iou = choose_operating_point(gt, cands, ious)
            maes = {
                split: count_mae_at(g, kept_scores({i: c[i] for i in (im["id"] for im in g["images"])}, iou), threshold)
                for split, (g, c) in measured.items()
            }
            row = ", ".join(f"{split} {mae:.2f}" for split, mae in maes.items())
            print(f"chosen on {on:12s} {name:11s}: threshold {threshold:.2f}, NMS IoU {iou:.1f}: count MAE {row}")


if __name__ == "__main__":
    main()
