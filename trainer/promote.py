"""Champion/challenger promotion with a decision log.

The candidate and the current champion are both evaluated, now, on the same photos (the
``test`` split of the candidate's dataset version), and compared photo by photo: the
difference of their absolute count errors, with a paired bootstrap interval at
``promote_confidence`` (:func:`trainer.evaluate.paired_bootstrap`). The candidate wins only
when the whole interval says it counts better (by more than ``promote_mae_margin`` books per
photo) and its mask AP is not more than ``promote_ap_tolerance`` below the champion's. An
interval that straddles the margin is "too close to tell on N photos": the champion stays, and
the record says so. With no champion (or one that cannot be evaluated) the candidate must beat
the constant-count baseline (the train median) the same way. Every decision is appended to
``settings.decision_log`` (JSONL) and written as tags on the candidate's model version; the
alias switch comes last, so a crash before it leaves the old champion in place.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from bookcounter.errors import UserError
from bookcounter.settings import get_settings
from trainer import registry


def promote(candidate: str, split: str = "test", device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Decide on ``candidate`` (a registered version); returns the decision record."""
    from bookcounter.dataset_store import DatasetStore
    from trainer.evaluate import baseline_count, evaluate_model

    s = get_settings()
    cand = registry.get(candidate)
    current = registry.champion()
    if current is not None and current.version == cand.version:
        raise UserError(f"version {cand.version} is already the champion")
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_name": s.registered_model_name,
        "candidate": cand.version,
        "champion": current.version if current else None,
        "dataset_version": cand.dataset_version,
        "split": split,
        "rule": {
            "test": "paired bootstrap of per-photo absolute count errors",
            "confidence": s.promote_confidence,
            "mae_margin": s.promote_mae_margin,
            "ap_tolerance": s.promote_ap_tolerance,
        },
        "candidate_metrics": None,
        "champion_metrics": None,
        "baseline_count_mae": None,
        "comparison": None,
        "verdict": None,
        "decision": "rejected",
        "reason": "",
    }
    try:
        version = DatasetStore.from_settings(s).get(cand.dataset_version)
        if not version.coco(split)["images"]:
            raise UserError(f"{version.name} has no {split} photos")
        report = evaluate_model(registry.model_dir(cand.version), version, split, device=device, progress=progress)
        entry["candidate_metrics"] = cm = report["metrics"]
        entry["baseline_count_mae"] = cm["baseline_count_mae"]
    except Exception as e:  # a candidate that cannot be evaluated is rejected, with the error on record
        entry["reason"] = f"candidate evaluation failed: {type(e).__name__}: {e}"
        return _record(entry)

    median = baseline_count(version)
    reference = {
        "against": "baseline",
        "name": f"the baseline, a constant count of {median:g} (the train median)",
        "errors": [abs(median - r["true"]) for r in report["per_image"]],
    }
    if current is not None:
        try:
            theirs = evaluate_model(
                registry.model_dir(current.version), version, split, device=device, progress=progress
            )
            entry["champion_metrics"] = theirs["metrics"]
            reference = {
                "against": "champion",
                "name": f"champion {current.version}",
                "errors": [abs(r["predicted"] - r["true"]) for r in theirs["per_image"]],
            }
        except Exception as e:
            entry["reason"] = (
                f"champion {current.version} could not be evaluated ({type(e).__name__}: {e}); judged "
                "against the baseline. "
            )
    entry["verdict"], entry["comparison"], text = compare(
        [abs(r["predicted"] - r["true"]) for r in report["per_image"]],
        reference,
        s.promote_confidence,
        s.promote_mae_margin,
    )
    won = entry["verdict"] == "better"
    entry["reason"] += text
    if entry["champion_metrics"] is not None:
        ap, their_ap, tol = cm["segm_AP"], entry["champion_metrics"]["segm_AP"], s.promote_ap_tolerance
        ap_ok = ap >= their_ap - tol
        won = won and ap_ok
        entry["reason"] += (
            f"; mask AP {ap:.3f} vs {their_ap:.3f} ({'within' if ap_ok else 'falls more than'} tolerance {tol:g})"
        )
    entry["decision"] = "promoted" if won else "rejected"
    _record(entry)
    if won:
        registry.set_champion(cand.version)  # last step
    return entry


def compare(
    errors: list[float], reference: dict[str, Any], confidence: float, margin: float
) -> tuple[str, dict[str, Any], str]:
    """The verdict (better, worse or undecided), the bootstrap numbers, and a sentence saying both."""
    from trainer.evaluate import paired_bootstrap

    b = paired_bootstrap(errors, reference["errors"], confidence)
    n, mae, ref_mae = b["photos"], sum(errors) / len(errors), sum(reference["errors"]) / len(errors)
    if b["hi"] < -margin:
        verdict, words = "better", "counts better"
    elif b["lo"] > margin:
        verdict, words = "worse", "counts worse"
    else:
        verdict, words = "undecided", f"too close to tell on {n} photos, so it is not promoted"
    text = (
        f"count MAE {mae:.2f} vs {ref_mae:.2f} of {reference['name']}: difference {b['mean_diff']:+.2f} "
        "books per photo, "
        f"{confidence:.0%} interval {b['lo']:+.2f} to {b['hi']:+.2f} over {n} paired photos (margin "
        f"{margin:g}): {words}"
    )
    return verdict, {"against": reference["against"], **b}, text


def finish_switch(candidate: str) -> dict[str, Any] | None:
    """Move the alias to ``candidate`` if a stopped run promoted it but died before the switch.

    ``promote`` writes the decision first and moves the alias last. If the newest decision in
    the log promoted ``candidate`` and the alias has never pointed at it (no ``champion.since``:
    a later rollback by hand is left alone), do the switch now and return that decision.
    """
    rows = history()
    if not rows or rows[-1]["candidate"] != candidate or rows[-1]["decision"] != "promoted":
        return None
    if registry.get(candidate).champion_since:
        return None
    registry.set_champion(candidate)
    return rows[-1]


def _record(entry: dict[str, Any]) -> dict[str, Any]:
    """Append to the JSONL decision log (fsynced) and tag the candidate's model version."""
    path = get_settings().decision_log
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    registry.tag_version(
        entry["candidate"],
        {
            "promotion.decision": entry["decision"],
            "promotion.reason": entry["reason"],
            "promotion.time": entry["time"],
            "promotion.record": json.dumps(entry),
        },
    )
    return entry


def history() -> list[dict[str, Any]]:
    """Every decision about the current registered model, oldest first."""
    path = get_settings().decision_log
    if not path.is_file():
        return []
    name = get_settings().registered_model_name
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("model_name") == name]
