"""Which least-sure score predicts the champion's count error? Rank correlation on val photos.

For each photo of ``--split`` (default val; never test) it computes the candidate scores of
:mod:`bookcounter.uncertainty` (``flip``: |count - count of the mirrored photo|; ``near``:
detections within 0.15 of the threshold; their sum; each per detected book) and the model's absolute count error, and
prints Spearman's rho of each score against the error, plus the error of the least-sure
quarter vs the rest:

    .venv/bin/python -m bench.least_sure_score --model MODEL_DIR --state-dir STATE_DIR
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties get their mean rank)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            r[v == value] = r[v == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a model directory (model.pt + model.json)")
    p.add_argument("--state-dir", type=Path, help="BOOKCOUNTER_STATE_DIR holding the dataset version")
    p.add_argument("--dataset", default="v0001")
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.state_dir:
        os.environ["BOOKCOUNTER_STATE_DIR"] = str(args.state_dir)
    import torch
    from tqdm import tqdm

    from bookcounter.dataset_store import DatasetStore
    from bookcounter.images import read_image
    from bookcounter.settings import get_settings
    from bookcounter.uncertainty import NEAR, flip_disagreement, near_threshold
    from trainer.evaluate import true_counts
    from trainer.predictor import Predictor

    torch.set_num_threads(args.threads)
    version = DatasetStore.from_settings(get_settings()).get(args.dataset)
    predictor = Predictor(args.model, device="cpu")
    gt = version.coco(args.split)
    truth = true_counts(gt)
    rows = []
    for im in tqdm(gt["images"], desc=f"scoring {args.split}"):
        photo = read_image(version.image_path(im))
        low = predictor.predict(photo, threshold=max(0.01, predictor.threshold - NEAR))
        found = [i for i in low if i.score >= predictor.threshold]
        flip = flip_disagreement(predictor, photo, found)
        near = near_threshold([i.score for i in low], predictor.threshold)
        n = len(found) + 1
        rows.append((flip, near, flip + near, flip / n, near / n, abs(len(found) - truth[im["id"]])))
    a = np.array(rows, dtype=float)
    err = a[:, -1]
    print(f"{args.model} on {version.name}/{args.split}: {len(a)} photos, count MAE {err.mean():.2f}")
    quarter = max(1, len(a) // 4)
    for k, name in enumerate(("flip", "near", "flip+near", "flip/count", "near/count")):
        rho = spearman(a[:, k], err)
        order = np.argsort(-a[:, k], kind="stable")
        print(
            f"  {name:9s}: Spearman rho vs |count error| {rho:+.2f} ; "
            f"MAE of the least-sure quarter {err[order[:quarter]].mean():.2f} "
            f"vs the rest {err[order[quarter:]].mean():.2f}"
        )


if __name__ == "__main__":
    main()
