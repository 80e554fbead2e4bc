"""COCO AP (segm + bbox, pycocotools) and count error of a model on one split of a dataset version.

Detections are COCO result dicts (``image_id``, ``category_id``, ``segmentation`` RLE,
``bbox`` xywh, ``score``), kept down to :data:`MIN_SCORE` so AP sees the whole ranking.
The count of a photo is the number of detections with score >= the model's threshold after
NMS at the model's IoU; this operating point is chosen on ``val`` and sparse scenes made from
it (:func:`operating_point_set`, :func:`choose_operating_point`), never on ``test``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from tqdm import tqdm

from bookcounter import masks as rle
from bookcounter.dataset_store import DatasetVersion
from bookcounter.images import read_image
from trainer.model import DEFAULT_NMS_IOU

MIN_SCORE = 0.05
SPARSE_SEED = 20_000  # sparse scenes for the operating point ...
SHAPE_CHECK_SEED = 10_000  # ... and others for the shape checks (shape_checks)
THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 .. 0.95
# NMS IoUs tried for counting: books lean on each other (tilted neighbours' boxes overlap a lot)
# while a weak model also puts two boxes on one wide book; which wins is a property of the model.
NMS_IOUS = (0.3, 0.4, 0.5, 0.6, 0.7)


def detect(predictor, version: DatasetVersion, split: str, progress: bool = True) -> list[dict[str, Any]]:
    """Run ``predictor`` (a :class:`trainer.predictor.Predictor`) on every photo of ``split``."""
    results = []
    images = version.coco(split)["images"]
    for im in tqdm(images, desc=f"predicting {split}", disable=not progress, leave=False):
        photo = read_image(version.image_path(im))
        for inst in predictor.predict(photo, threshold=MIN_SCORE):
            x0, y0, x1, y1 = inst.box
            results.append(
                {
                    "image_id": im["id"],
                    "category_id": 1,
                    "segmentation": rle.encode(inst.mask),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": inst.score,
                }
            )
    return results


def _discard(*args: Any, **kwargs: Any) -> None:
    pass


def coco_ap(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str) -> dict[str, float]:
    """AP, AP50, AP75 over all areas, up to 300 detections per photo (shelves hold many books)."""
    import pycocotools.coco
    import pycocotools.cocoeval

    if not results or not gt["annotations"]:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    # pycocotools prints its progress ("creating index...", "DONE (t=0.29s)"); a module-level
    # ``print`` silences it everywhere, also where Prefect's log_prints would log each line.
    for module in (pycocotools.coco, pycocotools.cocoeval):
        module.print = _discard
    coco_gt = pycocotools.coco.COCO()
    coco_gt.dataset = {k: gt[k] for k in ("images", "annotations", "categories")}
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes([dict(r) for r in results])
    ev = pycocotools.cocoeval.COCOeval(coco_gt, coco_dt, iou_type)
    ev.params.maxDets = [1, 10, 300]
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][:, :, 0, 0, -1]  # IoU x recall, class book, area all, 300 dets

    def mean(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else 0.0

    ious = list(np.round(ev.params.iouThrs, 2))
    return {"AP": mean(precision), "AP50": mean(precision[ious.index(0.5)]), "AP75": mean(precision[ious.index(0.75)])}


def true_counts(gt: dict[str, Any]) -> dict[int, int]:
    counts = {im["id"]: 0 for im in gt["images"]}
    for a in gt["annotations"]:
        counts[a["image_id"]] += 1
    return counts


def predicted_counts(
    gt: dict[str, Any], results: list[dict[str, Any]], threshold: float, whole: bool = False
) -> dict[int, int]:
    """Books counted per photo, as :meth:`trainer.predictor.Predictor.predict` counts them
    (``whole``: without fragments of a book, :func:`trainer.predictor.whole_books`)."""
    from trainer.predictor import whole_books

    counted: dict[int, list[np.ndarray]] = {im["id"]: [] for im in gt["images"]}
    for r in results:
        if r["score"] >= threshold:
            counted[r["image_id"]].append(rle.decode(r["segmentation"]) if whole else np.zeros(0, bool))
    return {i: len(whole_books(m)) if whole else len(m) for i, m in counted.items()}


def choose_whole_books(
    predictor, version: DatasetVersion, val_results: list[dict[str, Any]], level: float, seed: int = SPARSE_SEED
) -> bool:
    """Whether the model counts better on val and its sparse scenes (those of the operating point)
    when a detection mostly inside a larger one is a fragment, not a book: as the promotion gate
    judges, the whole paired bootstrap interval at ``level`` must say so."""
    from trainer.data import photos_with_masks, sparse_scene
    from trainer.predictor import whole_books

    gt = version.coco("val")
    truth = list(true_counts(gt).values())
    plain = list(predicted_counts(gt, val_results, predictor.threshold).values())
    whole = list(predicted_counts(gt, val_results, predictor.threshold, whole=True).values())
    for k, (photo, masks) in enumerate(photos_with_masks(version, "val")):
        scene, books = sparse_scene(photo, masks, np.random.default_rng(seed + k))
        found = predictor.predict(scene, threshold=predictor.threshold)
        truth.append(len(books))
        plain.append(len(found))
        whole.append(len(whole_books([f.mask for f in found])))
    errors = [[abs(c - t) for c, t in zip(counts, truth)] for counts in (whole, plain)]
    return paired_bootstrap(*errors, level)["hi"] < 0


def count_errors(true: list[int], pred: list[int]) -> dict[str, float]:
    """MAE, RMSE and mean relative error (|pred - true| / max(true, 1)) per photo."""
    if not true:
        return {"count_mae": 0.0, "count_rmse": 0.0, "count_mre": 0.0}
    err = [p - t for t, p in zip(true, pred)]
    return {
        "count_mae": sum(abs(e) for e in err) / len(err),
        "count_rmse": math.sqrt(sum(e * e for e in err) / len(err)),
        "count_mre": sum(abs(e) / max(t, 1) for e, t in zip(err, true)) / len(err),
    }


Candidates = dict[int, tuple[np.ndarray, np.ndarray]]  # image id -> (xyxy boxes, scores) before NMS


def candidates(predictor, version: DatasetVersion, split: str, progress: bool = True) -> Candidates:
    """Every photo's detections before NMS (no masks): what :func:`choose_operating_point` sweeps."""
    images = version.coco(split)["images"]
    return {
        im["id"]: predictor.candidates(read_image(version.image_path(im)), MIN_SCORE)
        for im in tqdm(images, desc=f"candidates {split}", disable=not progress, leave=False)
    }


def operating_point_set(
    predictor, version: DatasetVersion, progress: bool = True, seed: int = SPARSE_SEED
) -> tuple[dict[str, Any], Candidates]:
    """What the operating point is chosen on: val, plus one sparse scene made from each val photo.

    The sample's val photos are all shelves of 4-54 books; the sparse scenes (0-6 of a photo's
    books on a book-free background, :func:`trainer.data.sparse_scene`) keep the chosen threshold
    from counting clutter as books in photos with few of them. Returns (a COCO-like ground truth
    with one annotation per book, candidates), for :func:`choose_operating_point`.
    """
    from trainer.data import photos_with_masks, sparse_scene

    gt = version.coco("val")
    cands = candidates(predictor, version, "val", progress)
    images, annotations = list(gt["images"]), list(gt["annotations"])
    first = max((im["id"] for im in images), default=0) + 1
    scenes = tqdm(
        photos_with_masks(version, "val"),
        total=len(gt["images"]),
        desc="sparse scenes",
        disable=not progress,
        leave=False,
    )
    for k, (photo, masks) in enumerate(scenes):
        scene, books = sparse_scene(photo, masks, np.random.default_rng(seed + k))
        images.append({"id": first + k})
        annotations += [{"image_id": first + k}] * len(books)
        cands[first + k] = predictor.candidates(scene, MIN_SCORE)
    return {"images": images, "annotations": annotations}, cands


def kept_scores(cands: Candidates, iou: float) -> dict[int, np.ndarray]:
    """Per photo, the scores of the boxes that NMS at ``iou`` keeps.

    Counting them at a threshold counts the same as thresholding before NMS: greedy NMS never
    lets a lower score suppress a higher one.
    """
    import torch
    from torchvision.ops import nms

    out = {}
    for i, (boxes, scores) in cands.items():
        keep = nms(
            torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.as_tensor(scores, dtype=torch.float32),
            iou,
        )
        out[i] = np.asarray(scores)[keep.numpy()]
    return out


def count_mae_at(gt: dict[str, Any], kept: dict[int, np.ndarray], threshold: float) -> float:
    """Count MAE on ``gt`` when each photo counts its ``kept`` scores (:func:`kept_scores`) >= ``threshold``."""
    truth = true_counts(gt)
    return count_errors([truth[i] for i in truth], [int((kept[i] >= threshold).sum()) for i in truth])["count_mae"]


def choose_operating_point(
    gt: dict[str, Any], cands: Candidates, nms_ious: tuple[float, ...] = NMS_IOUS
) -> tuple[float, float]:
    """The (score threshold, NMS IoU) with the lowest count MAE on this (val) split.

    Ties go to the IoU nearest torchvision's, then to the higher threshold.
    """
    if not gt["images"]:
        return 0.5, DEFAULT_NMS_IOU
    empty = (np.zeros((0, 4)), np.zeros(0))
    best = None  # ((MAE, distance of the IoU from the default, -threshold), threshold, IoU)
    for iou in nms_ious:
        kept = kept_scores({im["id"]: cands.get(im["id"], empty) for im in gt["images"]}, iou)
        for t in THRESHOLDS:
            key = (count_mae_at(gt, kept, t), abs(iou - DEFAULT_NMS_IOU), -t)
            if best is None or key < best[0]:
                best = (key, t, iou)
    return best[1], best[2]


def metrics(
    gt: dict[str, Any], results: list[dict[str, Any]], threshold: float, whole: bool = False
) -> dict[str, float]:
    """Every number of a report: segm/bbox AP, AP50, AP75 and count MAE/RMSE/MRE at ``threshold``."""
    out: dict[str, float] = {}
    for iou_type in ("segm", "bbox"):
        for k, v in coco_ap(gt, results, iou_type).items():
            out[f"{iou_type}_{k}"] = v
    truth, pred = true_counts(gt), predicted_counts(gt, results, threshold, whole)
    out.update(count_errors([truth[i] for i in truth], [pred[i] for i in truth]))
    out["images"] = len(gt["images"])
    out["threshold"] = threshold
    return out


def baseline_count(version: DatasetVersion) -> float:
    """The constant-count baseline: the median number of books per train photo."""
    return statistics.median(true_counts(version.coco("train")).values() or [0])


def baseline_count_mae(version: DatasetVersion, split: str) -> float:
    """Count MAE on ``split`` of always predicting the median train count."""
    truth = list(true_counts(version.coco(split)).values())
    return count_errors(truth, [baseline_count(version)] * len(truth))["count_mae"]


def paired_bootstrap(
    errors_a: list[float], errors_b: list[float], level: float, resamples: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """How much lower A's mean absolute count error is than B's on the same photos.

    ``errors_a[i]`` and ``errors_b[i]`` are the two models' absolute count errors on photo ``i``.
    Returns the mean difference (A - B; negative: A counts better), its two-sided percentile
    bootstrap interval at ``level`` (photos resampled with replacement, the pairs kept
    together), the share of resamples in which A is better, and the number of photos.
    """
    a, b = np.asarray(errors_a, float), np.asarray(errors_b, float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired errors need the same photos, at least one: {a.size} vs {b.size}")
    diff = a - b
    means = diff[np.random.default_rng(seed).integers(0, diff.size, (resamples, diff.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {
        "mean_diff": float(diff.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "level": level,
        "p_better": float((means < 0).mean()),
        "photos": int(diff.size),
        "resamples": resamples,
    }


def evaluate_model(
    model_dir: Path,
    version: DatasetVersion,
    split: str = "test",
    out_dir: Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model directory on ``split``; with ``out_dir`` also write report.json and the PNGs."""
    from trainer.predictor import Predictor

    predictor = Predictor(model_dir, device=device)
    gt = version.coco(split)
    results = detect(predictor, version, split, progress)
    m = metrics(gt, results, predictor.threshold, predictor.whole_books)
    m["nms_iou"] = predictor.nms_iou
    m["whole_books"] = predictor.whole_books
    m["baseline_count_mae"] = baseline_count_mae(version, split)
    truth, pred = true_counts(gt), predicted_counts(gt, results, predictor.threshold, predictor.whole_books)
    report = {
        "model": str(model_dir),
        "dataset": version.name,
        "split": split,
        "metrics": m,
        "per_image": [
            {"file_name": im["file_name"], "true": truth[im["id"]], "predicted": pred[im["id"]]} for im in gt["images"]
        ],
    }
    if out_dir is not None:
        from trainer import plots

        out_dir.mkdir(parents=True, exist_ok=True)
        report["plots"] = [
            plots.loss_curves(
                predictor.meta.get("history", []), predictor.meta.get("iter_losses", []), out_dir / "loss_curves.png"
            ),
            plots.count_scatter([truth[i] for i in truth], [pred[i] for i in truth], out_dir / "count_scatter.png"),
            plots.worst_photos(version, gt, results, predictor.threshold, out_dir / "worst_photos.png"),
        ]
        (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


# Shelf density bands for reports: sparse piles and rows, ordinary shelves, dense library shelves.
DENSITY_BANDS = (("<=10", 0, 10), ("11-30", 11, 30), (">30", 31, 10**9))


def by_density(per_image: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Count MAE and bias (mean predicted - true) per density band of ``evaluate_model``'s ``per_image``."""
    out = {}
    for name, lo, hi in DENSITY_BANDS:
        err = [r["predicted"] - r["true"] for r in per_image if lo <= r["true"] <= hi]
        if err:
            out[name] = {"photos": len(err), "count_mae": float(np.mean(np.abs(err))), "bias": float(np.mean(err))}
    return out


def shape_scenes(version: DatasetVersion, split: str = "val") -> Iterator[tuple[str, PIL.Image.Image, int]]:
    """(shape, photo, true count) for photos unlike the sample's squares, made from ``split``'s photos.

    ``strips``: the middle 3:1 strip of each photo, a book kept if a person would still count it
    (:func:`trainer.data.crop`); ``sparse``: 0-6 of each photo's books on a book-free background
    (3 per photo, seeds apart from the operating point's, :func:`trainer.data.sparse_scene`);
    ``piles``: 1-5 whole books cover-on beside clutter (2 per photo, :func:`trainer.data.pile_scene`).
    The photo itself comes first, as shape ``split``.
    """
    from trainer.data import crop, photos_with_masks, pile_scene, sparse_scene

    for i, (photo, masks) in enumerate(photos_with_masks(version, split)):
        yield split, photo, len(masks)
        w, h = photo.size
        sh = round(w / 3)
        strip, strip_masks = crop(photo, masks, (0, (h - sh) // 2, w, (h - sh) // 2 + sh))
        yield "strips", strip, len(strip_masks)
        for k in range(3):
            scene, books = sparse_scene(photo, masks, np.random.default_rng(SHAPE_CHECK_SEED + 3 * i + k))
            yield "sparse", scene, len(books)
        for k in range(2):
            scene, books = pile_scene(photo, masks, np.random.default_rng(SHAPE_CHECK_SEED + 5000 + 2 * i + k))
            yield "piles", scene, len(books)


def shape_checks(predictor, version: DatasetVersion, split: str = "val") -> dict[str, dict[str, float]]:
    """Count errors on the :func:`shape_scenes` made from ``split``'s photos (strips, sparse, piles)."""
    truth: dict[str, list[int]] = {"strips": [], "sparse": [], "piles": []}
    pred: dict[str, list[int]] = {"strips": [], "sparse": [], "piles": []}
    for shape, photo, n in shape_scenes(version, split):
        if shape in truth:
            truth[shape].append(n)
            pred[shape].append(len(predictor.predict(photo)))
    return {
        name: {**count_errors(truth[name], pred[name]), "photos": len(truth[name]), "books": sum(truth[name])}
        for name in truth
    }


def accuracy_report(model_dir: Path, version: DatasetVersion, out_dir: Path | None = None) -> dict[str, Any]:
    """What a recipe change is judged by: val and test metrics with their density bands, and the shape checks on val."""
    from trainer.predictor import Predictor

    meta = json.loads((model_dir / "model.json").read_text())
    row: dict[str, Any] = {
        "model": str(model_dir),
        "epochs": meta.get("epochs_done"),
        "iterations": meta.get("iterations_done"),
    }
    for split in ("val", "test"):
        r = evaluate_model(model_dir, version, split, out_dir=out_dir / split if out_dir else None, progress=False)
        keep = (
            "count_mae",
            "baseline_count_mae",
            "segm_AP",
            "segm_AP50",
            "bbox_AP50",
            "threshold",
            "nms_iou",
            "images",
        )
        row[split] = {**{k: r["metrics"][k] for k in keep}, "density": by_density(r["per_image"])}
    row["shapes"] = shape_checks(Predictor(model_dir, device="cpu"), version)
    return row
