"""The count review: the champion's count of each photo next to the annotator's, in Label Studio.

Every task carries in its data ``predicted_count`` (the champion's count; with
``predicted_count_model``, the model version that counted) and, once annotated,
``annotated_count``, ``count_gap`` (annotated - predicted) and ``count_gap_abs``. They are
written through the tasks API (the task's data only; annotations and predictions stay as they
are) at pre-labelling, at ``collect`` and at ``review``; a task counted by an older champion is
counted again then. The saved tab :data:`REVIEW_TAB` lists the annotated tasks whose counts
differ by at least :data:`REVIEW_MIN_GAP`, largest gap first (Label Studio filters cannot take
an absolute value, hence ``count_gap_abs``).

``review`` also flags *likely misses*: confident champion detections (score at or above its
counting threshold: what ``predict`` returns) that overlap no human mask (IoU < :data:`MISS_IOU`),
books the annotator may have skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

import numpy as np
from tqdm import tqdm

from annotator.labelstudio.client import api_errors, client
from annotator.labelstudio.label_config import IMAGE
from annotator.labelstudio.mask_codec import annotation_masks
from annotator.labelstudio.project import (
    ensure_project,
    export_snapshot,
    fetch_photo,
    latest_submitted,
    update_task_data,
)
from annotator.labelstudio.views import ensure_view
from bookcounter import masks
from bookcounter.detector import Detector
from bookcounter.images import decode_image
from bookcounter.settings import Settings

REVIEW_TAB = "Review: counts disagree"
REVIEW_MIN_GAP = 2
MISS_IOU = 0.3
COUNT_FIELDS = ("predicted_count", "annotated_count", "count_gap", "count_gap_abs")


def review_tab_data(min_gap: int = REVIEW_MIN_GAP) -> dict[str, Any]:
    """The tab's filters (annotated, |gap| >= ``min_gap``), ordering (largest |gap| first) and
    column types (Number, so that 10 sorts after 9)."""
    return {
        "filters": {
            "conjunction": "and",
            "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0},
                {
                    "filter": "filter:tasks:data.count_gap_abs",
                    "operator": "greater_or_equal",
                    "type": "Number",
                    "value": min_gap,
                },
            ],
        },
        "ordering": ["-tasks:data.count_gap_abs"],
        "columnsDisplayType": {f"tasks:data.{f}": "Number" for f in COUNT_FIELDS},
    }


def ensure_review_tab(settings: Settings, project_id: int) -> int:
    return ensure_view(settings, project_id, REVIEW_TAB, review_tab_data())


def count_fields(predicted: int | None, annotated: int) -> dict[str, int]:
    """``annotated_count`` and, when a count was predicted, ``count_gap`` and ``count_gap_abs``."""
    out = {"annotated_count": annotated}
    if predicted is not None:
        out.update(count_gap=annotated - predicted, count_gap_abs=abs(annotated - predicted))
    return out


def likely_misses(found: list[tuple[float, masks.RLE]], human: list[masks.RLE]) -> list[int]:
    """Indices into ``found`` ((score, RLE) of confident detections) that no human mask overlaps
    at IoU >= :data:`MISS_IOU`."""
    ious = masks.iou([r for _, r in found], human)
    return [i for i in range(len(found)) if not human or ious[i].max() < MISS_IOU]


def write_counts(
    settings: Settings,
    project_id: int,
    annotated: dict[int, int],
    detector: Detector | None,
    predicted: dict[int, int] | None = None,
) -> dict[int, dict[str, Any]]:
    """Bring every task's count fields up to date; returns task id -> its data afterwards.

    ``annotated``: task id -> masks in its latest submitted annotation. ``predicted``: counts
    the caller already has from ``detector``. Other tasks counted by another model version are
    counted again with ``detector`` (when there is one). Only tasks whose data changed are written.
    """
    predicted = dict(predicted or {})
    ls = client(settings)
    with api_errors(settings, "list tasks"):
        tasks = list(ls.tasks.list(project=project_id, fields="task_only", resolve_uri=False, page_size=500))
    out = {}
    for t in tqdm(tasks, desc="counts", unit="task", leave=False):
        data = dict(t.data or {})
        if detector is not None and (t.id in predicted or data.get("predicted_count_model") != detector.model_version):
            count = predicted[t.id] if t.id in predicted else len(detector.predict(_photo(settings, data)))
            data.update(predicted_count=count, predicted_count_model=detector.model_version)
        if t.id in annotated:
            data.update(count_fields(data.get("predicted_count"), annotated[t.id]))
        if data != (t.data or {}):
            update_task_data(settings, t.id, data)
        out[t.id] = data
    ensure_review_tab(settings, project_id)
    return out


@dataclass
class ReviewRow:
    task_id: int
    file_name: str
    url: str  # the task in Label Studio's Data Manager
    predicted: int | None
    annotated: int
    misses: list[tuple[float, tuple[float, float, float, float]]] = field(default_factory=list)  # score, box

    @property
    def gap(self) -> int | None:
        return None if self.predicted is None else self.annotated - self.predicted


def review(settings: Settings, detector: Detector | None, min_gap: int = REVIEW_MIN_GAP) -> list[ReviewRow]:
    """Annotated tasks whose counts differ by ``min_gap`` or more, or with likely misses;
    largest |gap| first. Writes the count fields back on the way (:func:`write_counts`)."""
    project_id = ensure_project(settings)
    annotated, predicted, misses, names = {}, {}, {}, {}
    for task in tqdm(export_snapshot(settings, project_id), desc="reviewing", unit="task"):
        annotation = latest_submitted(task)
        if annotation is None:
            continue
        url = task["data"][IMAGE]
        names[task["id"]] = task["data"].get("file_name") or PurePosixPath(urlparse(url).path).name
        image = decode_image(fetch_photo(settings, url), names[task["id"]])
        human = annotation_masks(annotation, image.height, image.width)
        annotated[task["id"]] = len(human)
        if detector is not None:
            found = [(i.score, tuple(i.box), masks.encode(np.asarray(i.mask))) for i in detector.predict(image)]
            predicted[task["id"]] = len(found)
            missed = likely_misses([(s, r) for s, _, r in found], human)
            misses[task["id"]] = [(found[i][0], found[i][1]) for i in missed]
    data = write_counts(settings, project_id, annotated, detector, predicted)
    rows = [
        ReviewRow(
            task_id,
            names[task_id],
            f"{settings.ls_url}/projects/{project_id}/data?task={task_id}",
            data[task_id].get("predicted_count"),
            n,
            misses.get(task_id, []),
        )
        for task_id, n in annotated.items()
    ]
    shown = [r for r in rows if r.misses or (r.gap is not None and abs(r.gap) >= min_gap)]
    return sorted(shown, key=lambda r: (-abs(r.gap or 0), -len(r.misses), r.task_id))


def _photo(settings: Settings, data: dict[str, Any]):
    url = data[IMAGE]
    return decode_image(fetch_photo(settings, url), data.get("file_name") or PurePosixPath(urlparse(url).path).name)
