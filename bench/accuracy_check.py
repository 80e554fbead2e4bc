"""Score a model directory on val and test, by shelf density and on other shapes; fail above the recorded thresholds.

For use before a recipe change lands: train the changed recipe on the whole sample (``v0001``
holding all 100 / 34 / 15 photos, see bench/README.md), then

    .venv/bin/python -m bench.accuracy_check --model var/runs/RUN/model

It prints count MAE (and the median baseline's), mask AP / AP50 and box AP50 on val and test,
the count MAE and bias per density band (<= 10, 11-30, > 30 books), and the count MAE on 3:1
strips and sparse scenes made from val (``trainer.evaluate.shape_checks``). It exits 1 when a
number is worse than the limits of ``bench/accuracy_thresholds.json`` (MAE above, AP below),
naming each; the file's targets (issue 23's goals) are printed, not enforced.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from bookcounter.dataset_store import DatasetStore
from bookcounter.settings import get_settings
from trainer.evaluate import accuracy_report

THRESHOLDS = Path(__file__).with_name("accuracy_thresholds.json")


def show(row: dict[str, Any]) -> None:
    print(f"{row['model']} ({row['epochs']} epochs, {row['iterations']} iterations)")
    for split in ("val", "test"):
        m = row[split]
        print(
            f"  {split:4s}: count MAE {m['count_mae']:.2f} (median baseline {m['baseline_count_mae']:.2f}) "
            f"on {m['images']} photos, "
            f"mask AP {m['segm_AP']:.3f}, AP50 {m['segm_AP50']:.3f}, box AP50 {m['bbox_AP50']:.3f}  "
            f"[threshold {m['threshold']:.2f}, NMS IoU {m['nms_iou']:.1f}]"
        )
        for band, d in m["density"].items():
            print(f"        {band:>5s} books: {d['photos']} photos, MAE {d['count_mae']:.2f}, bias {d['bias']:+.2f}")
    for name, m in row["shapes"].items():
        print(f"  val {name}: count MAE {m['count_mae']:.2f} on {m['photos']} photos ({m['books']} books)")


def failures(row: dict[str, Any], limits: dict[str, Any]) -> list[str]:
    """Each number past its limit, as 'where: got X, limit Y'. Keys ending in AP/AP50 are floors, the rest ceilings."""
    out = []
    for where, limit in limits.items():
        node: Any = row
        for key in where.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            out.append(f"{where}: not measured (limit {limit})")
            continue
        floor = where.rsplit(".", 1)[-1].startswith(("segm_AP", "bbox_AP"))
        if (node < limit) if floor else (node > limit):
            out.append(f"{where}: {node:.3f}, limit {'>=' if floor else '<='} {limit}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a model directory (model.pt + model.json)")
    p.add_argument("--dataset", default="v0001", help="the dataset version holding the whole sample (default v0001)")
    p.add_argument("--thresholds", type=Path, default=THRESHOLDS, help=f"limits to check (default {THRESHOLDS.name})")
    p.add_argument("--out", type=Path, help="write the report as JSON here")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    row = accuracy_report(args.model, DatasetStore.from_settings(get_settings()).get(args.dataset))
    show(row)
    if args.out:
        args.out.write_text(json.dumps(row, indent=2))
    recorded = json.loads(args.thresholds.read_text())
    targets = recorded.get("targets", {})
    missed = failures(row, targets)
    print(
        f"{len(targets) - len(missed)} of {len(targets)} targets met (not enforced)" + "".join(f"; {m}" for m in missed)
    )
    limits = recorded["limits"]
    failed = failures(row, limits)
    for line in failed:
        print(f"FAIL {line}")
    print(f"{len(limits) - len(failed)} of {len(limits)} limits met ({args.thresholds.name})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
