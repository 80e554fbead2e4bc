"""The product's learning curve: annotations arrive in rounds through Label Studio, the loop runs after each.

Round by round, ``--per-round`` train photos of the sample go into the inbox, ``prelabel``
imports them (with the champion's predictions once there is one), the replay annotator submits
their reference masks through Label Studio's API, and the ``loop`` flow collects a new dataset
version, trains a candidate within ``--budget-minutes`` and promotes or rejects it against the
champion on the frozen test split. The first version holds the sample's val and test photos
only, so every train photo arrives through Label Studio.

Runs in its own state dir (default: a new temp dir) with its own Label Studio on
``--ls-port``; prints one row per round:

    .venv/bin/python bench/loop_replay.py --rounds 5 --per-round 20 --budget-minutes 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=20, help="train photos annotated per round")
    p.add_argument("--budget-minutes", type=float, default=10.0, help="training budget per round")
    p.add_argument("--state-dir", type=Path, default=None, help="default: a new temp dir")
    p.add_argument("--ls-port", type=int, default=8189)
    args = p.parse_args()
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="bookcounter-loop-replay-"))
    os.environ["BOOKCOUNTER_STATE_DIR"] = str(state)
    os.environ["BOOKCOUNTER_LS_PORT"] = str(args.ls_port)

    from annotator.coco_import import read_coco
    from annotator.labelstudio.server import start_server, stop_server
    from bookcounter.dataset_store import DatasetStore
    from bookcounter.settings import get_settings
    from flows.loop import loop_flow
    from flows.prelabel import prelabel_flow
    from flows.replay import reference_masks, replay
    from trainer import promote

    settings = get_settings()
    sample = settings.sample_dir
    print(f"state dir {state}", file=sys.stderr)
    start_server(settings)
    try:
        held_out = read_coco(sample / "val.json", sample)[0] + read_coco(sample / "test.json", sample)[0]
        DatasetStore.from_settings().commit(held_out, source={"name": "open-shelves", "licence": "CC BY 4.0"})
        train, _ = read_coco(sample / "train.json", sample)
        train.sort(key=lambda item: item.file_name)
        references = reference_masks(sample / "train.json", sample)
        rows = []
        for r in range(args.rounds):
            batch = train[r * args.per_round:(r + 1) * args.per_round]
            if not batch:
                break
            t0 = time.monotonic()
            settings.inbox_dir.mkdir(parents=True, exist_ok=True)
            for item in batch:
                (settings.inbox_dir / Path(item.file_name).name).write_bytes(item.data)
            prelabel_flow()
            replay(settings, references)
            loop_flow(max_minutes=args.budget_minutes)
            d = promote.history()[-1]
            cm, ch = d.get("candidate_metrics") or {}, d.get("champion_metrics") or {}
            rows.append([
                r + 1, (r + 1) * args.per_round, d["dataset_version"], d["candidate"],
                _f(cm.get("count_mae")), _f(ch.get("count_mae") if ch else d.get("baseline_count_mae")),
                _f(cm.get("segm_AP")), _f(ch.get("segm_AP")), d["decision"], f"{(time.monotonic() - t0) / 60:.1f}",
            ])
            _print(rows)
    finally:
        stop_server(settings)


HEADER = ["round", "photos annotated", "dataset", "candidate", "cand. MAE", "champ. MAE*", "cand. mask AP",
          "champ. mask AP", "decision", "minutes"]


def _print(rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows)]
    for row in [HEADER, *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
    print("* with no champion yet: the constant median-count baseline\n", flush=True)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    main()
