"""Trainer: training, prediction, evaluation, bad input (tiny synthetic data, CPU)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_trainer import make_synthetic_store, synthetic_photo, tiny_train_config
from PIL import Image
from torchvision.ops import nms

from bookcounter import masks as rle
from bookcounter.dataset_store import DatasetError, DatasetStore, NewImage
from trainer.evaluate import choose_operating_point, count_errors, metrics
from trainer.model import CheckpointError, ModelConfig, build_model, load_init
from trainer.predictor import Predictor
from trainer.train import train


def test_loss_falls_over_training(tiny_model_dir: Path) -> None:
    meta = json.loads((tiny_model_dir / "model.json").read_text())
    losses = [row["loss"] for row in meta["history"]]
    assert len(meta["iter_losses"]) >= 30
    assert min(losses[-3:]) < 0.6 * losses[0], losses


def test_model_json_has_the_contract(tiny_model_dir: Path, tiny_dataset) -> None:
    meta = json.loads((tiny_model_dir / "model.json").read_text())
    assert meta["dataset_version"] == tiny_dataset.version.name
    assert meta["manifest_hash"] == tiny_dataset.version.manifest()["content_hash"]
    assert 0 < meta["threshold"] < 1
    assert 0.3 <= meta["nms_iou"] <= 0.7
    assert {"val_count_mae", "val_segm_AP", "val_bbox_AP50"} <= set(meta["metrics"])
    assert ModelConfig.from_dict(meta["model"]).backbone == "resnet18_fpn"


def test_predictor_finds_books_in_original_coordinates(tiny_model_dir: Path) -> None:
    predictor = Predictor(tiny_model_dir, device="cpu")
    photo, truth = synthetic_photo(seed=123, n_books=4)
    big = photo.resize((photo.width * 2, photo.height * 2))  # larger than the model's input
    instances = predictor.predict(big, threshold=0.05)
    assert instances and all(i.mask.shape == (big.height, big.width) and i.mask.dtype == bool for i in instances)
    assert all(0 <= i.box[0] < i.box[2] <= big.width and 0 <= i.box[1] < i.box[3] <= big.height for i in instances)
    assert [i.score for i in instances] == sorted((i.score for i in instances), reverse=True)
    # the mask head fills a given book's box with that book (scaled 2x like the photo)
    ys, xs = np.nonzero(truth[0])
    box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32) * 2
    masks = predictor.masks_for_boxes(big, box)
    assert masks.shape == (1, big.height, big.width)
    big_truth = np.asarray(Image.fromarray(truth[0]).resize(big.size)) > 0
    iou = (masks[0] & big_truth).sum() / (masks[0] | big_truth).sum()
    assert iou > 0.5, iou
    assert predictor.masks_for_boxes(big, np.zeros((0, 4))).shape == (0, big.height, big.width)


def _perfect(gt: dict) -> list[dict]:
    """Detections that are the ground truth itself, scored 1."""
    keys = ("image_id", "segmentation", "bbox")
    return [{**{k: a[k] for k in keys}, "category_id": 1, "score": 1.0} for a in gt["annotations"]]


def test_perfect_prediction_scores_ap_one_and_mae_zero(tiny_dataset) -> None:
    gt = tiny_dataset.version.coco("test")
    perfect = _perfect(gt)
    m = metrics(gt, perfect, threshold=0.5)
    assert m["segm_AP"] == pytest.approx(1.0) and m["bbox_AP"] == pytest.approx(1.0)
    assert m["segm_AP50"] == pytest.approx(1.0)
    assert m["count_mae"] == 0 and m["count_rmse"] == 0 and m["count_mre"] == 0
    # one extra low-score false positive: the threshold chosen on this split drops it
    cands = {im["id"]: _xyxy([p for p in perfect if p["image_id"] == im["id"]]) for im in gt["images"]}
    first = perfect[0]["image_id"]
    boxes, scores = cands[first]
    cands[first] = (np.vstack([boxes, [[0, 0, 5, 5]]]), np.append(scores, 0.3))
    threshold, _ = choose_operating_point(gt, cands)
    assert threshold > 0.3


def _xyxy(results: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in results)], np.float32).reshape(-1, 4)
    return boxes, np.array([r["score"] for r in results], np.float32)


def _photos(*n_books: int) -> dict:
    """A minimal COCO split: photo i + 1 holds ``n_books[i]`` books."""
    return {
        "images": [{"id": i + 1} for i in range(len(n_books))],
        "annotations": [{"image_id": i + 1} for i, n in enumerate(n_books) for _ in range(n)],
    }


def test_operating_point_nms_keeps_leaning_books_and_drops_duplicate_boxes() -> None:
    boxes = lambda *b: np.array(b, np.float32)  # noqa: E731
    scores = lambda *s: np.array(s, np.float32)  # noqa: E731
    # two books leaning on each other, boxes overlapping with IoU 0.67: NMS at 0.5 keeps one of them
    leaning = {1: (boxes([0, 0, 40, 100], [8, 0, 48, 100]), scores(0.9, 0.8))}
    assert choose_operating_point(_photos(2), leaning)[1] >= 0.6
    # photo 1: one wide book found twice (IoU 0.46); photo 2: two books, found with scores just
    # below the copy's: no threshold counts both right at NMS 0.5, NMS at 0.4 does
    twice = {
        1: (boxes([0, 0, 60, 100], [22, 0, 82, 100]), scores(0.9, 0.88)),
        2: (boxes([0, 0, 30, 100], [50, 0, 80, 100]), scores(0.9, 0.86)),
    }
    threshold, iou = choose_operating_point(_photos(1, 2), twice)
    assert iou < 0.5 and threshold <= 0.85
    # nothing to choose from: the defaults
    assert choose_operating_point(_photos(), {}) == (0.5, 0.5)


def test_predictor_candidates_count_what_predict_counts(tiny_model_dir: Path) -> None:
    predictor = Predictor(tiny_model_dir, device="cpu")
    photo, _ = synthetic_photo(seed=5, n_books=5)
    big = photo.resize((photo.width * 2, photo.height * 2))
    boxes, scores = predictor.candidates(big, min_score=0.05)
    assert len(boxes) == len(scores) and list(scores) == sorted(scores, reverse=True)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= big.width).all() and (boxes[:, 3] <= big.height).all()
    keep = nms(torch.from_numpy(boxes), torch.from_numpy(scores), predictor.nms_iou)
    for t in (0.05, 0.3, predictor.threshold):
        counted = min(int((scores[keep.numpy()] >= t).sum()), predictor.config.detections_per_img)  # predict's cap
        assert counted == len(predictor.predict(big, threshold=t))


def test_count_errors() -> None:
    e = count_errors([10, 4, 0], [8, 4, 1])
    assert e["count_mae"] == pytest.approx(1.0)
    assert e["count_rmse"] == pytest.approx((5 / 3) ** 0.5)
    assert e["count_mre"] == pytest.approx((0.2 + 0 + 1.0) / 3)


def _resume_config(dataset: str):
    cfg = tiny_train_config(dataset, epochs=2, seed=7)
    cfg.model.image_size = 64
    return cfg


def test_resume_after_a_forced_stop_matches_an_unbroken_run(tmp_path: Path) -> None:
    ds = make_synthetic_store(tmp_path / "ds", {"train": 4}, seed=3)
    cfg = _resume_config(ds.version.name)
    unbroken = train(cfg, ds.store, tmp_path / "a", progress=False, log=lambda _: None)

    class Killed(Exception):
        pass

    def kill_after_first_epoch(epoch: int, row: dict) -> None:
        if epoch == 0:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, ds.store, tmp_path / "b", progress=False, on_epoch=kill_after_first_epoch, log=lambda _: None)
    resumed = train(cfg, ds.store, tmp_path / "b", resume=True, progress=False, log=lambda _: None)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in unbroken.history])
    a, b = unbroken.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_empty_train_split_and_tampered_version_are_clear_errors(tmp_path: Path) -> None:
    ds = make_synthetic_store(tmp_path / "ds", {"val": 2})
    with pytest.raises(DatasetError, match="train split is empty"):
        train(tiny_train_config(ds.version.name), ds.store, tmp_path / "run", progress=False)
    ds2 = make_synthetic_store(tmp_path / "ds2", {"train": 2})
    img = next((ds2.store.root / "images").iterdir())
    os.chmod(img, 0o644)
    img.write_bytes(img.read_bytes() + b"x")
    with pytest.raises(DatasetError, match="fails verify"):
        train(tiny_train_config(ds2.version.name), ds2.store, tmp_path / "run2", progress=False)


def test_photo_without_books_trains(tmp_path: Path) -> None:
    photo, truth = synthetic_photo(seed=5, n_books=2)
    empty, _ = synthetic_photo(seed=6, n_books=0)
    items = []
    for name, img, ms in (("books.png", photo, truth), ("empty.png", empty, [])):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        items.append(NewImage(buf.getvalue(), name, [rle.encode(m) for m in ms], split="train"))
    store = DatasetStore(tmp_path / "ds")
    store.commit(items, source={"name": "t"})
    cfg = tiny_train_config("v0001", epochs=1)
    cfg.model.image_size = 64
    result = train(cfg, store, tmp_path / "run", progress=False, log=lambda _: None)
    assert np.isfinite(result.history[0]["loss"])


def test_init_file_checks_readability_and_shapes(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_train_config("v0001").model
    model = build_model(cfg)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_init(model, cfg, str(corrupt), tmp_path)
    other = ModelConfig(backbone="resnet18_fpn", image_size=96, width=48)
    with pytest.raises(CheckpointError, match="does not fit this architecture"):
        load_init(build_model(other), other, str(tiny_model_dir / "model.pt"), tmp_path)
    assert load_init(model, cfg, str(tiny_model_dir / "model.pt"), tmp_path) == {"init": "file", "file": "model.pt"}
    # torchvision's coco/imagenet weights are never downloaded: an empty hub cache means "train from scratch"
    assert load_init(model, cfg, "imagenet", tmp_path) == {"init": ""}
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_anchors_fit_tall_spines_and_books_lying_flat() -> None:
    """Every book shape of the sample (h/w 1/16..16, 40-180 px square-equivalent at 384) has an
    anchor the RPN can match."""
    from torchvision.ops import box_iou

    from trainer.model import anchors_for

    anchors = anchors_for(ModelConfig(image_size=384))
    boxes = []
    for ratio in (1 / 16, 1 / 8, 1 / 3, 1, 3, 8, 16):
        for side in (40, 80, 180):
            w, h = side / ratio**0.5, side * ratio**0.5
            for x, y in ((50, 30), (123, 77)):
                boxes.append([x, y, x + w, y + h])
    best = box_iou(torch.tensor(boxes), anchors).max(1).values
    assert best.min() >= 0.4, best.min()
    assert best.median() >= 0.6, best.median()


def test_the_tiny_model_counts_held_out_photos_close_to_their_true_counts(tiny_model_dir: Path, tiny_dataset) -> None:
    """Count accuracy, guarded: the test model against the true counts of 12 photos it never saw."""
    from trainer.evaluate import evaluate_model

    report = evaluate_model(tiny_model_dir, tiny_dataset.version, "test", progress=False)
    m = report["metrics"]
    truth = [r["true"] for r in report["per_image"]]
    assert len(truth) == 12 and sum(truth) == len(tiny_dataset.version.coco("test")["annotations"])
    # measured: MAE 0.42 against the median baseline's 1.17 (0.67 if it counted whole books, which
    # its val does not show to be better); twice that error fails
    assert m["count_mae"] <= 0.75, report["per_image"]
    assert m["count_mae"] <= 0.6 * m["baseline_count_mae"], (m["count_mae"], m["baseline_count_mae"])


def test_pycocotools_progress_lines_stay_out_of_the_logs(tiny_dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """pycocotools prints "creating index..." / "DONE" on every evaluation. In a flow with
    ``log_prints`` Prefect replaces the builtin ``print`` with one that logs, as here."""
    import builtins

    printed: list[tuple] = []
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: printed.append(args))
    gt = tiny_dataset.version.coco("test")
    perfect = _perfect(gt)
    assert metrics(gt, perfect, threshold=0.5)["segm_AP"] == pytest.approx(1.0)
    assert printed == []
