"""The count review against the real Label Studio: count fields, the review tab, likely misses."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_labelstudio import BoxesFromLayout, save_photo, shelf_photo
from typer.testing import CliRunner

from annotator import cli as annotator_cli
from annotator.collect import collect
from annotator.count_review import REVIEW_TAB, review, review_tab_data
from annotator.labelstudio.client import client
from annotator.labelstudio.mask_codec import brush_result, result_mask
from annotator.labelstudio.project import ensure_project
from annotator.prelabel import Masker, prelabel
from bookcounter.settings import Settings

pytestmark = pytest.mark.labelstudio

W, H = 160, 120


def extra_masks(n: int) -> list[dict]:
    """``n`` small squares on the wall above the books (where the layout detector finds nothing)."""
    out = []
    for k in range(n):
        m = np.zeros((H, W), bool)
        m[2:5, 3 + 8 * k : 6 + 8 * k] = True
        out.append(brush_result(m))
    return out


def prelabelled(settings: Settings, n: int, seed: int) -> tuple[dict[str, dict], int]:
    for i in range(n):
        save_photo(shelf_photo(W, H, seed=seed + i), settings.inbox_dir / f"s{i}.jpg", quality=95)
    prelabel(settings, masker=Masker(None, BoxesFromLayout()))
    project = ensure_project(settings)
    listed = client(settings).tasks.list(project=project, fields="all", resolve_uri=False)
    tasks = {t["data"]["file_name"]: t for t in (x.dict() for x in listed)}
    return tasks, project


def annotations_of(settings: Settings, task_ids) -> dict[int, list[tuple]]:
    ls = client(settings)
    return {t: [(a.id, a.updated_at, repr(a.result)) for a in ls.annotations.list(id=t)] for t in task_ids}


def review_views(settings: Settings, project: int) -> list:
    return [v for v in client(settings).views.list(project=project) if (v.data or {}).get("title") == REVIEW_TAB]


def test_counts_are_task_data_the_tab_lists_gaps_largest_first_and_annotations_stay(ls_settings: Settings) -> None:
    tasks, project = prelabelled(ls_settings, 5, seed=40)
    ls = client(ls_settings)
    predicted = {}
    for name, t in tasks.items():  # the champion's count, set at import
        (pred,) = t["predictions"]
        assert (
            t["data"]["predicted_count"] == len(pred["result"]) >= 2 and t["data"]["predicted_count_model"] == "layout"
        )
        predicted[name] = t["data"]["predicted_count"]
    gaps = {"s0.jpg": 10, "s1.jpg": 9, "s2.jpg": -2, "s3.jpg": 1, "s4.jpg": 0}  # 10 after 9 only as numbers
    for name, gap in gaps.items():
        shown = tasks[name]["predictions"][0]["result"]
        result = shown[: len(shown) + gap] if gap < 0 else shown + extra_masks(gap)
        ls.annotations.create(id=tasks[name]["id"], result=result)
    before = annotations_of(ls_settings, [t["id"] for t in tasks.values()])

    assert collect(ls_settings) is not None

    data = {t.data["file_name"]: t.data for t in ls.tasks.list(project=project, fields="task_only", resolve_uri=False)}
    for name, gap in gaps.items():
        assert data[name]["annotated_count"] == predicted[name] + gap
        assert (data[name]["count_gap"], data[name]["count_gap_abs"]) == (gap, abs(gap))
    assert annotations_of(ls_settings, [t["id"] for t in tasks.values()]) == before

    (view,) = review_views(ls_settings, project)
    assert {k: view.data[k] for k in review_tab_data()} == review_tab_data()
    assert view.data["columnsDisplayType"]["tasks:data.count_gap"] == "Number"
    listed = [
        t.data["file_name"] for t in ls.tasks.list(project=project, view=view.id, fields="task_only", resolve_uri=False)
    ]
    assert listed == ["s0.jpg", "s1.jpg", "s2.jpg"]  # |gap| >= 2, largest first; a string sort puts 9 first

    # a new champion: every task is counted again by it, the gaps follow, annotations stay
    newer = BoxesFromLayout(max_boxes=2)
    newer.model_version = "layout-2"
    assert collect(ls_settings, champion=lambda: newer) is None  # nothing new to store, counts still written
    data = {t.data["file_name"]: t.data for t in ls.tasks.list(project=project, fields="task_only", resolve_uri=False)}
    for name, gap in gaps.items():
        assert (data[name]["predicted_count"], data[name]["predicted_count_model"]) == (2, "layout-2")
        assert data[name]["count_gap"] == predicted[name] + gap - 2
    assert annotations_of(ls_settings, [t["id"] for t in tasks.values()]) == before
    # a corrected annotation: its annotated count follows
    ls.annotations.create(id=tasks["s4.jpg"]["id"], result=tasks["s4.jpg"]["predictions"][0]["result"] + extra_masks(3))
    assert collect(ls_settings) is not None
    s4 = ls.tasks.get(id=str(tasks["s4.jpg"]["id"])).data
    assert (s4["annotated_count"], s4["count_gap"]) == (predicted["s4.jpg"] + 3, predicted["s4.jpg"] + 3 - 2)
    assert len(review_views(ls_settings, project)) == 1  # created once over four runs


def test_review_flags_a_book_the_annotator_left_out(ls_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks, project = prelabelled(ls_settings, 2, seed=60)
    ls = client(ls_settings)
    planted, intact = tasks["s0.jpg"], tasks["s1.jpg"]
    shown = planted["predictions"][0]["result"]
    ls.annotations.create(id=planted["id"], result=shown[:1] + shown[2:])  # book 1 left out: gap -1
    ls.annotations.create(id=intact["id"], result=intact["predictions"][0]["result"])
    champion = BoxesFromLayout()
    ys, xs = np.nonzero(result_mask(shown[1], H, W))

    (row,) = review(ls_settings, champion, min_gap=2)

    assert (row.task_id, row.gap) == (planted["id"], -1)
    (miss,) = row.misses
    assert np.allclose(miss[1], (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)) and miss[0] == shown[1]["score"]
    assert row.url == f"{ls_settings.ls_url}/projects/{project}/data?task={planted['id']}"

    monkeypatch.setattr(annotator_cli.console, "width", 250)
    app = annotator_cli.typer.Typer()
    app.command()(annotator_cli.review_command(champion=lambda: champion))
    out = CliRunner().invoke(app, ["--min-gap", "2"])
    assert out.exit_code == 0, out.output
    assert row.url in out.output and "-1" in out.output
    assert f"x {xs.min()}-{xs.max() + 1}, y {ys.min()}-{ys.max() + 1}" in out.output
    assert f"data?task={intact['id']}" not in out.output
