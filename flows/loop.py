"""The learning loop as Prefect flows: collect -> retrain -> promote, and what starts it.

- ``collect``: human annotations in Label Studio -> a new dataset version (no-op when nothing changed).
- ``retrain``: train a candidate on the newest version, register it, promote or reject it
  (skipped when that version already has a judged candidate; a registered candidate that a
  stopped run left unjudged is judged instead of trained again; one at a time, by a lock).
- ``loop``: collect then retrain; started nightly, by hand, or by the Prefect event
  ``bookcounter.annotations.ready`` (the ``loop`` deployment's trigger, ``flows/deployments.py``).
- ``watch-annotations``: every minute, the backstop of the ML backend's annotation webhook: counts
  submitted annotations not yet in a dataset version and, at each multiple of
  ``settings.retrain_every_n_annotations`` not announced yet, emits that event
  (:func:`annotator.training_trigger.check_annotations`, which the webhook calls too).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from annotator.events import ANNOTATIONS_READY
from annotator.labelstudio.server import is_healthy, start_server
from bookcounter.dataset_store import DatasetStore
from bookcounter.locks import file_lock
from bookcounter.settings import get_settings


@task(timeout_seconds=300)
def ensure_labelstudio() -> str:
    """Use the Label Studio that answers at the configured URL, else start ours (or fail clearly)."""
    settings = get_settings()
    if is_healthy(settings):
        return f"Label Studio answers at {settings.ls_url}"
    return start_server(settings).line()


@task(timeout_seconds=1800)
def collect_task() -> dict[str, Any] | None:
    from annotator.collect import collect
    from trainer.registry import load_predictor

    result = collect(get_settings(), champion=load_predictor)
    if result is None:
        return None
    manifest = result.version.manifest()
    return {
        "version": result.version.name,
        **manifest["counts"],
        "prelabel_quality": manifest["report"].get("prelabel_quality"),
    }


@flow(name="collect", log_prints=True)
def collect_flow() -> str | None:
    """Export the submitted annotations into a new dataset version; None when nothing changed."""
    ensure_labelstudio()
    made = collect_task()
    if made is None:
        print("collect: nothing new since the last dataset version")
        create_markdown_artifact("No new human annotations: no new dataset version.", key="collect")
        return None
    rows = [{"split": s, "photos": made[s]["images"], "books": made[s]["books"]} for s in ("train", "val", "test")]
    create_table_artifact(rows, key="collect", description=f"New dataset version {made['version']}")
    if (made.get("prelabel_quality") or {}).get("photos"):
        create_markdown_artifact(
            _prelabel_quality_markdown(made["version"], made["prelabel_quality"]), key="prelabel-quality"
        )
    print(f"collect: created {made['version']}")
    return made["version"]


def train_config(dataset: str, budget_images: int | None, recipe: dict[str, Any] | None):
    """The trainer's default recipe for this device under its retrain policy (a cold start, or
    a fine-tune of the champion, within ``budget_images``; default: the nightly budget
    ``settings.retrain_budget_images``), with ``recipe`` overrides."""
    from trainer.train import CHAMPION_INIT, default_train_config

    budget = budget_images or get_settings().retrain_budget_images
    return default_train_config(dataset, overrides={"init": CHAMPION_INIT, **(recipe or {})}, budget_images=budget)


@task(timeout_seconds=4 * 3600)
def train_task(dataset: str, budget_images: int | None, recipe: dict[str, Any] | None) -> str:
    from trainer.train import train_and_save

    settings = get_settings()
    cfg = train_config(dataset, budget_images, recipe)
    run_dir = settings.runs_dir / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    return str(train_and_save(cfg, DatasetStore.from_settings(settings), run_dir, log=get_run_logger().info))


@task(retries=1, retry_delay_seconds=5)
def register_task(model_dir: str) -> str:
    from pathlib import Path

    from trainer import registry

    return registry.register(Path(model_dir)).version


@task
def promote_task(candidate: str) -> dict[str, Any]:
    from trainer.promote import promote

    return promote(candidate)


@flow(name="retrain", log_prints=True)
def retrain_flow(
    dataset: str | None = None, budget_images: int | None = None, recipe: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Train a candidate on ``dataset`` (default: the newest version), then promote or reject it.

    ``budget_images`` is the work the training may do, in images seen (default: the nightly
    ``settings.retrain_budget_images``); the trainer's retrain policy spends it on a cold start
    or a fine-tune of the champion (``trainer.train.retrain_policy``; model.json's
    ``init_loaded`` says which). ``recipe`` overrides fields of the trainer's default config,
    e.g. ``{"epochs": 20, "max_minutes": 90, "model": {"image_size": 384}}``.
    """
    from trainer import promote, registry

    settings = get_settings()
    store = DatasetStore.from_settings(settings)
    if dataset is None and store.latest() is None:
        print("retrain: no dataset version yet; nothing to train on")
        return None
    version = store.get(dataset or "latest").name
    with file_lock(settings.run_dir / "retrain.lock", blocking=False) as mine:
        if not mine:
            print("retrain: another retrain is running; this one exits")
            return None
        existing = [m for m in registry.versions() if m.dataset_version == version]
        if any(m.decision for m in existing):
            finished = promote.finish_switch(existing[-1].version)
            if finished is not None:  # a stopped run promoted it but never moved the alias
                print(f"retrain: model version {finished['candidate']} was promoted by a stopped run; champion now")
                return finished
            print(f"retrain: {version} already has candidate model version {existing[-1].version}; skipped")
            return None
        if existing:  # registered by a retrain that was stopped before its decision: judge that one
            candidate = existing[-1].version
            print(f"retrain: {version} has candidate model version {candidate} without a decision; judging it")
        else:
            candidate = register_task(train_task(version, budget_images, recipe))
        decision = promote_task(candidate)
    create_markdown_artifact(_decision_markdown(decision), key="promotion-decision")
    print(f"retrain: model version {candidate}: {decision['decision']} ({decision['reason']})")
    return decision


@flow(name="loop", log_prints=True)
def loop_flow(budget_images: int | None = None, recipe: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Collect then retrain; the retrain is skipped when the dataset already has a candidate."""
    collect_flow()
    return retrain_flow(budget_images=budget_images, recipe=recipe)


@flow(name="watch-annotations", log_prints=True)
def watch_annotations_flow() -> dict[str, Any]:
    """Emit ``bookcounter.annotations.ready`` when enough new human annotations have arrived
    (once per crossing, whoever sees it first); returns how many are new and whether it emitted."""
    from annotator.training_trigger import check_annotations

    settings = get_settings()
    ensure_labelstudio()
    pending, crossing = check_annotations(settings, "watch-annotations")
    threshold = settings.retrain_every_n_annotations
    print(
        f"watch-annotations: {pending} submitted annotation(s) not in a dataset version yet (threshold {threshold}); "
        + (f"emitted {ANNOTATIONS_READY}" if crossing else "nothing to emit")
    )
    return {"pending": pending, "emitted": crossing is not None}


def _decision_markdown(d: dict[str, Any]) -> str:
    """The decision as a Prefect artifact: the verdict in words (with the interval), then the metrics."""
    candidate, champion = d.get("candidate_metrics") or {}, d.get("champion_metrics") or {}
    rows = "\n".join(
        f"| {k} | {_fmt(candidate.get(k))} | {_fmt(champion.get(k))} |" for k in ("count_mae", "segm_AP", "segm_AP50")
    )
    return (
        f"# Model version {d['candidate']}: **{d['decision']}**\n\n{d['reason']}\n\n"
        f"Dataset {d['dataset_version']}, test split. Champion before: {d.get('champion') or 'none'}.\n\n"
        f"| metric | candidate | champion |\n|---|---|---|\n{rows}\n"
    )


def _prelabel_quality_markdown(version: str, q: dict[str, Any]) -> str:
    return (
        f"# Pre-label quality, dataset {version}\n\n"
        f"{q['photos']} annotated photo(s) had a pre-label; masks matched {q['match']}.\n\n"
        "| | share | masks |\n|---|---|---|\n"
        f"| recall (human masks the pre-label found) | {_fmt(q['recall'])} | {q['matched']} of {q['human_masks']} |\n"
        f"| precision (pre-label masks the annotator kept) | {_fmt(q['precision'])} "
        f"| {q['matched']} of {q['prelabel_masks']} |\n"
    )


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
