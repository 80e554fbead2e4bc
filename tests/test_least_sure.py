"""Least-sure-first annotation in the real Label Studio: the saved tab, its order, the project's model version."""

from __future__ import annotations

from pathlib import Path

from fixtures_labelstudio import save_photo
from fixtures_trainer import synthetic_photo

from annotator.labelstudio.client import client
from annotator.labelstudio.project import (
    LEAST_SURE_TAB,
    create_task,
    ensure_project,
    set_model_version,
)
from bookcounter.settings import Settings


def tabs(settings: Settings, project_id: int) -> list:
    return [v for v in client(settings).views.list(project=project_id) if (v.data or {}).get("title") == LEAST_SURE_TAB]


def test_tab_exists_once_and_lists_unannotated_tasks_least_sure_first(ls_settings: Settings) -> None:
    pid = ensure_project(ls_settings)
    for _ in range(2):  # re-runs find the tab
        assert ensure_project(ls_settings) == pid
    (tab,) = tabs(ls_settings, pid)
    assert tab.data["ordering"] == ["tasks:predictions_score"]

    ids = {}
    for name, score in (("sure", 0.9), ("unsure", 0.2), ("middle", 0.5)):
        data = {"image": f"/data/upload/{name}.png", "sha256": name * 4, "file_name": f"{name}.png"}
        ids[name] = create_task(
            ls_settings, pid, data, [{"model_version": "maskrcnn-v7", "score": score, "result": []}]
        )
    set_model_version(ls_settings, pid, "maskrcnn-v7")
    ls = client(ls_settings)
    listed = [t.id for t in ls.tasks.list(project=pid, view=tab.id, fields="task_only")]
    assert listed == [ids["unsure"], ids["middle"], ids["sure"]]
    assert ls.projects.get(id=pid).model_version == "maskrcnn-v7"

    ls.annotations.create(id=ids["unsure"], result=[], lead_time=1.0)  # annotated: no longer "next"
    assert [t.id for t in ls.tasks.list(project=pid, view=tab.id, fields="task_only")] == [ids["middle"], ids["sure"]]


def test_prelabel_scores_by_the_champions_count_confidence(ls_settings: Settings, tiny_model_dir: Path) -> None:
    from annotator.prelabel import Masker, prelabel
    from bookcounter.uncertainty import confidence, uncertainty
    from trainer.predictor import Predictor

    predictor = Predictor(tiny_model_dir, device="cpu", model_version="3")
    photo, _ = synthetic_photo(5, 4)
    save_photo(photo, ls_settings.inbox_dir / "p.png")
    prelabel(ls_settings, masker=Masker(None, predictor))
    pid = ensure_project(ls_settings)
    (task,) = [t.dict() for t in client(ls_settings).tasks.list(project=pid, fields="all", resolve_uri=False)]
    (pred,) = task["predictions"]
    assert pred["model_version"] == "maskrcnn-v3" and pred["score"] == confidence(uncertainty(predictor, photo))
    assert client(ls_settings).projects.get(id=pid).model_version == "maskrcnn-v3"
    assert len(tabs(ls_settings, pid)) == 1
