"""How often the promotion gate promotes a worse model or rejects a better one, by test-split size and level.

A fixed set of photos (default: the sample's val + test, 49) stands for "the truth". Models to
compare are one trained model counting at several thresholds (its own, and shifted by
``--shifts``: nearby, slightly worse counters), plus the constant-count baseline (the train
median). For every ordered pair (candidate, champion) with the model at its own threshold on one
side and full-set MAEs that differ, ``--trials`` test splits of ``n`` photos are drawn from the fixed set, and the gate
(``trainer.promote.compare``, the paired bootstrap) judges the pair on each. A *false promotion*
is a "better" verdict for a candidate that is worse on the whole set; a *false rejection* is
anything but "better" for a candidate that is better on the whole set by more than ``--min-gain``
books per photo (smaller gains are not worth finding). Choose the level on these rates.

    .venv/bin/python -m bench.gate_error_rates --model MODEL_DIR --sizes 15 23 49 --levels 0.8 0.9 0.95
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import warnings
from pathlib import Path

import numpy as np

from bookcounter.dataset_store import DatasetStore
from bookcounter.images import read_image
from bookcounter.settings import get_settings
from trainer.evaluate import MIN_SCORE, true_counts
from trainer.predictor import Predictor
from trainer.promote import compare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--dataset", default="v0001")
    p.add_argument("--splits", nargs="+", default=["val", "test"], help="the fixed set (default val + test)")
    p.add_argument(
        "--shifts",
        nargs="+",
        type=float,
        default=[-0.2, -0.1, 0.1, 0.2],
        help="threshold shifts making the other counters",
    )
    p.add_argument("--sizes", nargs="+", type=int, default=[15, 23, 49])
    p.add_argument("--levels", nargs="+", type=float, default=[0.8, 0.9, 0.95])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--min-gain", type=float, default=0.3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    version = DatasetStore.from_settings(get_settings()).get(args.dataset)
    predictor = Predictor(args.model, device="cpu")
    truth, scores = [], []
    for split in args.splits:
        gt = version.coco(split)
        counts = true_counts(gt)
        for im in gt["images"]:
            truth.append(counts[im["id"]])
            scores.append(
                np.array([i.score for i in predictor.predict(read_image(version.image_path(im)), threshold=MIN_SCORE)])
            )
    truth_a = np.array(truth)
    median = statistics.median(true_counts(version.coco("train")).values())
    errors = {"baseline": np.abs(median - truth_a)}
    for shift in [0.0, *args.shifts]:
        t = predictor.threshold + shift
        errors[f"threshold {t:.2f}"] = np.abs(np.array([(s >= t).sum() for s in scores]) - truth_a)
    own = f"threshold {predictor.threshold:.2f}"
    mae = {k: float(v.mean()) for k, v in errors.items()}
    print("full-set count MAE:", json.dumps({k: round(v, 2) for k, v in mae.items()}))
    rng = np.random.default_rng(0)
    table = []
    for n in args.sizes:
        for level in args.levels:
            fp = fn = worse_pairs = better_pairs = 0
            for cand, champ in itertools.permutations(errors, 2):
                if own not in (cand, champ):
                    continue
                gain = mae[champ] - mae[cand]
                if gain == 0 or 0 < gain < args.min_gain:
                    continue
                for _ in range(args.trials):
                    pick = rng.choice(len(truth_a), n, replace=n > len(truth_a))
                    verdict = compare(
                        errors[cand][pick].tolist(),
                        {"against": "champion", "name": champ, "errors": errors[champ][pick].tolist()},
                        level,
                        0.0,
                    )[0]
                    if gain < 0:
                        worse_pairs += 1
                        fp += verdict == "better"
                    else:
                        better_pairs += 1
                        fn += verdict != "better"
            row = {
                "photos": n,
                "level": level,
                "false_promotions": fp / max(1, worse_pairs),
                "false_rejections": fn / max(1, better_pairs),
                "trials": args.trials,
            }
            table.append(row)
            print(
                f"n={n:3d} level {level:.2f}: false promotions {row['false_promotions']:.1%}, "
                f"false rejections {row['false_rejections']:.1%}"
            )
    if args.out:
        args.out.write_text(json.dumps({"mae": mae, "rates": table}, indent=2))


if __name__ == "__main__":
    main()
