"""The product's learning curve: annotations arrive in rounds through Label Studio, the loop runs after each.

Round by round, ``--per-round`` train photos of the sample go into the inbox, ``prelabel``
imports them (with the champion's predictions once there is one), the replay annotator submits
their reference masks through Label Studio's API, and the ``loop`` flow collects a new dataset
version, trains a candidate under the retrain policy within ``--budget-images`` (images seen:
the same work on a busy or a quiet machine) and promotes or rejects it through the paired
bootstrap gate, whose interval each row records. The first version holds the sample's val and test photos
only, so every train photo arrives through Label Studio, and no val or test photo of the
sample ever reaches the inbox.

The learning curve is measured on one **fixed set**, frozen before round 1 and never trained
on: the sample's test and val photos (15 + 34; val also picks each model's counting threshold,
test picks nothing). Each round's champion is evaluated on it (count MAE, mask AP50).

``--order`` picks which photos are annotated next: ``random`` (a seeded shuffle) or
``least-sure`` (the same first round; then the photos the champion is least sure of, by
:func:`bookcounter.uncertainty.uncertainty`). One row per round; ``--out`` collects one JSON
per order and redraws ``learning_curve.png`` (MAE vs photos annotated, one line per order)
after every round, so two runs (one per order) sharing ``--out`` end in one PNG:

    .venv/bin/python -m bench.loop_replay --order random --out var/curves --ls-port 8189
    .venv/bin/python -m bench.loop_replay --order least-sure --out var/curves --ls-port 8190
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ORDERS = ("random", "least-sure")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=20, help="train photos annotated per round")
    p.add_argument(
        "--budget-images",
        type=int,
        default=None,
        help="training work per round, in images seen (default: the nightly budget)",
    )
    p.add_argument("--order", choices=ORDERS, default="random", help="which inbox photos are annotated next")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the random order (and of the first round of least-sure)"
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads for training, scoring and evaluation")
    p.add_argument(
        "--out", type=Path, default=Path("var/bench/loop-replay"), help="curve JSON per order + learning_curve.png"
    )
    p.add_argument("--state-dir", type=Path, default=None, help="default: a new temp dir")
    p.add_argument("--ls-port", type=int, default=8189)
    args = p.parse_args()
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="bookcounter-loop-replay-"))
    state.mkdir(parents=True, exist_ok=True)
    os.environ["BOOKCOUNTER_STATE_DIR"] = str(state)
    os.environ["BOOKCOUNTER_LS_PORT"] = str(args.ls_port)

    import torch

    from annotator.coco_import import read_coco
    from annotator.labelstudio.server import start_server, stop_server
    from bookcounter.dataset_store import DatasetStore
    from bookcounter.settings import get_settings
    from flows.prefect_server import configure_prefect

    configure_prefect(get_settings())  # before Prefect is imported by the flows
    from flows.loop import loop_flow
    from flows.prelabel import prelabel_flow
    from flows.replay import SECONDS_PER_BOOK, reference_masks, replay
    from trainer import promote, registry

    torch.set_num_threads(args.threads)
    settings = get_settings()
    sample = settings.sample_dir
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"state dir {state}", file=sys.stderr)
    start_server(settings, timeout=600)  # a loaded machine can take minutes
    try:
        held_out = read_coco(sample / "val.json", sample)[0] + read_coco(sample / "test.json", sample)[0]
        store = DatasetStore.from_settings(get_settings())
        fixed = store.commit(held_out, source={"name": "open-shelves", "licence": "CC BY 4.0"}).version
        fixed_shas = {im["sha256"] for im in fixed.coco()["images"]}
        pool, _ = read_coco(sample / "train.json", sample)
        pool.sort(key=lambda item: item.file_name)
        random.Random(args.seed).shuffle(pool)
        references = reference_masks(sample / "train.json", sample)
        baseline = fixed_set_baseline(fixed, [len(r) for r in references.values()])
        rows: list[dict[str, Any]] = []
        annotated, seconds, measured = 0, 0.0, {}
        for r in range(args.rounds):
            if not pool:
                break
            t0 = time.monotonic()
            champion = registry.champion()
            batch = next_batch(
                pool, args.per_round, args.order, champion and registry.load_predictor(champion.version, device="cpu")
            )
            pool = [item for item in pool if all(item is not b for b in batch)]
            settings.inbox_dir.mkdir(parents=True, exist_ok=True)
            for item in batch:
                (settings.inbox_dir / Path(item.file_name).name).write_bytes(item.data)
            prelabel_flow()
            replay(settings, references)
            annotated += len(batch)
            seconds += sum(SECONDS_PER_BOOK * len(references[item.sha256]) for item in batch)
            loop_flow(budget_images=args.budget_images, recipe={"threads": args.threads, "seed": args.seed})
            d = promote.history()[-1]
            trained_on = {im["sha256"] for im in store.get(d["dataset_version"]).coco("train")["images"]}
            if trained_on & fixed_shas:
                raise SystemExit(
                    f"{d['dataset_version']}: {len(trained_on & fixed_shas)} fixed-set photos in the train split"
                )
            champion = registry.champion()
            if champion is not None and champion.version not in measured:
                measured[champion.version] = fixed_set_metrics(registry.model_dir(champion.version), fixed)
            m = measured.get(champion.version, {}) if champion else {}
            rows.append(
                {
                    "round": r + 1,
                    "photos": annotated,
                    "annotator_s": seconds,
                    "dataset": d["dataset_version"],
                    "candidate": d["candidate"],
                    "decision": d["decision"],
                    "champion": champion.version if champion else None,
                    "verdict": d.get("verdict"),
                    "interval": [d["comparison"][k] for k in ("lo", "hi")] if d.get("comparison") else None,
                    "count_mae": m.get("count_mae"),
                    "segm_AP50": m.get("segm_AP50"),
                    "prelabel": prelabel_quality(store.get(d["dataset_version"]).manifest().get("report", {})),
                    "minutes": (time.monotonic() - t0) / 60,
                }
            )
            _print(rows, args.order)
            (args.out / f"curve-{args.order}.json").write_text(
                json.dumps({"order": args.order, "baseline_count_mae": baseline, "rounds": rows}, indent=2)
            )
            plot(args.out)
    finally:
        stop_server(settings)


def next_batch(pool: list, n: int, order: str, champion) -> list:
    """The next ``n`` photos of ``pool`` (in its shuffled order): the first ones, or for
    ``least-sure`` with a champion the ones it is least sure of (ties keep the pool's order)."""
    if order == "random" or champion is None or len(pool) <= n:
        return pool[:n]
    from tqdm import tqdm

    from bookcounter.images import decode_image
    from bookcounter.uncertainty import uncertainty

    scores = [
        uncertainty(champion, decode_image(item.data, item.file_name)) for item in tqdm(pool, desc="least-sure scores")
    ]
    ranked = sorted(range(len(pool)), key=lambda i: -scores[i])
    return [pool[i] for i in ranked[:n]]


def fixed_set_metrics(model_dir: Path, version) -> dict[str, float]:
    """Count MAE and mask AP on the fixed set: every photo of ``version`` (the sample's val + test)."""
    from trainer.evaluate import detect, metrics
    from trainer.predictor import Predictor

    predictor = Predictor(model_dir, device="cpu")
    results = detect(predictor, version, "val") + detect(predictor, version, "test")
    gt = version.coco()
    return metrics(gt, results, predictor.threshold)


def fixed_set_baseline(version, train_counts: list[int]) -> float:
    """Count MAE on the fixed set of always saying the median count of the sample's train photos."""
    from trainer.evaluate import count_errors, true_counts

    truth = list(true_counts(version.coco()).values())
    return count_errors(truth, [statistics.median(train_counts)] * len(truth))["count_mae"]


def prelabel_quality(report: dict[str, Any]) -> str:
    """Pre-label recall / precision from collect's report of the version, when it has them."""
    found = {
        k: v for k, v in _flatten(report).items() if isinstance(v, (int, float)) and ("recall" in k or "precision" in k)
    }
    rec = next((v for k, v in found.items() if "recall" in k), None)
    prec = next((v for k, v in found.items() if "precision" in k), None)
    return "-" if rec is None and prec is None else f"R {_f(rec, 2)} / P {_f(prec, 2)}"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def plot(out: Path) -> Path:
    """``out/learning_curve.png``: fixed-set count MAE vs photos annotated, one line per curve JSON in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    baseline = None
    for path in sorted(out.glob("curve-*.json")):
        curve = json.loads(path.read_text())
        baseline = curve.get("baseline_count_mae", baseline)
        pts = [(r["photos"], r["count_mae"]) for r in curve["rounds"] if r["count_mae"] is not None]
        if pts:  # a step: the champion stays until the next promotion
            ax.step(*zip(*pts), where="post", marker="o", label=curve["order"])
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", label="median train count, always")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("photos annotated")
    ax.set_ylabel("count MAE, fixed set (sample val + test, 49 photos)")
    ax.set_title("Learning curve of the loop (each round's champion)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=100)
    plt.close(fig)
    return out / "learning_curve.png"


HEADER = [
    "round",
    "photos annotated",
    "annotator-s",
    "dataset",
    "candidate",
    "decision",
    "champion",
    "fixed MAE",
    "fixed mask AP50",
    "pre-label R/P",
    "minutes",
]


def _print(rows: list[dict[str, Any]], order: str) -> None:
    table = [
        [
            r["round"],
            r["photos"],
            f"{r['annotator_s']:.0f}",
            r["dataset"],
            r["candidate"],
            r["decision"],
            r["champion"] or "-",
            _f(r["count_mae"]),
            _f(r["segm_AP50"]),
            r["prelabel"],
            f"{r['minutes']:.1f}",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *table)]
    print(f"order: {order}")
    for row in [HEADER, *table]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
    print(f"fixed set: the sample's val + test photos; load average {os.getloadavg()[0]:.1f}\n", flush=True)


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


if __name__ == "__main__":
    main()
