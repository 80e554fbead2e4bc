"""Count-time levers, measured on one trained model without retraining it.

For each photo of val (by density band) and of the shape checks made from val (strips, sparse
scenes, piles: ``trainer.evaluate.shape_checks``' scenes), the count with each lever:
- ``detections``: every detection at the counting threshold counts;
- ``whole books``: the product's rule (``Predictor.predict`` applies it when model.json's
  ``whole_books`` says so): where the photo looks sparse, a
  detection whose mask lies mostly inside a larger counted one is a fragment, not a book
  (``trainer.predictor.whole_books``): one book split into strips counts once;
- ``upscale``: where the photo looks dense (more than ``--dense-min`` books counted), count again
  with the network's input ``--upscale`` times larger, so thin spines span more pixels.

    .venv/bin/python -m bench.count_levers --model MODEL_DIR
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from bookcounter.dataset_store import DatasetStore
from bookcounter.settings import get_settings
from trainer.evaluate import DENSITY_BANDS, shape_scenes
from trainer.predictor import Predictor, whole_books


def counts(predictor: Predictor, big: Predictor, photo, args) -> dict[str, int]:
    """Each lever's count of ``photo``, whatever the model's own ``whole_books`` says."""
    found = predictor.predict(photo, threshold=predictor.threshold)
    n = len(found)
    return {
        "detections": n,
        "whole books": len(whole_books([f.mask for f in found])),
        "upscale": len(big.predict(photo, threshold=big.threshold)) if n > args.dense_min else n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--dataset", default="v0001")
    p.add_argument("--split", default="val", help="photos to measure on (default val: choose there, never on test)")
    p.add_argument("--dense-min", type=int, default=30)
    p.add_argument("--upscale", type=float, default=1.5)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    predictor, big = Predictor(args.model, device="cpu"), Predictor(args.model, device="cpu")
    big.config = big.config.model_copy(
        update={
            "image_size": round(big.config.image_size * args.upscale),
            "max_size": round(big.config.max_size * args.upscale),
        }
    )
    version = DatasetStore.from_settings(get_settings()).get(args.dataset)
    rows: dict[str, list[tuple[int, dict[str, int]]]] = defaultdict(list)
    for shape, photo, n in shape_scenes(version, args.split):
        if shape == args.split:
            shape = f"{args.split} {next(name for name, lo, hi in DENSITY_BANDS if lo <= n <= hi)}"
        rows[shape].append((n, counts(predictor, big, photo, args)))
    levers = ["detections", "whole books", "upscale"]
    table = {}
    print(f"{'photos':>14} {'n':>4} " + " ".join(f"{lever:>16}" for lever in levers))
    for name, got in sorted(rows.items()):
        table[name] = {lever: float(np.mean([abs(c[lever] - t) for t, c in got])) for lever in levers}
        bias = {lever: float(np.mean([c[lever] - t for t, c in got])) for lever in levers}
        print(f"{name:>14} {len(got):>4} " + " ".join(f"{table[name][lv]:>8.2f} ({bias[lv]:+5.2f})" for lv in levers))
    print("count MAE (bias) per lever")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "mae": table}, indent=2))


if __name__ == "__main__":
    main()
