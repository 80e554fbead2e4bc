"""Champion/challenger promotion with a decision log.

The candidate and the current champion are both evaluated, now, on the same split (``test``
of the candidate's dataset version). The candidate wins only if its count MAE beats the
champion's by more than ``promote_mae_margin`` and its mask AP is not more than
``promote_ap_tolerance`` below; with no champion it must beat the constant-count baseline
(the train median). Every decision is appended to ``settings.decision_log`` (JSONL) and
written as tags on the candidate's model version; the alias switch comes last, so a crash
before it leaves the old champion in place.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any

from bookcounter.errors import UserError
from bookcounter.settings import get_settings
from trainer import registry


def promote(candidate: str, split: str = "test", device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Decide on ``candidate`` (a registered version); returns the decision record."""
    from bookcounter.dataset_store import DatasetStore
    from trainer.evaluate import baseline_count_mae, evaluate_model

    s = get_settings()
    cand = registry.get(candidate)
    current = registry.champion()
    if current is not None and current.version == cand.version:
        raise UserError(f"version {cand.version} is already the champion")
    entry: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_name": s.registered_model_name,
        "candidate": cand.version,
        "champion": current.version if current else None,
        "dataset_version": cand.dataset_version,
        "split": split,
        "rule": {"mae_margin": s.promote_mae_margin, "ap_tolerance": s.promote_ap_tolerance},
        "candidate_metrics": None,
        "champion_metrics": None,
        "baseline_count_mae": None,
        "decision": "rejected",
        "reason": "",
    }
    try:
        version = DatasetStore.from_settings().get(cand.dataset_version)
        if not version.coco(split)["images"]:
            raise UserError(f"{version.name} has no {split} photos")
        entry["baseline_count_mae"] = baseline_count_mae(version, split)
        cm = evaluate_model(registry.model_dir(cand.version), version, split, device=device, progress=progress)["metrics"]
        entry["candidate_metrics"] = cm
    except Exception as e:  # a candidate that cannot be evaluated is rejected, with the error on record
        entry["reason"] = f"candidate evaluation failed: {type(e).__name__}: {e}"
        return _record(entry)

    champion_metrics = None
    if current is not None:
        try:
            champion_metrics = evaluate_model(registry.model_dir(current.version), version, split, device=device, progress=progress)["metrics"]
            entry["champion_metrics"] = champion_metrics
        except Exception as e:
            entry["reason"] = f"champion {current.version} could not be evaluated ({type(e).__name__}: {e}); judged against the baseline. "
    margin, tol = s.promote_mae_margin, s.promote_ap_tolerance
    mae = cm["count_mae"]
    if champion_metrics is None:
        base = entry["baseline_count_mae"]
        won = mae < base - margin
        entry["reason"] += f"count MAE {mae:.3f} {'beats' if won else 'does not beat'} the median baseline {base:.3f} (margin {margin:g})"
    else:
        mae_ok = mae < champion_metrics["count_mae"] - margin
        ap_ok = cm["segm_AP"] >= champion_metrics["segm_AP"] - tol
        won = mae_ok and ap_ok
        entry["reason"] = (
            f"count MAE {mae:.3f} vs champion {champion_metrics['count_mae']:.3f} "
            f"({'better' if mae_ok else 'not better'} by more than {margin:g}); "
            f"mask AP {cm['segm_AP']:.3f} vs {champion_metrics['segm_AP']:.3f} "
            f"({'within' if ap_ok else 'falls more than'} tolerance {tol:g})"
        )
    entry["decision"] = "promoted" if won else "rejected"
    _record(entry)
    if won:
        registry.set_champion(cand.version)  # last step
    return entry


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
