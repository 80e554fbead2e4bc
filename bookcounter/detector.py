"""What the annotator needs of the champion model, without importing the trainer.

:class:`trainer.predictor.Predictor` satisfies :class:`Detector` structurally; the champion is
handed to the annotator as a :class:`DetectorProvider` by its callers (``flows/``, the CLI and
``serving.ml_backend_app``), so ``annotator`` never imports ``trainer``.
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

    def predict(self, image: Image.Image, threshold: float | None = None) -> Sequence[Instance]: ...  # default: its threshold

    def masks_for_boxes(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray: ...


class DetectorProvider(Protocol):
    """The current champion, or None while there is none (asked again on every use)."""

    def __call__(self) -> Detector | None: ...
