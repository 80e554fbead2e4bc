"""Reading a COCO instances file from elsewhere into :class:`NewImage` items for the store.

Every problem is found before the store is touched. Errors name the file and the item; a
photo over the megapixel limit or under the minimum size is refused (its header is enough);
polygons reaching outside the image are clipped (a warning), masks of zero area are skipped
and counted in the report.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bookcounter import masks
from bookcounter.dataset_store import SPLITS, DatasetError, NewImage
from bookcounter.images import BadImage, check_photo


def read_coco(
    json_path: Path,
    images_dir: Path,
    split: str | None = None,
    max_megapixels: float | None = None,
    min_side: int | None = None,
) -> tuple[list[NewImage], dict[str, Any]]:
    """Parse and check one COCO file; ``split`` overrides the split it gives; photos outside
    ``max_megapixels``/``min_side`` (the serving limits) are refused.

    A source gives a split per image (an image field ``split``) or for the whole file (its
    name is ``train.json``, ``val.json`` or ``test.json``).
    """
    coco = _load_json(json_path)
    file_split = split or (json_path.stem if json_path.stem in SPLITS else None)
    categories = {c["id"] for c in coco["categories"] if isinstance(c, dict) and "id" in c}

    images: dict[Any, dict] = {}
    for im in coco["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise DatasetError(f"{json_path}: image entry without 'id' and 'file_name': {str(im)[:80]}")
        if im["id"] in images:
            raise DatasetError(f"{json_path}: duplicate image id {im['id']}")
        images[im["id"]] = im

    per_image: dict[Any, list[dict]] = {i: [] for i in images}
    seen_ann: set = set()
    for a in coco["annotations"]:
        where = f"{json_path}: annotation {a.get('id')}"
        if a.get("id") in seen_ann:
            raise DatasetError(f"{json_path}: duplicate annotation id {a.get('id')}")
        seen_ann.add(a.get("id"))
        if a.get("image_id") not in images:
            raise DatasetError(f"{where}: unknown image id {a.get('image_id')}")
        if a.get("category_id") not in categories:
            raise DatasetError(f"{where}: unknown category id {a.get('category_id')}")
        per_image[a["image_id"]].append(a)

    report: Counter = Counter()
    warnings: list[str] = []
    items = []
    for image_id, im in tqdm(images.items(), desc=f"reading {json_path.name}", unit="img", leave=False):
        path = images_dir / im["file_name"]
        if not path.is_file():
            raise DatasetError(f"{json_path}: image {image_id}: file {path} not found")
        data = path.read_bytes()
        try:
            check_photo(data, str(path), max_megapixels, min_side)
        except BadImage as e:
            raise DatasetError(f"{json_path}: image {image_id}: {e}") from None
        height, width = im.get("height"), im.get("width")
        if not (isinstance(height, int) and isinstance(width, int)) or height <= 0 or width <= 0:
            raise DatasetError(f"{json_path}: image {image_id}: missing or bad width/height")
        rles = []
        for a in per_image[image_id]:
            rle, clipped = _to_rle(a, height, width, f"{json_path}: annotation {a.get('id')}")
            if clipped:
                report["clipped_polygons"] += 1
                warnings.append(f"{path.name}: annotation {a.get('id')} reaches outside the image; clipped")
            if rle is None or masks.area(rle) == 0:
                report["skipped_zero_area"] += 1
                continue
            rles.append(rle)
        image_split = im.get("split", file_split)
        if image_split is not None and image_split not in SPLITS:
            raise DatasetError(f"{json_path}: image {image_id}: unknown split {image_split!r}")
        items.append(NewImage(data, im["file_name"], rles, image_split))
        report["images"] += 1
        report["books"] += len(rles)
    return items, {**report, "warnings": warnings}


def _load_json(path: Path) -> dict[str, Any]:
    try:
        coco = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(coco, dict):
        raise DatasetError(f"{path}: not a COCO instances file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DatasetError(f"{path}: not a COCO instances file (no '{key}' list)")
    return coco


def _to_rle(ann: dict, height: int, width: int, where: str) -> tuple[masks.RLE | None, bool]:
    """The annotation's mask as RLE (None if degenerate) and whether a polygon was clipped."""
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        if list(seg.get("size", [])) != [height, width]:
            raise DatasetError(f"{where}: RLE size {seg.get('size')} is not the image's [{height}, {width}]")
        return masks.encode(masks.decode(seg)), False
    if not isinstance(seg, list) or not all(isinstance(p, list) for p in seg):
        raise DatasetError(f"{where}: segmentation is neither polygons nor RLE")
    polygons = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]
    if not polygons:
        return None, False
    try:
        xs = [float(v) for p in polygons for v in p[0::2]]
        ys = [float(v) for p in polygons for v in p[1::2]]
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: polygon has non-numeric coordinates") from None
    clipped = min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height
    if clipped:
        polygons = [
            [min(max(v, 0.0), width if i % 2 == 0 else height) for i, v in enumerate(map(float, p))] for p in polygons
        ]
    return masks.from_polygons(polygons, height, width), clipped
