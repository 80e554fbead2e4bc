"""Train within CPU budgets on the whole open-shelves sample; report how well the model counts.

Needs ``v0001`` to hold the whole sample (100 / 34 / 15; ``bookcounter demo`` imports only 40
train photos): ``bookcounter dataset import-coco train.json val.json test.json --images DIR``
into a fresh ``BOOKCOUNTER_STATE_DIR``. Each budget (minutes) is a wall-clock ``max_minutes``:
the LR schedule follows the elapsed share of it and training stops when it is spent. The
recipe is the trainer's default (``default_train_config``) plus the overrides given here. The
counting operating point is chosen on val. Nothing is registered.

Per budget it prints, on val and on test: count MAE, mask AP / AP50, box AP50, and the count
error by shelf density (<= 10, 11-30, > 30 books). Then two checks of photos unlike the
sample's 640x640 squares, both made from the *val* photos:
- ``strips``: the middle 3:1 strip of each photo (640x213), books kept if >= 30 % inside;
- ``sparse``: 0-6 of each photo's books pasted onto a book-free background (3 per photo,
  fixed seeds), which is also how training shows sparse scenes (``trainer.data``).

    .venv/bin/python -m bench.open_shelves_budget --budgets 5 10 30 60
    .venv/bin/python -m bench.open_shelves_budget --model var/runs/RUN/model   # evaluate only
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from bookcounter.dataset_store import DatasetStore, DatasetVersion
from bookcounter.settings import get_settings
from trainer.data import crop, photos_with_masks, sparse_scene
from trainer.evaluate import count_errors, evaluate_model
from trainer.predictor import Predictor
from trainer.train import default_train_config, train_and_save

DENSITY = (("<=10", 0, 10), ("11-30", 11, 30), (">30", 31, 10**9))


def shape_checks(predictor: Predictor, version: DatasetVersion) -> dict[str, dict[str, float]]:
    """Count MAE on 3:1 strips and on sparse scenes made from the val photos."""
    truth: dict[str, list[int]] = {"strips": [], "sparse": []}
    pred: dict[str, list[int]] = {"strips": [], "sparse": []}
    for i, (photo, masks) in enumerate(photos_with_masks(version, "val")):
        w, h = photo.size
        sh = round(w / 3)
        strip, strip_masks = crop(photo, masks, (0, (h - sh) // 2, w, (h - sh) // 2 + sh))
        truth["strips"].append(len(strip_masks))
        pred["strips"].append(len(predictor.predict(strip)))
        for k in range(3):
            scene, scene_masks = sparse_scene(photo, masks, np.random.default_rng(10_000 + 3 * i + k))
            truth["sparse"].append(len(scene_masks))
            pred["sparse"].append(len(predictor.predict(scene)))
    return {
        name: {**count_errors(truth[name], pred[name]), "photos": len(truth[name]), "books": sum(truth[name])}
        for name in truth
    }


def by_density(per_image: list[dict]) -> dict[str, str]:
    out = {}
    for name, lo, hi in DENSITY:
        rows = [r for r in per_image if lo <= r["true"] <= hi]
        if rows:
            err = [r["predicted"] - r["true"] for r in rows]
            out[name] = f"{len(rows)} photos, MAE {np.mean(np.abs(err)):.2f}, bias {np.mean(err):+.2f}"
    return out


def report(model_dir: Path, version: DatasetVersion, out_dir: Path) -> dict:
    row: dict = {"model": str(model_dir), "epochs": json.loads((model_dir / "model.json").read_text())["epochs_done"]}
    for split in ("val", "test"):
        r = evaluate_model(model_dir, version, split, out_dir=out_dir / split, progress=False)
        m = r["metrics"]
        row[split] = {
            k: round(m[k], 3)
            for k in ("count_mae", "baseline_count_mae", "segm_AP", "segm_AP50", "bbox_AP50", "threshold", "nms_iou")
        }
        row[split]["density"] = by_density(r["per_image"])
    row["shapes"] = shape_checks(Predictor(model_dir, device="cpu"), version)
    return row


def show(row: dict) -> None:
    print(f"{row['model']} ({row['epochs']} epochs)")
    for split in ("val", "test"):
        m = row[split]
        print(
            f"  {split:4s}: count MAE {m['count_mae']:.2f} (median baseline {m['baseline_count_mae']:.2f}), "
            f"mask AP {m['segm_AP']:.3f}, AP50 {m['segm_AP50']:.3f}, box AP50 {m['bbox_AP50']:.3f}  "
            f"[threshold {m['threshold']:.2f}, NMS IoU {m['nms_iou']:.1f}]"
        )
        for name, text in m["density"].items():
            print(f"        {name:>5s} books: {text}")
    for name, m in row["shapes"].items():
        print(f"  val {name}: count MAE {m['count_mae']:.2f} on {m['photos']} photos ({m['books']} books)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", nargs="+", type=float, default=[10], help="CPU minutes per training run")
    p.add_argument("--model", type=Path, help="evaluate this model directory instead of training")
    p.add_argument("--dataset", default="v0001")
    p.add_argument(
        "--recipe", default="{}", help='JSON overrides of the default config, e.g. \'{"model": {"image_size": 640}}\''
    )
    p.add_argument("--tag", default="", help="added to the run directory's name")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    s = get_settings()
    store = DatasetStore.from_settings(get_settings())
    version = store.get(args.dataset)
    if args.model:
        show(report(args.model, version, args.model.parent / "bench"))
        return
    rows = []
    for budget in args.budgets:
        cfg = default_train_config(version.name, "cpu", {**json.loads(args.recipe), "max_minutes": budget})
        print(f"budget {budget:g} min: {json.dumps(cfg.to_dict())}", flush=True)
        run_dir = (
            s.runs_dir / f"bench-{version.name}-{cfg.model.backbone}-{cfg.model.image_size}px-{budget:g}min{args.tag}"
        )
        t0 = time.monotonic()
        out = train_and_save(cfg, store, run_dir, progress=False)
        row = {
            "budget_min": budget,
            "train_min": round((time.monotonic() - t0) / 60, 1),
            **report(out, version, run_dir / "bench"),
        }
        rows.append(row)
        show(row)
        (run_dir / "bench.json").write_text(json.dumps(row, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
