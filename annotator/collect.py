"""Collecting: what annotators submitted in Label Studio becomes a new dataset version.

An export snapshot of the project is read; of each task only the latest human annotation
that was submitted (not a prediction, not a draft, not cancelled/skipped) counts. Brush RLE
is decoded pixel for pixel and polygons (percent coordinates) are rasterised; both are stored
as pycocotools RLE. The image stored is the very file Label Studio showed (an upright copy),
so masks and pixels line up. Provenance (project, task and annotation ids) goes into the
manifest. When the content equals a version already stored, nothing is written.

Pre-label quality: for each annotated task that had a pre-label (its prediction shown to the
annotator), the human masks and the pre-label masks are matched one to one, greedily by IoU
(pycocotools ``iou`` on the RLEs; the highest-IoU pair first, each mask used once), at IoU >=
:data:`MATCH_IOU`. Recall = matched / human masks (books the pre-label found); precision =
matched / pre-label masks (pre-label masks the annotator kept). Totals and per task go into the
version's ``report["prelabel_quality"]``.

The count fields of the tasks (``annotated_count``, ``count_gap``; ``predicted_count`` when a
champion is given) are written back on the way (:mod:`annotator.count_review`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import numpy as np
from tqdm import tqdm

from annotator.count_review import write_counts
from annotator.labelstudio.client import api_errors, client
from annotator.labelstudio.label_config import IMAGE
from annotator.labelstudio.mask_codec import annotation_masks
from annotator.labelstudio.project import ensure_project, export_snapshot, fetch_photo, latest_submitted
from bookcounter import masks
from bookcounter.dataset_store import CommitResult, DatasetStore, NewImage
from bookcounter.detector import DetectorProvider
from bookcounter.images import BadImage, decode_image
from bookcounter.settings import Settings

log = logging.getLogger(__name__)

MATCH_IOU = 0.5  # a pre-label mask and a human mask are the same book at this IoU or more


def collect(settings: Settings, champion: DetectorProvider | None = None) -> CommitResult | None:
    """Write a new dataset version from the submitted annotations; None when nothing is new.

    ``champion`` (when given) recounts the tasks it has not counted yet (``predicted_count``).
    """
    project_id = ensure_project(settings)
    tasks = export_snapshot(settings, project_id)
    report: Counter = Counter()
    quality: dict[int, dict[str, int]] = {}
    items = []
    for task in tqdm(tasks, desc="collecting", unit="task", leave=False):
        annotation = latest_submitted(task)
        if annotation is None:
            report["tasks_without_submitted_annotation"] += 1
            continue
        item = _new_image(settings, project_id, task, annotation, report, quality)
        if item is not None:
            items.append(item)
    annotated = {item.provenance["label_studio_task"]: len(item.masks) for item in items}
    write_counts(settings, project_id, annotated, champion() if champion is not None else None)
    if not items:
        log.info("collect: no submitted annotations in project %s", project_id)
        return None
    store = DatasetStore.from_settings(settings)
    result = store.commit(
        items,
        source={"name": "label-studio", "url": settings.ls_url, "project": project_id},
        report={**report, "prelabel_quality": prelabel_quality_report(quality)},
    )
    return result if result.created else None


def shown_prelabel(task: dict[str, Any], annotation: dict[str, Any]) -> dict[str, Any] | None:
    """The prediction the annotator started from: the latest one made before the annotation."""
    made = [p for p in task.get("predictions") or [] if p.get("result")]
    before = [p for p in made if (p.get("created_at") or "") <= (annotation.get("created_at") or "~")]
    return max(before or made, key=lambda p: (p.get("created_at") or "", p.get("id") or 0), default=None)


def match_masks(human: list[masks.RLE], prelabel: list[masks.RLE], min_iou: float = MATCH_IOU) -> int:
    """How many one-to-one pairs (greedy, highest IoU first) have IoU >= ``min_iou``."""
    ious = masks.iou(prelabel, human)
    used_p, used_h, matched = set(), set(), 0
    for flat in np.argsort(-ious, axis=None):
        p, h = divmod(int(flat), len(human))
        if ious[p, h] < min_iou:
            break
        if p not in used_p and h not in used_h:
            used_p.add(p)
            used_h.add(h)
            matched += 1
    return matched


def prelabel_quality_report(quality: dict[int, dict[str, int]]) -> dict[str, Any]:
    """Totals (recall and precision over all masks) and per task, of the pre-labels annotators saw."""
    human = sum(q["human"] for q in quality.values())
    shown = sum(q["prelabel"] for q in quality.values())
    matched = sum(q["matched"] for q in quality.values())
    return {
        "photos": len(quality),
        "human_masks": human,
        "prelabel_masks": shown,
        "matched": matched,
        "recall": matched / human if human else None,
        "precision": matched / shown if shown else None,
        "match": f"one-to-one, greedy by IoU, IoU >= {MATCH_IOU}",
        "per_task": {
            str(t): {
                **q,
                "recall": q["matched"] / q["human"] if q["human"] else None,
                "precision": q["matched"] / q["prelabel"] if q["prelabel"] else None,
            }
            for t, q in sorted(quality.items())
        },
    }


def _new_image(
    settings: Settings,
    project_id: int,
    task: dict[str, Any],
    annotation: dict[str, Any],
    report: Counter,
    quality: dict[int, dict[str, int]],
) -> NewImage | None:
    url = task["data"][IMAGE]
    data = fetch_photo(settings, url)
    served_name = PurePosixPath(urlparse(url).path).name
    try:
        image = decode_image(data, served_name)
    except BadImage as e:
        report["undecodable_images"] += 1
        log.warning("task %s: %s; skipped", task["id"], e)
        return None
    rles = annotation_masks(annotation, image.height, image.width, report)
    prediction = shown_prelabel(task, annotation)
    if prediction is not None:
        shown = annotation_masks(prediction, image.height, image.width)
        quality[task["id"]] = {"human": len(rles), "prelabel": len(shown), "matched": match_masks(rles, shown)}
    if not rles:
        report["images_without_books"] += 1
    report["images"] += 1
    report["books"] += len(rles)
    original = task["data"].get("file_name") or served_name
    return NewImage(
        data=data,
        file_name=str(Path(original).with_suffix(Path(served_name).suffix)),
        masks=rles,
        provenance={
            "label_studio_project": project_id,
            "label_studio_task": task["id"],
            "label_studio_annotation": annotation["id"],
            "inbox_sha256": task["data"].get("sha256"),
        },
    )


@dataclass(frozen=True)
class Pending:
    """Annotated tasks of a project that no dataset version holds yet."""

    count: int
    project_id: int
    relative_to: str | None  # the newest dataset version, which the count is relative to


def pending_annotations(settings: Settings) -> Pending:
    """How many annotated tasks the newest dataset version does not hold (one API call): the one
    count that starts the loop (:mod:`annotator.training_trigger`)."""
    project_id = ensure_project(settings)
    with api_errors(settings, "read the project"):
        project = client(settings).projects.get(id=project_id)
    latest = DatasetStore(
        settings.datasets_dir
    ).latest()  # after the count: a collect in between lowers it, never raises it
    collected = set()
    if latest is not None:
        for im in latest.coco()["images"]:
            prov = im.get("provenance") or {}
            if prov.get("label_studio_project") == project_id:
                collected.add(prov.get("label_studio_task"))
    count = max(0, (project.num_tasks_with_annotations or 0) - len(collected))
    return Pending(count, project_id, latest.name if latest is not None else None)
