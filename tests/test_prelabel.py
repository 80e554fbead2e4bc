"""Pre-labelling into the real Label Studio: SAM predictions, idempotency, bad input, faults."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from bad_images import BOMB_MESSAGE, TINY_MESSAGE, bomb_png, tiny_jpeg
from fixtures_labelstudio import BoxesFromLayout, save_photo, shelf_photo
from PIL import Image

from annotator.labelstudio.client import client
from annotator.labelstudio.errors import LabelStudioUnavailable
from annotator.labelstudio.mask_codec import result_mask
from annotator.labelstudio.project import ensure_project, fetch_photo
from annotator.labelstudio.server import server_status, start_server, stop_server
from annotator.prelabel import Masker, prelabel
from bookcounter.errors import UserError
from bookcounter.images import read_image, sha256_file
from bookcounter.settings import Settings, get_settings
from bookcounter.testing import free_port

pytestmark = pytest.mark.labelstudio


@pytest.fixture(scope="module")
def segmenter():
    from annotator.sam import load_segmenter

    return load_segmenter(get_settings(), "vit_t", random_init=True)


def tasks_of(settings: Settings) -> list[dict]:
    ls = client(settings)
    pid = ensure_project(settings)
    return [t.dict() for t in ls.tasks.list(project=pid, fields="all", resolve_uri=False)]


def test_photos_become_tasks_with_sam_predictions_once(ls_settings: Settings, segmenter) -> None:
    inbox = ls_settings.inbox_dir
    photos = [save_photo(shelf_photo(160, 120, seed=i), inbox / f"shelf{i}.jpg", quality=92) for i in range(2)]
    shas = {p.name: sha256_file(p) for p in photos}
    masker = Masker(segmenter, BoxesFromLayout(max_boxes=4))

    report = prelabel(ls_settings, masker=masker)

    assert sorted(report.imported) == sorted(shas) and not report.rejected
    assert report.model_version == "sam-vit_t+maskrcnn-vlayout"
    tasks = tasks_of(ls_settings)
    assert sorted(t["data"]["sha256"] for t in tasks) == sorted(shas.values())
    for t in tasks:
        (pred,) = t["predictions"]
        assert pred["model_version"] == "sam-vit_t+maskrcnn-vlayout"
        assert len(pred["result"]) == report.predictions[t["data"]["file_name"]] > 0
        for r in pred["result"]:
            mask = result_mask(r, 120, 160)
            assert (r["original_width"], r["original_height"]) == (160, 120) and mask.any()
    assert sorted(p.name for p in (inbox / "done").iterdir()) == sorted(shas)

    # the same photos again (a re-run, or dropped twice): no new task, photos still filed
    for p in photos:
        (inbox / "done" / p.name).rename(p)
    again = prelabel(ls_settings, masker=masker)
    assert not again.imported and sorted(again.already_there) == sorted(shas)
    assert len(tasks_of(ls_settings)) == 2
    assert not any(inbox.glob("*.jpg"))


def test_before_any_model_the_sam_point_grid_makes_the_predictions(
    ls_settings: Settings, segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Path (b): no champion yet, so SAM's point grid proposes the masks (Masker -> Segmenter.generate).
    The random-init test model predicts low IoUs, so its two quality thresholds are relaxed; the
    grid, the book-shape filters, NMS and the overlap removal run as they do for real."""
    from annotator.sam.auto_masks import BookMaskParams, generate_book_masks

    relaxed = BookMaskParams(pred_iou_thresh=-10, stability_score_thresh=-1)
    monkeypatch.setattr(segmenter, "generate", lambda emb: generate_book_masks(segmenter, emb, relaxed))
    inbox = ls_settings.inbox_dir
    photos = [save_photo(shelf_photo(160, 120, seed=60 + i), inbox / f"grid{i}.jpg", quality=92) for i in range(2)]

    report = prelabel(ls_settings, masker=Masker(segmenter, None))

    assert sorted(report.imported) == sorted(p.name for p in photos) and report.model_version == "sam-vit_t"
    tasks = tasks_of(ls_settings)
    assert len(tasks) == 2
    for t in tasks:
        assert "predicted_count" not in t["data"]  # no champion, no count
        (pred,) = t["predictions"]
        assert pred["model_version"] == "sam-vit_t"
        assert len(pred["result"]) == report.predictions[t["data"]["file_name"]] > 0
        masks = [result_mask(r, 120, 160) for r in pred["result"]]
        assert all(
            m.any() and (r["original_width"], r["original_height"]) == (160, 120) for m, r in zip(masks, pred["result"])
        )
        assert all(m.sum() <= relaxed.max_area_frac * 160 * 120 * 1.1 for m in masks)  # the shape filters ran
        assert pred["score"] == pytest.approx(np.mean([r["score"] for r in pred["result"]]), abs=1e-6)


def test_a_6000px_photo_is_segmented_at_full_size(ls_settings: Settings, segmenter) -> None:
    save_photo(shelf_photo(6000, 1500, seed=7), ls_settings.inbox_dir / "wide.jpg", quality=85)
    report = prelabel(ls_settings, masker=Masker(segmenter, BoxesFromLayout(max_boxes=1)))
    assert list(report.imported) == ["wide.jpg"]
    (task,) = tasks_of(ls_settings)
    results = task["predictions"][0]["result"]
    assert results and all((r["original_width"], r["original_height"]) == (6000, 1500) for r in results)
    # one mask per box prompt, at the photo's own size (SAM saw it at 1024 px)
    assert len(results) == report.predictions["wide.jpg"] == 1
    assert all(result_mask(r, 1500, 6000).any() for r in results)


def test_bad_photos_are_rejected_or_normalised(ls_settings: Settings) -> None:
    inbox = ls_settings.inbox_dir
    shelf = shelf_photo(160, 120, seed=3)
    good = io.BytesIO()
    shelf.save(good, "JPEG")
    (inbox / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 50)
    (inbox / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (inbox / "notes.txt").write_text("not a photo")
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "bomb.png").write_bytes(bomb_png())
    (inbox / "tiny.jpg").write_bytes(tiny_jpeg())
    rgba = shelf.convert("RGBA")
    rgba.putalpha(128)
    save_photo(rgba, inbox / "alpha.png")
    gray16 = Image.fromarray(np.asarray(shelf.convert("L"), np.uint16) * 257)
    assert gray16.mode.startswith("I;16")
    save_photo(gray16, inbox / "deep.png")
    save_photo(shelf.convert("L"), inbox / "gray.jpg")
    save_photo(shelf, inbox / "phone.jpg", exif_orientation=6, quality=95)
    expected_upright = {n: read_image(inbox / n) for n in ("alpha.png", "deep.png", "gray.jpg", "phone.jpg")}

    report = prelabel(ls_settings, masker=Masker(None, None))

    assert sorted(report.rejected) == ["bomb.png", "corrupt.jpg", "empty.jpg", "notes.txt", "tiny.jpg", "truncated.jpg"]
    for name, reason in report.rejected.items():
        assert (inbox / "rejected" / name).is_file()
        assert (inbox / "rejected" / f"{name}.reason.txt").read_text().strip() == reason
    assert "truncated" in report.rejected["truncated.jpg"] and "not an image" in report.rejected["notes.txt"]
    assert BOMB_MESSAGE in report.rejected["bomb.png"] and TINY_MESSAGE in report.rejected["tiny.jpg"]
    assert sorted(report.imported) == sorted(expected_upright) and report.model_version == "none"
    for task in tasks_of(ls_settings):
        name = task["data"]["file_name"]
        assert task["predictions"] == []
        served = Image.open(io.BytesIO(fetch_photo(ls_settings, task["data"]["image"])))
        assert served.getexif().get(0x0112, 1) == 1, "the served copy must need no EXIF rotation"
        assert served.mode in ("RGB", "L")
        want = np.asarray(expected_upright[name], float)
        assert served.size == (task["data"]["width"], task["data"]["height"]) == (want.shape[1], want.shape[0])
        assert np.abs(np.asarray(served.convert("RGB"), float) - want).mean() < 4, name
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == []


def test_empty_or_missing_inbox(ls_settings: Settings, tmp_path: Path) -> None:
    report = prelabel(ls_settings, masker=Masker(None, None))
    assert (report.imported, report.already_there, report.rejected) == ({}, {}, {})
    with pytest.raises(UserError, match="does not exist"):
        prelabel(ls_settings, tmp_path / "nope")


def test_label_studio_down_gives_a_clear_error_and_a_rerun_completes(
    ls_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(2):
        save_photo(shelf_photo(96, 64, seed=20 + i), ls_settings.inbox_dir / f"p{i}.jpg")
    monkeypatch.setattr("annotator.labelstudio.client.MAX_RETRIES", 1)
    monkeypatch.setenv("BOOKCOUNTER_LS_PORT", str(free_port()))  # nobody listens there
    get_settings.cache_clear()
    with pytest.raises(LabelStudioUnavailable, match="not reachable.*bookcounter labelstudio start"):
        prelabel(get_settings(), masker=Masker(None, None))
    assert len(list(ls_settings.inbox_dir.glob("*.jpg"))) == 2  # nothing lost, nothing filed
    monkeypatch.undo()
    monkeypatch.setenv("BOOKCOUNTER_STATE_DIR", str(ls_settings.state_dir))
    monkeypatch.setenv("BOOKCOUNTER_LS_PROJECT_TITLE", ls_settings.ls_project_title)
    get_settings.cache_clear()
    assert len(prelabel(get_settings(), masker=Masker(None, None)).imported) == 2
    assert len(tasks_of(get_settings())) == 2


class RestartingMasker(Masker):
    """Stops Label Studio while the second photo is being processed and starts it again in the
    background: the import must ride through the restart on its retries."""

    def __init__(self, server: Settings):
        super().__init__(None, None)
        self.server, self.calls, self.restart = server, 0, None

    def __call__(self, image, sha256):
        self.calls += 1
        if self.calls == 2:
            stop_server(self.server)
            self.restart = threading.Thread(target=start_server, args=(self.server,))
            self.restart.start()
        return super().__call__(image, sha256)


def test_label_studio_restarting_mid_import(ls_settings: Settings, labelstudio: Settings) -> None:
    for i in range(3):
        save_photo(shelf_photo(96, 64, seed=30 + i), ls_settings.inbox_dir / f"r{i}.jpg")
    masker = RestartingMasker(labelstudio)
    report = prelabel(ls_settings, masker=masker)
    masker.restart.join(timeout=300)  # start_server waits for /health itself; this bounds the rest
    assert not masker.restart.is_alive(), "Label Studio's restart did not finish within 300 s"
    assert len(report.imported) == 3
    tasks = tasks_of(ls_settings)
    assert len(tasks) == len({t["data"]["sha256"] for t in tasks}) == 3
    assert server_status(labelstudio).healthy


def test_champion_boxes_prompt_sam_and_without_sam_its_own_masks_answer(segmenter, tiny_model_dir: Path) -> None:
    """Paths (a) and (c): the real champion Mask R-CNN's boxes -> SAM masks, or its mask head alone."""
    from fixtures_trainer import synthetic_photo

    from trainer.predictor import Predictor

    champion = Predictor(tiny_model_dir, device="cpu", model_version="7")
    champion.threshold = 0.05  # the tiny model is weak; this test is about the paths, not quality
    photo, _ = synthetic_photo(seed=123, n_books=4)
    instances = champion.predict(photo)
    assert instances, "the tiny champion should find the synthetic books"
    with_sam = Masker(segmenter, champion)
    assert with_sam.model_version == "sam-vit_t+maskrcnn-v7"
    labelled = with_sam(photo, "ab12cd34")
    assert labelled.predicted_count == len(instances)  # the champion's count, whatever SAM made of its boxes
    found = labelled.masks
    assert 0 < len(found) <= len(instances)  # one SAM mask per champion box (empty ones dropped)
    assert all(m.shape == (photo.height, photo.width) for m, _ in found)
    assert {s for _, s in found} <= {i.score for i in instances}  # each mask keeps its box's score
    alone = Masker(None, champion)
    own = alone(photo, "ab12cd34").masks
    assert alone.model_version == "maskrcnn-v7" and len(own) == len([i for i in instances if i.mask.any()])
    assert all(np.array_equal(m, i.mask) for (m, _), i in zip(own, [i for i in instances if i.mask.any()]))
