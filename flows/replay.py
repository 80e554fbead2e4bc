"""A replay annotator: submits reference masks through Label Studio's API, as a person would.

The demo and ``bench/loop_replay.py`` use it to stand in for annotators: for each task whose
photo (by sha256) has reference polygons in a COCO file, it posts an annotation with one brush
mask per book and a ``lead_time`` (seconds spent), exactly what the editor's Submit sends.
Tasks that already have a submitted annotation are left alone, so a re-run adds nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from annotator.collect import latest_submitted
from annotator.labelstudio.client import api_errors, client
from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.project import ensure_project, export_snapshot
from bookcounter import masks
from bookcounter.images import sha256_file
from bookcounter.settings import Settings

SECONDS_PER_BOOK = 6.0  # lead_time recorded per replayed book: a careful brush stroke or polygon


def reference_masks(coco_json: Path, images_dir: Path) -> dict[str, list[masks.RLE]]:
    """sha256 of each photo of a COCO file -> its books as RLE masks."""
    coco = json.loads(Path(coco_json).read_text())
    by_image: dict[int, list] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        by_image[a["image_id"]].append(a["segmentation"])
    out = {}
    for im in coco["images"]:
        rles = [masks.from_polygons(seg, im["height"], im["width"]) for seg in by_image[im["id"]]]
        out[sha256_file(images_dir / im["file_name"])] = [r for r in rles if masks.area(r) > 0]
    return out


def replay(settings: Settings, references: dict[str, list[masks.RLE]], limit: int | None = None) -> list[int]:
    """Submit the reference masks of tasks that have none yet; returns the annotated task ids."""
    project_id = ensure_project(settings)
    ls = client(settings)
    todo = [
        t
        for t in export_snapshot(settings, project_id)
        if t["data"].get("sha256") in references and latest_submitted(t) is None
    ]
    done = []
    for task in tqdm(todo[:limit], desc="replay annotator", unit="task"):
        books = references[task["data"]["sha256"]]
        results = [brush_result(masks.decode(rle)) for rle in books]
        with api_errors(settings, f"annotate task {task['id']}"):
            ls.annotations.create(id=task["id"], result=results, lead_time=SECONDS_PER_BOOK * len(books))
        done.append(task["id"])
    return done
