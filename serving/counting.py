"""One photo in, the books the loaded model finds out.

The photo goes to the predictor as it is: :class:`trainer.predictor.Predictor` makes the
network input (the same function as training and evaluation). Boxes come back in original
pixels; masks at the network's input size (or the photo's, if smaller), so a 50-megapixel
upload costs memory for small masks; they are scaled up only when encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from bookcounter import masks as rle
from serving.overlay import render_overlay

if TYPE_CHECKING:
    from serving.model_slot import LoadedModel
    from trainer.predictor import Instance

OVERLAY_MAX_SIDE = 1280


@dataclass
class Prediction:
    """Instances found on ``original``."""

    original: Image.Image  # the uploaded photo, EXIF applied
    mask_size: tuple[int, int]  # (w, h) of the instances' masks: the network's input size, or the photo's if smaller
    instances: list[Instance]  # best score first; boxes in original pixels, masks at ``mask_size``
    model_version: str
    threshold: float

    @property
    def original_size(self) -> tuple[int, int]:
        return self.original.size

    @property
    def count(self) -> int:
        return len(self.instances)

    def to_json(self, elapsed_ms: float) -> dict[str, Any]:
        """The ``POST /count`` answer: bbox ``[x, y, w, h]`` and mask RLE in original pixels."""
        return {
            "count": self.count,
            "model_version": self.model_version,
            "threshold": self.threshold,
            "elapsed_ms": round(elapsed_ms, 1),
            "width": self.original_size[0],
            "height": self.original_size[1],
            "instances": [
                {"score": round(float(inst.score), 4), "bbox": bbox, "mask": mask}
                for inst, bbox, mask in zip(self.instances, self._boxes_xywh(), self._masks_rle())
            ],
        }

    def overlay_png(self, max_side: int = OVERLAY_MAX_SIDE) -> bytes:
        """The photo (at most ``max_side`` px) with each book's mask and number drawn."""
        shown = downscale(self.original, max_side)
        masks = [inst.mask for inst in self.instances]
        if shown.size != self.mask_size:
            masks = resize_masks(masks, shown.size)
        return render_overlay(shown, masks, f"{self.count} books - model v{self.model_version}")

    def _boxes_xywh(self) -> list[list[float]]:
        out = []
        for inst in self.instances:
            x0, y0, x1, y1 = inst.box
            out.append([round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1)])
        return out

    def _masks_rle(self) -> list[rle.RLE]:
        if self.original_size == self.mask_size:
            return [rle.encode(inst.mask) for inst in self.instances]
        return upscale_masks_rle([inst.mask for inst in self.instances], self.original_size)


def upscale_masks_rle(small_masks: list[np.ndarray], size: tuple[int, int]) -> list[rle.RLE]:
    """Nearest-neighbour upscale of each mask to ``size`` (w, h), as RLE.

    Only each mask's bounding region is resampled, into one reused Fortran-ordered buffer, so a
    50-megapixel photo with many books costs one full-size buffer, not one per book.
    """
    width, height = size
    if not small_masks:
        return []
    h, w = small_masks[0].shape
    src_row, src_col = _nearest(height, h), _nearest(width, w)
    buffer = np.zeros((height, width), dtype=np.uint8, order="F")
    out = []
    for small in small_masks:
        rows, cols = np.flatnonzero(small.any(axis=1)), np.flatnonzero(small.any(axis=0))
        if rows.size == 0:
            out.append(rle.encode(buffer))
            continue
        r0, r1 = np.searchsorted(src_row, rows[0], "left"), np.searchsorted(src_row, rows[-1], "right")
        c0, c1 = np.searchsorted(src_col, cols[0], "left"), np.searchsorted(src_col, cols[-1], "right")
        buffer[r0:r1, c0:c1] = small[np.ix_(src_row[r0:r1], src_col[c0:c1])]
        out.append(rle.encode(buffer))
        buffer[r0:r1, c0:c1] = 0
    return out


def resize_masks(masks: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Nearest-neighbour resize of HxW bool masks to ``size`` (w, h)."""
    if not masks:
        return []
    h, w = masks[0].shape
    rows, cols = _nearest(size[1], h), _nearest(size[0], w)
    return [m[np.ix_(rows, cols)] for m in masks]


def _nearest(n_out: int, n_in: int) -> np.ndarray:
    """For each of ``n_out`` output pixels, the input pixel whose centre is nearest."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.intp), n_in - 1)


def downscale(image: Image.Image, max_side: int) -> Image.Image:
    """For display: at most ``max_side`` pixels on the longer side."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def count_books(image: Image.Image, model: LoadedModel) -> Prediction:
    """Predict with ``model`` on ``image`` (upright RGB)."""
    net = model.predictor.input_size(image.size)
    mask_size = net if net[0] < image.width else image.size  # never larger than the photo
    instances = sorted(model.predictor.predict(image, mask_size=mask_size), key=lambda inst: -inst.score)
    return Prediction(
        original=image,
        mask_size=mask_size,
        instances=instances,
        model_version=model.version,
        threshold=float(model.predictor.threshold),
    )
