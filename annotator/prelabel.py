"""Pre-labelling: new inbox photos become Label Studio tasks with masks as predictions.

For each photo in the inbox: decode and validate it, hash it, skip it if a task with that
sha256 exists (a re-run creates no duplicate), make masks, upload an upright copy and import
the task with its predictions in one request, then move the photo to ``inbox/done/``. A photo
that is not usable goes to ``inbox/rejected/`` next to a ``<name>.reason.txt``.

Where the masks come from (:class:`Masker`), best first:
  (a) the champion Mask R-CNN's boxes as SAM box prompts (one batched decoder call a photo);
  (b) no champion: SAM's point grid (automatic masks tuned for books);
  (c) no SAM checkpoint: the champion's own mask head;
  (d) neither: the task is imported with no predictions.
"""

from __future__ import annotations

import io
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from annotator.labelstudio.label_config import IMAGE
from annotator.labelstudio.mask_codec import brush_result
from annotator.labelstudio.project import (
    create_task,
    ensure_project,
    set_model_version,
    task_shas,
    upload_photo,
)
from bookcounter.detector import Detector, DetectorProvider
from bookcounter.errors import UserError
from bookcounter.images import BadImage, decode_image, sha256_bytes
from bookcounter.locks import file_lock
from bookcounter.settings import Settings
from bookcounter.uncertainty import NEAR, confidence, uncertainty_of

if TYPE_CHECKING:
    from annotator.sam import Segmenter

log = logging.getLogger(__name__)

DONE, REJECTED = "done", "rejected"
EXIF_ORIENTATION = 0x0112


@dataclass
class PrelabelReport:
    imported: dict[str, int] = field(default_factory=dict)  # file name -> new task id
    already_there: dict[str, int] = field(default_factory=dict)  # file name -> existing task id (same sha256)
    rejected: dict[str, str] = field(default_factory=dict)  # file name -> reason
    predictions: dict[str, int] = field(default_factory=dict)  # file name -> number of masks predicted
    model_version: str = ""

    def line(self) -> str:
        return (
            f"{len(self.imported)} imported, {len(self.already_there)} already in Label Studio, "
            f"{len(self.rejected)} rejected; masks from {self.model_version}"
        )


@dataclass
class Prelabel:
    """What one photo gets: (HxW bool mask, score) pairs at its size, and the champion's count
    (None without a champion; see :mod:`annotator.count_review`)."""

    masks: list[tuple[np.ndarray, float]]
    predicted_count: int | None = None
    score: float = 0.0  # the prediction's score in Label Studio: the champion's count confidence
    # (bookcounter.uncertainty.confidence), or without a champion the masks' mean score


class Masker:
    """Makes the predicted masks of one photo from whatever models are available."""

    def __init__(self, segmenter: Segmenter | None, detector: Detector | None):
        self.segmenter = segmenter
        self.detector = detector
        parts = []
        if segmenter is not None:
            parts.append(f"sam-{segmenter.model_type}")
        if detector is not None:
            parts.append(f"maskrcnn-v{detector.model_version}")
        self.model_version = "+".join(parts) or "none"

    def __call__(self, image: Image.Image, sha256: str) -> Prelabel:
        """The photo's masks (empty ones dropped), the champion's count of it and how sure it is."""
        count = unsure = None
        if self.detector is not None:
            threshold = self.detector.threshold  # one prediction down to the "near" scores
            found_near = self.detector.predict(image, threshold=max(0.01, threshold - NEAR))
            unsure = uncertainty_of([i.score for i in found_near], threshold)
            instances = [i for i in found_near if i.score >= threshold]
            count = len(instances)
            if self.segmenter is None:  # (c) the champion's own mask head
                found = [(i.mask, i.score) for i in instances]
            elif instances:  # (a) champion boxes -> SAM, one batched call
                boxes = np.array([i.box for i in instances], dtype=np.float32)
                got, _ = self.segmenter.predict_boxes(self.segmenter.embed(image, sha256), boxes)
                found = [(m, i.score) for m, i in zip(got, instances, strict=True)]
            else:  # the champion sees nothing: let SAM propose
                found = self.segmenter.generate(self.segmenter.embed(image, sha256))
        elif self.segmenter is not None:  # (b) point grid
            found = self.segmenter.generate(self.segmenter.embed(image, sha256))
        else:  # (d)
            found = []
        masks = [(np.asarray(m, dtype=bool), float(s)) for m, s in found if np.any(m)]
        score = confidence(unsure) if unsure is not None else float(np.mean([s for _, s in masks])) if masks else 0.0
        return Prelabel(masks, count, score)


def default_masker(settings: Settings, champion: DetectorProvider, sam_checkpoint: Path | None = None) -> Masker:
    """The champion (if any) and SAM (if a checkpoint is found), as configured."""
    from annotator.sam import load_segmenter

    segmenter = load_segmenter(settings, checkpoint=sam_checkpoint or settings.sam_checkpoint)
    return Masker(segmenter, champion())


def served_copy(data: bytes, image: Image.Image, file_name: str) -> tuple[bytes, str]:
    """What Label Studio gets: the original bytes when a browser shows exactly ``image``
    (JPEG/PNG, 8-bit RGB or gray, no EXIF rotation), else an upright re-encoded copy
    (PNG for PNG sources, JPEG q95 otherwise). Returns (bytes, file name)."""
    stem = Path(file_name).stem
    with Image.open(io.BytesIO(data)) as src:
        fmt, mode = src.format, src.mode
        orientation = src.getexif().get(EXIF_ORIENTATION, 1)
    if fmt in ("JPEG", "PNG") and mode in ("RGB", "L") and orientation == 1:
        return data, f"{stem}.{'jpg' if fmt == 'JPEG' else 'png'}"
    out = io.BytesIO()
    if fmt == "PNG":
        image.save(out, "PNG", optimize=False)
        return out.getvalue(), f"{stem}.png"
    image.save(out, "JPEG", quality=95)
    return out.getvalue(), f"{stem}.jpg"


def prelabel(
    settings: Settings,
    inbox: Path | None = None,
    masker: Masker | None = None,
    sam_checkpoint: Path | None = None,
    champion: DetectorProvider | None = None,
) -> PrelabelReport:
    """Turn every new photo of ``inbox`` (default ``settings.inbox_dir``) into a task; idempotent.

    Without ``masker``, :func:`default_masker` with the ``champion`` its caller provides
    (loaded only when there are photos); one of the two is needed.
    """
    inbox = Path(inbox) if inbox is not None else settings.inbox_dir
    if not inbox.is_dir():
        raise UserError(f"inbox {inbox} does not exist (put photos there or pass --inbox DIR)")
    if masker is None and champion is None:
        raise TypeError("prelabel needs a masker or a champion provider")
    report = PrelabelReport()
    with file_lock(settings.run_dir / "prelabel.lock"):
        photos = sorted(p for p in inbox.iterdir() if p.is_file() and not p.name.startswith("."))
        if not photos:
            report.model_version = "none"
            return report
        project_id = ensure_project(settings)
        existing = task_shas(settings, project_id)
        masker = masker or default_masker(settings, champion, sam_checkpoint)
        report.model_version = masker.model_version
        for path in tqdm(photos, desc="pre-labelling", unit="photo"):
            data = path.read_bytes()
            try:
                image = decode_image(data, path.name, settings.max_megapixels, settings.min_photo_side)
            except BadImage as e:
                _reject(path, str(e))
                report.rejected[path.name] = str(e)
                continue
            sha = sha256_bytes(data)
            if sha in existing:
                report.already_there[path.name] = existing[sha]
                _move(path, inbox / DONE)
                continue
            labelled = masker(image, sha)
            found = labelled.masks
            served, served_name = served_copy(data, image, path.name)
            url = upload_photo(settings, project_id, served, served_name)
            task_data: dict[str, Any] = {
                IMAGE: url,
                "sha256": sha,
                "file_name": path.name,
                "width": image.width,
                "height": image.height,
            }
            if labelled.predicted_count is not None:
                task_data.update(
                    predicted_count=labelled.predicted_count, predicted_count_model=masker.detector.model_version
                )
            predictions = []
            if found:
                predictions.append(
                    {
                        "model_version": masker.model_version,
                        "score": labelled.score,
                        "result": [brush_result(m, s) for m, s in found],
                    }
                )
            task_id = create_task(settings, project_id, task_data, predictions)
            existing[sha] = task_id
            report.imported[path.name] = task_id
            report.predictions[path.name] = len(found)
            _move(path, inbox / DONE)
        if masker.detector is not None and any(report.predictions.values()):
            # the champion's predictions are the ones to sort by (Label Studio accepts a version
            # only once predictions of it exist)
            set_model_version(settings, project_id, masker.model_version)
    return report


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{sha256_bytes(path.read_bytes())[:12]}-{path.name}"
    shutil.move(path, target)
    return target


def _reject(path: Path, reason: str) -> None:
    target = _move(path, path.parent / REJECTED)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
    log.warning("rejected %s: %s", path.name, reason)
