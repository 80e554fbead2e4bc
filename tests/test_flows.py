"""The Prefect flows, run for real (ephemeral Prefect server) against the real Label Studio."""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_labelstudio import BoxesFromLayout, save_photo, shelf_photo
from fixtures_trainer import make_synthetic_store, synthetic_photo, tiny_train_config

from annotator.labelstudio.client import client
from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.project import ensure_project, task_shas
from annotator.prelabel import Masker, prelabel
from bookcounter import masks as rle
from bookcounter.dataset_store import DatasetStore, NewImage
from bookcounter.locks import file_lock
from bookcounter.settings import Settings
from flows.loop import collect_flow, retrain_flow
from flows.prelabel import prelabel_flow
from trainer import promote

pytestmark = pytest.mark.slow  # every flow run starts a temporary Prefect server; the retrains train


def _recipe(epochs: int = 3) -> dict:
    cfg = tiny_train_config("unused", epochs=epochs).to_dict()
    cfg.pop("dataset")
    return cfg


def _drop_photos(settings: Settings, seeds: list[int]) -> list[Path]:
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    return [save_photo(shelf_photo(seed=s), settings.inbox_dir / f"shelf-{s}.jpg") for s in seeds]


def _task_ids(settings: Settings) -> list[int]:
    return sorted(task_shas(settings, ensure_project(settings)).values())


def _annotate(settings: Settings, task_ids: list[int]) -> int:
    """A person paints one book (a rectangle) on each of these tasks; returns how many."""
    ls = client(settings)
    for task_id in task_ids:
        mask = np.zeros((120, 160), bool)
        mask[20:100, 30:50] = True
        ls.annotations.create(id=task_id, result=[brush_result(mask)], lead_time=12.0)
    return len(task_ids)


def test_prelabel_flow_twice_gives_one_task_per_photo(ls_settings: Settings) -> None:
    photos = _drop_photos(ls_settings, [1, 2])
    first = prelabel_flow()
    assert first == {"imported": 2, "already_there": 0, "rejected": 0}
    for p in photos:  # the same photos arrive again
        save_photo(shelf_photo(seed=int(p.stem.split("-")[1])), p)
    second = prelabel_flow()
    assert second == {"imported": 0, "already_there": 2, "rejected": 0}
    assert len(task_shas(ls_settings, ensure_project(ls_settings))) == 2
    assert prelabel_flow()["imported"] == 0  # empty inbox: nothing to do


def test_collect_flow_makes_one_version_per_change(ls_settings: Settings) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _drop_photos(ls_settings, [3, 4])
    prelabel(ls_settings, masker=Masker(None, BoxesFromLayout()))  # pre-labels whose quality collect measures
    assert collect_flow() is None  # predictions alone are no dataset
    assert _annotate(ls_settings, _task_ids(ls_settings)) == 2
    assert collect_flow() == "v0001"
    assert collect_flow() is None  # nothing new since
    assert [v.name for v in DatasetStore.from_settings(ls_settings).versions()] == ["v0001"]
    q = DatasetStore.from_settings(ls_settings).get("v0001").manifest()["report"]["prelabel_quality"]
    assert q["photos"] == 2 and q["human_masks"] == 2
    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["prelabel-quality"])), limit=1
        )
    assert "dataset v0001" in artifact.data and f"{q['matched']} of {q['human_masks']}" in artifact.data


def test_retrain_flow_promotes_a_good_model_rejects_a_bad_one_and_skips_a_trained_version(settings: Settings) -> None:
    from trainer import registry
    from trainer.evaluate import evaluate_model

    # the tiny model's photos and recipe: a model known to count well (test MAE 0.42 vs 1.17)
    store = make_synthetic_store(settings.datasets_dir, {"train": 10, "val": 6, "test": 12})
    version = store.version
    good = retrain_flow(recipe=_recipe(epochs=16))
    assert good is not None and good["decision"] == "promoted", good["reason"]
    assert good["verdict"] == "better" and good["comparison"]["against"] == "baseline" and good["comparison"]["hi"] < 0
    assert promote.history() == [good]  # recorded once, as returned
    assert (good["dataset_version"], good["split"], good["champion"]) == ("v0001", "test", None)
    assert registry.champion().version == good["candidate"]
    # the numbers on record are measured: the baseline from the photos' book counts, the
    # candidate's count MAE again when it is evaluated once more on the same split
    books = {split: _books_per_photo(version.coco(split)) for split in ("train", "test")}
    median = statistics.median(books["train"])
    assert good["baseline_count_mae"] == pytest.approx(statistics.mean(abs(n - median) for n in books["test"]))
    again = evaluate_model(registry.model_dir(good["candidate"]), version, "test", progress=False)["metrics"]
    assert again["count_mae"] == pytest.approx(good["candidate_metrics"]["count_mae"])
    assert retrain_flow(recipe=_recipe()) is None  # v0001 already has a candidate
    assert promote.history() == [good]

    # a new version, and a model known to count badly (one epoch from scratch): rejected
    photo, masks = synthetic_photo(seed=7, n_books=3)
    added = store.store.commit(
        [NewImage(_png(photo), "extra.png", [rle.encode(m) for m in masks], split="train")], {"name": "test"}
    )
    bad = retrain_flow(dataset=added.version.name, recipe=_recipe(epochs=1))
    assert bad["decision"] == "rejected" and bad["verdict"] in ("worse", "undecided"), bad["reason"]
    assert bad["champion"] == good["candidate"] and registry.champion().version == good["candidate"]


def _png(photo) -> bytes:
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    return buf.getvalue()


def _books_per_photo(coco: dict) -> list[int]:
    return [sum(a["image_id"] == im["id"] for a in coco["annotations"]) for im in coco["images"]]


def test_a_second_retrain_while_one_runs_exits_without_training(settings: Settings) -> None:
    make_synthetic_store(settings.datasets_dir, {"train": 4, "val": 2, "test": 2})
    with file_lock(settings.run_dir / "retrain.lock") as mine:
        assert mine
        assert retrain_flow(recipe=_recipe(epochs=1)) is None
    assert promote.history() == []


class _Captured(Exception):
    """Raised by the stand-in for the training itself: carries the config it was given."""


@pytest.mark.parametrize(("cuda", "budget_images"), [(False, None), (True, None), (True, 3)])
def test_a_prefect_retrain_and_bookcounter_train_build_the_same_config(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, cuda: bool, budget_images: int | None
) -> None:
    """Both paths up to the training call, as they run: only the training itself is replaced
    (and, for the CUDA case, torch's answer to "is there a GPU?")."""
    import torch
    from typer.testing import CliRunner

    import trainer.train
    from flows.main import app

    make_synthetic_store(settings.datasets_dir, {"train": 2, "val": 1, "test": 1})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)

    def capture(cfg, *args, **kwargs):
        raise _Captured(cfg)

    monkeypatch.setattr(trainer.train, "train_and_save", capture)
    with pytest.raises(_Captured) as flow:
        retrain_flow(dataset="v0001", budget_images=budget_images)
    args = ["train", "--dataset", "v0001", "--init", "champion", "--no-register"]
    cli = CliRunner().invoke(app, args + (["--budget-images", str(budget_images)] if budget_images else []))
    assert isinstance(cli.exception, _Captured), cli.output
    flow_cfg, cli_cfg = flow.value.args[0], cli.exception.args[0]
    assert flow_cfg.device == ("cuda" if cuda else "cpu")
    assert flow_cfg.to_dict() == cli_cfg.to_dict()
    # sized in work: no champion yet, so a cold start, cut to what the budget pays for (2 photos)
    assert flow_cfg.init == "imagenet"
    recipe_epochs = trainer.train.default_train_config("v0001", "cuda" if cuda else "cpu").epochs
    assert flow_cfg.epochs == (budget_images // 2 if budget_images else recipe_epochs)


def test_importing_the_flows_leaves_the_environment_alone(tmp_path: Path) -> None:
    """Only entry points configure Prefect (``configure_prefect``); importing ``flows`` does not."""
    code = (
        "import os, prefect, mlflow, torch, sklearn\n"  # third-party imports may set their own
        "before = dict(os.environ)\n"
        "import flows, flows.loop, flows.prelabel, flows.deployments, flows.demo\n"
        "print(sorted(k for k in before.keys() | os.environ.keys() if before.get(k) != os.environ.get(k)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["BOOKCOUNTER_STATE_DIR"] = str(tmp_path / "var")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"
