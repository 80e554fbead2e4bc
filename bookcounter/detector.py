"""What the annotator needs of the champion model, without importing the trainer.

:class:`trainer.predictor.Predictor` satisfies :class:`Detector` structurally; the champion is
handed to the annotator as a :class:`DetectorProvider` by its callers (``flows/``, the CLI and
``serving.ml_backend.server``), so ``annotator`` never imports ``trainer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image


class Instance(Protocol):
    """One detected book: a mask at the photo's size, its score and its box (x0, y0, x1, y1)."""

    @property
    def mask(self) -> np.ndarray: ...

    @property
    def score(self) -> float: ...

    @property
    def box(self) -> Sequence[float]: ...


class Detector(Protocol):
    """A trained model that finds books and paints masks inside given boxes."""

    @property
    def model_version(self) -> str: ...

    @property
    def threshold(self) -> float: ...  # the counting threshold

    def predict(
        self, image: Image.Image, threshold: float | None = None
    ) -> Sequence[Instance]: ...  # default: its threshold

    def masks_for_boxes(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray: ...


class DetectorProvider(Protocol):
    """The current champion, or None while there is none (asked again on every use)."""

    def __call__(self) -> Detector | None: ...


# A book's box as a share of the photo (width, height) where the photo itself says nothing:
# the median box of the open-shelves train split is 9.6 % x 52.6 % of its photo.
TYPICAL_BOOK = (0.10, 0.50)


def mask_under_click(
    detector: Detector, image: Image.Image, points: np.ndarray, labels: np.ndarray, instances: Sequence[Instance]
) -> tuple[np.ndarray, float]:
    """The champion's answer to a click when there is no SAM: (HxW bool mask, score).

    ``points`` are (N, 2) pixel x, y; ``labels`` 1 = positive, 0 = negative; ``instances`` are
    ``detector.predict(image)`` (the caller may cache them per photo). The answer is the
    best-scoring instance whose mask holds every positive point and no negative one. When none
    does, the mask head paints a box of a typical book's size (the median box of ``instances``,
    else :data:`TYPICAL_BOOK` of the photo) centred on the positive points; its score is 0.
    No positive point: an empty mask.
    """
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2).astype(int)
    positive = np.asarray(labels).reshape(-1) == 1
    if not positive.any():
        return np.zeros((image.height, image.width), bool), 0.0
    for inst in sorted(instances, key=lambda i: -i.score):
        x0, y0, x1, y1 = inst.box
        if not all(x0 - 1 <= x <= x1 + 1 and y0 - 1 <= y <= y1 + 1 for x, y in xy[positive]):
            continue  # cheap test first: the box must hold the positive points
        mask = np.asarray(inst.mask, dtype=bool)
        hits = mask[xy[:, 1], xy[:, 0]]
        if hits[positive].all() and not hits[~positive].any():
            return mask, float(inst.score)
    if instances:
        sizes = np.array([(b[2] - b[0], b[3] - b[1]) for b in (i.box for i in instances)], dtype=np.float64)
        w, h = np.median(sizes, axis=0)
    else:
        w, h = TYPICAL_BOOK[0] * image.width, TYPICAL_BOOK[1] * image.height
    cx, cy = xy[positive].mean(axis=0)
    box = np.array(
        [max(cx - w / 2, 0.0), max(cy - h / 2, 0.0), min(cx + w / 2, image.width), min(cy + h / 2, image.height)],
        dtype=np.float32,
    )
    return np.asarray(detector.masks_for_boxes(image, box[None])[0], dtype=bool), 0.0
