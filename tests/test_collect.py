"""Collecting human annotations from the real Label Studio into dataset versions."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_labelstudio import BoxesFromLayout, save_photo, shelf_photo

from annotator.collect import collect
from annotator.labelstudio.client import client
from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.project import ensure_project
from annotator.prelabel import Masker, prelabel
from bookcounter import masks
from bookcounter.dataset_store import DatasetStore
from bookcounter.images import read_image
from bookcounter.settings import Settings

pytestmark = pytest.mark.labelstudio

W, H = 160, 120


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def stored_masks(version, sha_of_source: str) -> tuple[dict, list[np.ndarray]]:
    coco = version.coco()
    (image,) = [im for im in coco["images"] if im["provenance"].get("inbox_sha256") == sha_of_source]
    return image, [masks.decode(a["segmentation"]) for a in coco["annotations"] if a["image_id"] == image["id"]]


def test_human_annotations_become_a_new_version_mask_for_mask(ls_settings: Settings) -> None:
    inbox = ls_settings.inbox_dir
    save_photo(shelf_photo(W, H, seed=1), inbox / "plain.jpg", quality=95)
    save_photo(shelf_photo(W, H, seed=2), inbox / "phone.jpg", exif_orientation=6, quality=95)  # stored 120x160
    save_photo(shelf_photo(W, H, seed=3), inbox / "skipped.jpg", quality=95)
    upright_phone = read_image(inbox / "phone.jpg")
    # champion-style predictions (its own mask head): predictions alone must not make a version
    report = prelabel(ls_settings, masker=Masker(None, BoxesFromLayout()))
    assert len(report.imported) == 3 and all(n > 0 for n in report.predictions.values())
    store = DatasetStore(ls_settings.datasets_dir)
    assert collect(ls_settings) is None and store.versions() == []

    ls = client(ls_settings)
    tasks = {t.data["file_name"]: t for t in ls.tasks.list(project=ensure_project(ls_settings))}
    brush = disc(60, 50, 25) & ~disc(70, 50, 8)  # a ring: holes must survive
    polygon_pct = [[62.5, 10.0], [90.0, 12.5], [85.0, 90.0], [65.0, 80.0]]
    polygon = masks.decode(masks.from_polygons([[c for x, y in polygon_pct for c in (x * W / 100, y * H / 100)]], H, W))
    phone_mask = disc(120, 40, 15)
    polygon_result = {
        "from_name": "polygon",
        "to_name": "image",
        "type": "polygonlabels",
        "original_width": W,
        "original_height": H,
        "value": {"points": polygon_pct, "polygonlabels": ["book"], "closed": True},
    }
    plain = ls.annotations.create(
        id=tasks["plain.jpg"].id, result=[brush_result(brush), polygon_result], lead_time=12.5
    )
    ls.annotations.create(
        id=tasks["phone.jpg"].id,
        result=[brush_result(phone_mask), brush_result(np.zeros((H, W), bool))],  # + an empty mask
        lead_time=8.0,
    )
    ls.annotations.create(id=tasks["skipped.jpg"].id, result=[brush_result(disc(30, 30, 9))], was_cancelled=True)

    result = collect(ls_settings)

    assert result is not None and result.created and result.version.name == "v0001"
    assert result.report["empty_masks_skipped"] == 1
    manifest = result.version.manifest()
    assert manifest["source"]["name"] == "label-studio"
    added = {a["label_studio_task"]: a for a in manifest["added"]}
    assert set(added) == {tasks["plain.jpg"].id, tasks["phone.jpg"].id}  # not the skipped task
    assert added[tasks["plain.jpg"].id]["label_studio_annotation"] == plain.id

    image, got = stored_masks(result.version, tasks["plain.jpg"].data["sha256"])
    assert len(got) == 2
    assert max(iou(m, brush) for m in got) >= 0.99 and max(iou(m, polygon) for m in got) >= 0.99

    image, got = stored_masks(result.version, tasks["phone.jpg"].data["sha256"])
    assert (image["width"], image["height"]) == (W, H) and len(got) == 1 and iou(got[0], phone_mask) >= 0.99
    stored_pixels = np.asarray(read_image(result.version.image_path(image)), float)
    assert np.abs(stored_pixels - np.asarray(upright_phone, float)).mean() < 4, "stored photo is not the upright view"

    # nothing new: no version; a later correction of a task: a version with only the latest masks
    assert collect(ls_settings) is None and len(store.versions()) == 1
    corrected = disc(40, 60, 12)
    ls.annotations.create(id=tasks["plain.jpg"].id, result=[brush_result(corrected)])
    second = collect(ls_settings)
    assert second is not None and second.version.name == "v0002"
    _, got = stored_masks(second.version, tasks["plain.jpg"].data["sha256"])
    assert len(got) == 1 and iou(got[0], corrected) >= 0.99
    assert second.version.manifest()["parent"] == "v0001"


def test_prelabel_recall_and_precision_are_recorded_per_version(ls_settings: Settings) -> None:
    for i in range(3):
        save_photo(shelf_photo(W, H, seed=50 + i), ls_settings.inbox_dir / f"q{i}.jpg", quality=95)
    prelabel(ls_settings, masker=Masker(None, BoxesFromLayout()))
    ls = client(ls_settings)
    tasks = {
        t["data"]["file_name"]: t
        for t in (x.dict() for x in ls.tasks.list(project=ensure_project(ls_settings), fields="all"))
    }
    shown = {name: t["predictions"][0]["result"] for name, t in tasks.items()}
    n = {name: len(r) for name, r in shown.items()}
    assert min(n.values()) >= 2
    ls.annotations.create(id=tasks["q0.jpg"]["id"], result=shown["q0.jpg"])  # the pre-label, unchanged
    ls.annotations.create(id=tasks["q1.jpg"]["id"], result=shown["q1.jpg"][1:])  # one pre-label mask deleted
    added = brush_result(disc(80, 8, 5))  # a book the pre-label missed, and one mask deleted
    ls.annotations.create(id=tasks["q2.jpg"]["id"], result=[added, *shown["q2.jpg"][:-1]])

    result = collect(ls_settings)

    q = result.version.manifest()["report"]["prelabel_quality"]
    per = {name: q["per_task"][str(t["id"])] for name, t in tasks.items()}
    assert (per["q0.jpg"]["recall"], per["q0.jpg"]["precision"]) == (1.0, 1.0)
    assert per["q1.jpg"]["recall"] == 1.0 and per["q1.jpg"]["precision"] == (n["q1.jpg"] - 1) / n["q1.jpg"] < 1
    assert (
        per["q2.jpg"]["recall"] == (n["q2.jpg"] - 1) / n["q2.jpg"]
        and per["q2.jpg"]["precision"] == per["q2.jpg"]["recall"]
    )
    assert (q["photos"], q["matched"], q["prelabel_masks"]) == (
        3,
        n["q0.jpg"] + n["q1.jpg"] - 1 + n["q2.jpg"] - 1,
        sum(n.values()),
    )
    assert q["recall"] == q["matched"] / (n["q0.jpg"] + n["q1.jpg"] - 1 + n["q2.jpg"]) and q["precision"] < 1
