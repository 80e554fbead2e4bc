"""Instance masks as pycocotools RLE, the one mask format stored and served."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]  # {"size": [h, w], "counts": str}


def encode(mask: np.ndarray) -> RLE:
    """Binary HxW mask -> JSON-ready compressed RLE."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode(rle: RLE) -> np.ndarray:
    """Compressed (str or bytes counts) or uncompressed RLE -> HxW bool mask."""
    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    elif isinstance(rle["counts"], str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def from_polygons(polygons: list[list[float]], height: int, width: int) -> RLE:
    """COCO polygons (absolute pixel coordinates, clipped by pycocotools) -> one merged RLE."""
    rles = mask_utils.frPyObjects(polygons, height, width)
    rle = mask_utils.merge(rles)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def area(rle: RLE) -> int:
    return int(mask_utils.area(_compressed(rle)))


def bbox(rle: RLE) -> list[float]:
    """[x, y, w, h] of the mask's pixels."""
    return [float(v) for v in mask_utils.toBbox(_compressed(rle))]


def iou(a: list[RLE], b: list[RLE]) -> np.ndarray:
    """(len(a), len(b)) IoU of every pair of masks (pycocotools, on the RLEs; no decoding)."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou([_compressed(r) for r in a], [_compressed(r) for r in b], [0] * len(b))).reshape(
        len(a), len(b)
    )


def _compressed(rle: RLE) -> dict:
    if isinstance(rle["counts"], str):
        return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return rle
