"""Collecting: what annotators submitted in Label Studio becomes a new dataset version.

An export snapshot of the project is read; of each task only the latest human annotation
that was submitted (not a prediction, not a draft, not cancelled/skipped) counts. Brush RLE
is decoded pixel for pixel and polygons (percent coordinates) are rasterised; both are stored
as pycocotools RLE. The image stored is the very file Label Studio showed (an upright copy),
so masks and pixels line up. Provenance (project, task and annotation ids) goes into the
manifest. When the content equals a version already stored, nothing is written.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from annotator.labelstudio.client import api_errors, client
from annotator.labelstudio.label_config import IMAGE
from annotator.labelstudio.mask_codec import result_mask
from annotator.labelstudio.project import ensure_project, export_snapshot, fetch_photo
from bookcounter import masks
from bookcounter.dataset_store import CommitResult, DatasetStore, NewImage
from bookcounter.images import BadImage, decode_image
from bookcounter.settings import Settings, get_settings

log = logging.getLogger(__name__)


def latest_submitted(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's latest annotation that a person submitted (cancelled/skipped ones do not count)."""
    submitted = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return max(submitted, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a["id"]), default=None)


def collect(settings: Settings | None = None) -> CommitResult | None:
    """Write a new dataset version from the submitted annotations; None when nothing is new."""
    settings = settings or get_settings()
    project_id = ensure_project(settings)
    tasks = export_snapshot(settings, project_id)
    report: Counter = Counter()
    items = []
    for task in tqdm(tasks, desc="collecting", unit="task", leave=False):
        annotation = latest_submitted(task)
        if annotation is None:
            report["tasks_without_submitted_annotation"] += 1
            continue
        item = _new_image(settings, project_id, task, annotation, report)
        if item is not None:
            items.append(item)
    if not items:
        log.info("collect: no submitted annotations in project %s", project_id)
        return None
    store = DatasetStore(settings.datasets_dir, settings.test_fraction, settings.val_fraction)
    result = store.commit(
        items,
        source={"name": "label-studio", "url": settings.ls_url, "project": project_id},
        report=dict(report),
    )
    return result if result.created else None


def _new_image(
    settings: Settings, project_id: int, task: dict[str, Any], annotation: dict[str, Any], report: Counter
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
    rles = []
    for result in annotation.get("result") or []:
        mask = result_mask(result, image.height, image.width)
        if mask is None:
            continue  # a prompt (keypoint, rectangle) or another kind of result
        if not mask.any():
            report["empty_masks_skipped"] += 1
            continue
        rles.append(masks.encode(mask))
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


def pending_annotations(settings: Settings | None = None) -> Pending:
    """How many annotated tasks the newest dataset version does not hold (one API call): the one
    count that starts the loop (:mod:`annotator.training_trigger`)."""
    settings = settings or get_settings()
    project_id = ensure_project(settings)
    with api_errors(settings, "read the project"):
        project = client(settings).projects.get(id=project_id)
    latest = DatasetStore(settings.datasets_dir).latest()  # after the count: a collect in between lowers it, never raises it
    collected = set()
    if latest is not None:
        for im in latest.coco()["images"]:
            prov = im.get("provenance") or {}
            if prov.get("label_studio_project") == project_id:
                collected.add(prov.get("label_studio_task"))
    count = max(0, (project.num_tasks_with_annotations or 0) - len(collected))
    return Pending(count, project_id, latest.name if latest is not None else None)
