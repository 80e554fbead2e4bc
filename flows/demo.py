"""``make demo``: the whole loop, for real, on the sample photos (open-shelves).

1. start Label Studio and the ML backend; import the sample as the first dataset version with
   only part of its train photos, as if annotated before;
2. train the first model (a budget in images seen) and run the promotion rule on it;
3. drop the other train photos into the inbox; ``prelabel`` imports them into Label Studio;
4. a replay annotator submits their reference masks through Label Studio's API;
5. ``loop``: collect -> new version -> retrain (the retrain policy within the same budget: a
   cold start, or a fine-tune of the champion when a cold start costs more) -> evaluate against
   the champion on the same photos -> decision, with its interval;
6. start the UIs and the counting server, turn the ML backend's retraining trigger back on;
   print a summary.

Every step is safe to re-run after an interruption: imports are idempotent, a dataset version
that already has a candidate is not trained again, and annotated tasks are not annotated twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from annotator.coco_import import read_coco
from annotator.labelstudio.project import ensure_project, task_shas
from annotator.labelstudio.server import start_server
from bookcounter.dataset_store import SPLITS, DatasetStore
from bookcounter.errors import UserError
from bookcounter.settings import Settings
from flows import services
from flows.loop import loop_flow, retrain_flow
from flows.prelabel import prelabel_flow
from flows.replay import reference_masks, replay

console = Console()
SOURCE = {
    "name": "open-shelves",
    "licence": "CC BY 4.0",
    "credit": '"Open Shelves" by capjamesg, Roboflow Universe (https://creativecommons.org/licenses/by/4.0/)',
}


def run_demo(settings: Settings, first_train_photos: int, budget_images: int) -> None:
    from trainer import registry

    started = time.monotonic()
    sample = settings.sample_dir
    files = {split: sample / f"{split}.json" for split in SPLITS}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise UserError(f"sample not found: {', '.join(missing)} (set BOOKCOUNTER_SAMPLE_DIR)")

    _step(1, "start Label Studio and the ML backend; import the first dataset version")
    console.print(start_server(settings).line())
    from serving.ml_backend.server import connect

    # The demo drives the loop itself: the backend's every-N-annotations trigger is off while
    # it runs (else the replay's annotations start a second loop in the background), and back
    # on when the demo ends (step 6).
    services.stop(settings, ["ml-backend"])
    services.start(settings.model_copy(update={"retrain_every_n_annotations": 0}), ["ml-backend"])
    connect(settings)
    train_items, _ = read_coco(files["train"], sample)
    train_items.sort(key=lambda item: item.file_name)
    first, rest = train_items[:first_train_photos], train_items[first_train_photos:]
    items = first + read_coco(files["val"], sample)[0] + read_coco(files["test"], sample)[0]
    result = DatasetStore.from_settings(settings).commit(
        items, source={**SOURCE, "files": [str(f) for f in files.values()]}
    )
    first_version = result.version.name
    console.print(
        f"{'created' if result.created else 'already there:'} {first_version} "
        f"({len(first)} of {len(train_items)} train photos, all val and test)"
    )

    _step(2, f"train the first model (budget {budget_images} images seen) and run the promotion rule")
    champion_before = registry.champion()
    retrain_flow(dataset=first_version, budget_images=budget_images)
    champion_first = registry.champion()

    _step(3, f"drop the other {len(rest)} train photos into the inbox; prelabel")
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    known = task_shas(settings, ensure_project(settings))
    for item in rest:
        if item.sha256 not in known:
            (settings.inbox_dir / Path(item.file_name).name).write_bytes(item.data)
    prelabel_flow()

    _step(4, "the replay annotator submits the reference masks through Label Studio")
    annotated = replay(settings, reference_masks(files["train"], sample))
    console.print(f"{len(annotated)} task(s) annotated")

    _step(5, "loop: collect -> new version -> retrain -> promote or reject")
    loop_flow(budget_images=budget_images)

    _step(6, "start the counting server and the UIs")
    urls = _start_services(settings)
    _summary(settings, champion_before, champion_first, urls, time.monotonic() - started)


def _step(n: int, what: str) -> None:
    console.rule(f"[bold]demo step {n}/6: {what}")


def _start_services(settings: Settings) -> dict[str, str]:
    services.stop(settings, ["ml-backend"])  # it ran with the retraining trigger off (step 1)
    urls = {
        "web page": "serving",
        "Label Studio": "labelstudio",
        "Prefect UI": "prefect-server",
        "MLflow UI": "mlflow-ui",
    }
    by_name = {service.name: service.url for service, _ in services.start(settings, [*urls.values(), "ml-backend"])}
    return {title: by_name[name] for title, name in urls.items()}


def _summary(settings: Settings, before, first, urls: dict[str, str], seconds: float) -> None:
    from trainer import promote

    store = DatasetStore.from_settings(settings)
    console.rule("[bold]summary")
    versions = Table("dataset version", "parent", "train", "val", "test")
    for v in store.versions():
        m = v.manifest()
        versions.add_row(
            v.name,
            m["parent"] or "-",
            *(f"{m['counts'][s]['images']} photos / {m['counts'][s]['books']} books" for s in SPLITS),
        )
    console.print(versions)
    decisions = Table(
        "model", "dataset", "decision", "count MAE (test)", "mask AP (test)", "champion then", "its MAE", "its mask AP"
    )
    history = promote.history()
    for d in history:
        cm, ch = d.get("candidate_metrics") or {}, d.get("champion_metrics") or {}
        decisions.add_row(
            d["candidate"],
            d["dataset_version"],
            d["decision"],
            _num(cm.get("count_mae")),
            _num(cm.get("segm_AP")),
            d.get("champion") or "none",
            _num(ch.get("count_mae")) if ch else f"{_num(d.get('baseline_count_mae'))} (baseline)",
            _num(ch.get("segm_AP")),
        )
    console.print(decisions)
    for d in history:
        console.print(f"model {d['candidate']} {d['decision']}: {d['reason']}")
    from trainer import registry

    now = registry.champion()
    console.print(
        f"champion before the demo: {before.version if before else 'none'}; "
        f"after the first training: {first.version if first else 'none'}; now: {now.version if now else 'none'}"
    )
    for name, url in urls.items():
        console.print(f"{name:>13}: {url}")
    console.print(f"Label Studio {settings.ls_login_hint}")
    console.print(f"decision log: {settings.decision_log}\ndemo took {seconds / 60:.1f} min")
    console.print("what runs now: bookcounter status\nstop it all:   bookcounter stop")
    (settings.state_dir / "demo-summary.json").write_text(json.dumps({"seconds": seconds, "urls": urls}, indent=2))


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
