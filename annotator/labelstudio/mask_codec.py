"""Masks to and from Label Studio's results: brush RLE (pixel for pixel) and polygons."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import numpy as np
from label_studio_sdk.converter import brush

from annotator.labelstudio.errors import LabelStudioError
from annotator.labelstudio.label_config import BRUSH, IMAGE, LABEL
from bookcounter import masks


def brush_result(mask: np.ndarray, score: float | None = None, from_name: str = BRUSH) -> dict[str, Any]:
    """A boolean HxW mask as one Label Studio brush result (RLE of the SDK converter's format)."""
    h, w = mask.shape
    result: dict[str, Any] = {
        "id": uuid.uuid4().hex[:10],
        "from_name": from_name,
        "to_name": IMAGE,
        "type": "brushlabels",
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": [LABEL]},
    }
    if score is not None:
        result["score"] = float(score)
    return result


_RLE_SIZES = (3, 4, 8, 16)  # bits of a run's length field, by size index (the SDK's defaults)


def brush_rle(mask: np.ndarray) -> list[int]:
    """``brush.mask2rle(mask * 255)`` bit for bit, vectorised.

    The SDK encodes run by run in Python: ~100 ms for a ragged 640x640 mask, most of an
    interactive click's budget; this takes a few ms. tests/test_ml_backend.py checks both agree.
    Format: 32-bit value count, 5-bit word size - 1, four 4-bit run-length sizes - 1, then per
    run ``1 <size index:2> <length - 1> <value:8>`` (``0 00 000 <value:8>`` for a run of one),
    runs over 2**16 split into chunks of 2**16; zero-padded to whole bytes.
    """
    pixels = np.asarray(mask, dtype=bool).ravel()  # each pixel is 4 equal RGBA values in the format
    header = f"{4 * pixels.size:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in _RLE_SIZES)
    ends = (
        np.append(np.flatnonzero(pixels[1:] != pixels[:-1]), pixels.size - 1) if pixels.size else np.zeros(0, np.int64)
    )
    lengths = 4 * np.diff(np.append(-1, ends))
    values = np.where(pixels[ends], 255, 0)
    chunks = np.where(lengths > 1 << 16, (lengths - 1) >> 16, 0)  # extra 2**16 pieces before the last
    pieces = chunks + 1
    run = np.repeat(np.arange(len(lengths)), pieces)
    k = np.arange(len(run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    last = k == chunks[run]
    length = lengths[run]
    single = length == 1
    size_index = np.where(single, 0, np.select([length <= 8, length <= 16, length <= 256], [0, 1, 2], 3))
    length_bits = np.where(single, 3, np.array(_RLE_SIZES)[size_index])
    length_field = np.where(single, 0, np.where(last, length - (chunks[run] << 16) - 1, (1 << 16) - 1))
    code = ((((~single).astype(np.int64) << 2 | size_index) << length_bits | length_field) << 8) | values[run]
    width = 11 + length_bits
    pos = np.arange(27)
    bits = ((code[:, None] >> np.maximum(width[:, None] - 1 - pos, 0)) & 1)[pos < width[:, None]]
    allbits = np.concatenate([np.frombuffer(header.encode(), np.uint8) - 48, bits.astype(np.uint8)])
    allbits = np.concatenate([allbits, np.zeros(8 - len(allbits) % 8, np.uint8)])
    return np.packbits(allbits).tolist()


def result_mask(result: dict[str, Any], height: int, width: int) -> np.ndarray | None:
    """The boolean HxW mask of one brush or polygon result; None for any other kind of result.

    Brush RLE is decoded pixel for pixel (no polygon approximation). Polygon points are percent
    coordinates of the image, rasterised at the image's pixel size.
    """
    kind = result.get("type")
    value = result.get("value") or {}
    if kind == "brushlabels":
        if value.get("format", "rle") != "rle" or not value.get("rle"):
            return np.zeros((height, width), bool)
        flat = brush.decode_rle(value["rle"])
        if flat.size != height * width * 4:
            raise LabelStudioError(
                f"brush result {result.get('id')}: {flat.size // 4} pixels, image is {width}x{height}"
            )
        return flat.reshape(height, width, 4)[:, :, 3] > 127
    if kind == "polygonlabels":
        points = value.get("points") or []
        if len(points) < 3:
            return np.zeros((height, width), bool)
        poly = [c for x, y in points for c in (x * width / 100.0, y * height / 100.0)]
        return masks.decode(masks.from_polygons([poly], height, width))
    return None


def annotation_masks(
    annotation: dict[str, Any], height: int, width: int, report: Counter | None = None
) -> list[masks.RLE]:
    """The non-empty brush/polygon masks of one annotation (or prediction) as RLE; prompts are left out."""
    rles = []
    for result in annotation.get("result") or []:
        mask = result_mask(result, height, width)
        if mask is None:
            continue  # a prompt (keypoint, rectangle) or another kind of result
        if not mask.any():
            if report is not None:
                report["empty_masks_skipped"] += 1
            continue
        rles.append(masks.encode(mask))
    return rles
