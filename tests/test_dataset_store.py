"""The versioned COCO dataset store: the contract between annotator and trainer."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bad_images import BOMB_MESSAGE, TINY_MESSAGE, bomb_png, tiny_jpeg
from PIL import Image

from annotator.coco_import import read_coco
from bookcounter import masks
from bookcounter.dataset_store import DatasetStore, NewImage, hash_split


def _jpeg(w: int = 96, h: int = 72, seed: int = 0) -> bytes:
    """Noise; the default size is over the minimum photo size (64 px shorter side)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _write_coco(
    folder: Path, images: list[tuple[str, bytes]], annotations: list[dict], name: str = "data.json"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (fname, data) in enumerate(images, start=1):
        (folder / fname).write_bytes(data)
        w, h = Image.open(io.BytesIO(data)).size
        entries.append({"id": i, "file_name": fname, "width": w, "height": h})
    path = folder / name
    path.write_text(
        json.dumps({"images": entries, "annotations": annotations, "categories": [{"id": 1, "name": "book"}]})
    )
    return path


def _box(ann_id: int, image_id: int, x0: float, y0: float, x1: float, y1: float) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}


def _cli(*args: str, state: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BOOKCOUNTER_STATE_DIR": str(state)}
    return subprocess.run(
        [sys.executable, "-c", "from flows.main import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_polygon_to_rle_area_within_one_percent() -> None:
    triangle = [[10, 10, 410, 10, 10, 310]]
    assert abs(masks.area(masks.from_polygons(triangle, 480, 640)) - 0.5 * 400 * 300) / (0.5 * 400 * 300) < 0.01
    big = [[5.5, 7.25, 405.5, 7.25, 405.5, 307.25, 5.5, 307.25]]
    assert abs(masks.area(masks.from_polygons(big, 480, 640)) - 400 * 300) / (400 * 300) < 0.01


def test_sample_polygons_become_rle_with_area_within_one_percent(sample_dir: Path) -> None:
    """Per photo, the rasterised books cover the polygons' area within 1 %.

    (A single thin spine can differ by ~3 %: pixel-centre sampling rounds a 37.5 px wide
    polygon to 37 px. Summed over a photo these edge effects cancel.)
    """
    coco = json.loads((sample_dir / "test.json").read_text())
    for im in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        polygon_area = sum(a["area"] for a in anns)
        rle_area = sum(masks.area(masks.from_polygons(a["segmentation"], im["height"], im["width"])) for a in anns)
        assert abs(rle_area - polygon_area) / polygon_area < 0.01, im["file_name"]


def test_import_then_reimport_is_a_noop(tmp_path: Path) -> None:
    src = _write_coco(
        tmp_path / "src",
        [("a.jpg", _jpeg(seed=1)), ("b.jpg", _jpeg(seed=2))],
        [_box(1, 1, 5, 5, 20, 40), _box(2, 1, 25, 5, 40, 40), _box(3, 2, 5, 5, 60, 20)],
    )
    store = DatasetStore(tmp_path / "store")
    items, report = read_coco(src, src.parent)
    first = store.commit(items, {"name": "t"})
    assert first.created and first.version.name == "v0001"
    coco = first.version.coco()
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 3
    ann = coco["annotations"][0]
    assert isinstance(ann["segmentation"]["counts"], str)
    assert ann["area"] == masks.area(ann["segmentation"]) and ann["bbox"] == masks.bbox(ann["segmentation"])
    assert store.verify("v0001") == []
    before = _tree(store.root)
    again = store.commit(read_coco(src, src.parent)[0], {"name": "t"})
    assert not again.created and again.version.name == "v0001"
    assert _tree(store.root) == before
    # Images are stored once, by content; versions and images are read-only: no write bit on the
    # version folder, its files or the image blobs (mode bits, so this holds when tests run as root)
    blobs = [p for p in (store.root / "images").rglob("*") if p.is_file()]
    assert len(blobs) == 2
    read_only = [first.version.path, *first.version.path.iterdir(), *blobs]
    assert sorted(p.name for p in first.version.path.iterdir()) == ["annotations.json", "manifest.json"]
    assert [p for p in read_only if os.stat(p).st_mode & 0o222] == []


def test_test_split_is_frozen_across_versions(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store", test_fraction=0.3, val_fraction=0.2)
    photos = [NewImage(_jpeg(seed=s), f"p{s}.jpg", []) for s in range(30)]
    v1 = store.commit(photos[:20], {"name": "r1"}).version
    test1 = {im["sha256"] for im in v1.coco("test")["images"]}
    assert test1, "hash rule should send some of 20 photos to test"
    assert all(hash_split(s, 0.3, 0.2) == "test" for s in test1)
    # The second version adds photos and claims every old one is train: test stays test.
    relabelled = [NewImage(p.data, p.file_name, [], split="train") for p in photos[:20]]
    result = store.commit(relabelled + photos[20:], {"name": "r2"})
    v2 = result.version
    assert v2.name == "v0002" and v2.manifest()["parent"] == "v0001"
    test2 = {im["sha256"] for im in v2.coco("test")["images"]}
    assert test1 <= test2
    assert len(v2.coco()["images"]) == 30
    assert any("stays in test" in line for line in result.report["split_kept"])


def test_source_splits_are_kept(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store")
    items = [NewImage(_jpeg(seed=s), f"p{s}.jpg", [], split="test" if s < 5 else "val") for s in range(10)]
    v = store.commit(items, {"name": "s"}).version
    assert v.manifest()["counts"]["test"]["images"] == 5 and v.manifest()["counts"]["val"]["images"] == 5


def test_verify_detects_one_flipped_byte(tmp_path: Path) -> None:
    src = _write_coco(tmp_path / "src", [("a.jpg", _jpeg(seed=1))], [_box(1, 1, 5, 5, 20, 40)])
    store = DatasetStore(tmp_path / "store")
    v = store.commit(read_coco(src, src.parent)[0], {"name": "t"}).version
    blob = next((store.root / "images").iterdir())
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    problems = store.verify(v.name)
    assert len(problems) == 1 and blob.name in problems[0] and "sha256 changed" in problems[0]
    r = _cli("dataset", "verify", "v0001", state=tmp_path / "state")
    assert r.returncode == 1  # no store there: the one-line error


@pytest.mark.slow  # the bookcounter command in a subprocess: torch and all imported each time
def test_cli_import_list_verify_and_noop(tmp_path: Path) -> None:
    src = _write_coco(tmp_path / "src", [("a.jpg", _jpeg(seed=1))], [_box(1, 1, 5, 5, 20, 40)], name="train.json")
    state = tmp_path / "state"
    r = _cli("dataset", "import-coco", str(src), "--images", str(src.parent), state=state)
    assert r.returncode == 0, r.stderr
    assert "created v0001" in r.stdout and "1 train" in r.stdout
    r = _cli("dataset", "import-coco", str(src), "--images", str(src.parent), state=state)
    assert r.returncode == 0 and "unchanged" in r.stdout and "v0001" in r.stdout
    r = _cli("dataset", "verify", "v0001", state=state)
    assert r.returncode == 0 and "intact" in r.stdout
    r = _cli("dataset", "list", state=state)
    assert "v0001" in r.stdout


def test_polygon_outside_image_is_clipped_and_zero_area_is_skipped(tmp_path: Path) -> None:
    src = _write_coco(
        tmp_path / "src",
        [("a.jpg", _jpeg(64, 48, seed=1))],
        [_box(1, 1, -10, 5, 20, 40), _box(2, 1, 30, 10, 30, 10), _box(3, 1, 70, 10, 90, 30)],
    )
    items, report = read_coco(src, src.parent)
    assert report["clipped_polygons"] == 2 and report["skipped_zero_area"] == 2
    assert len(items[0].masks) == 1
    assert masks.bbox(items[0].masks[0]) == [0.0, 5.0, 20.0, 35.0]


BAD_INPUTS = {
    "missing image": ("missing.jpg", None, "not found"),
    "corrupt image": ("bad.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 20, "not an image"),
    "non-image file": ("notes.jpg", b"just some text, not a photo", "not an image"),
    "truncated jpeg": ("trunc.jpg", "truncate", "corrupt or truncated"),
    "decompression bomb": ("bomb.png", bomb_png(), BOMB_MESSAGE),
    "too small to count": ("tiny.jpg", tiny_jpeg(), TINY_MESSAGE),
}


@pytest.mark.slow  # the bookcounter command in a subprocess: torch and all imported each time
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_image_files_fail_cleanly(tmp_path: Path, case: str) -> None:
    fname, data, message = BAD_INPUTS[case]
    src = _write_coco(tmp_path / "src", [("good.jpg", _jpeg(seed=1))], [_box(1, 1, 5, 5, 20, 40)])
    coco = json.loads(src.read_text())
    coco["images"].append({"id": 2, "file_name": fname, "width": 64, "height": 48})
    if data == "truncate":
        data = _jpeg(seed=3)[:300]
    if data is not None:
        (src.parent / fname).write_bytes(data)
    src.write_text(json.dumps(coco))
    _assert_cli_error(tmp_path, src, [fname, message])


BAD_JSON = {
    "unknown category": (lambda c: c["annotations"][0].update(category_id=7), "unknown category id 7"),
    "duplicate image id": (lambda c: c["images"].append(dict(c["images"][0])), "duplicate image id 1"),
    "duplicate annotation id": (
        lambda c: c["annotations"].append(dict(c["annotations"][0])),
        "duplicate annotation id 1",
    ),
    "not coco": (lambda c: c.pop("annotations"), "not a COCO instances file"),
    "unknown image": (lambda c: c["annotations"][0].update(image_id=99), "unknown image id 99"),
}


@pytest.mark.slow  # the bookcounter command in a subprocess: torch and all imported each time
@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_bad_coco_json_fails_cleanly(tmp_path: Path, case: str) -> None:
    mutate, message = BAD_JSON[case]
    src = _write_coco(tmp_path / "src", [("good.jpg", _jpeg(seed=1))], [_box(1, 1, 5, 5, 20, 40)])
    coco = json.loads(src.read_text())
    mutate(coco)
    src.write_text(json.dumps(coco))
    _assert_cli_error(tmp_path, src, [src.name, message])


@pytest.mark.slow  # the bookcounter command in a subprocess: torch and all imported each time
def test_invalid_json_fails_cleanly(tmp_path: Path) -> None:
    src = tmp_path / "src" / "data.json"
    src.parent.mkdir()
    src.write_text("{not json")
    _assert_cli_error(tmp_path, src, ["data.json", "not valid JSON"])


def _assert_cli_error(tmp_path: Path, src: Path, needles: list[str]) -> None:
    state = tmp_path / "state"
    # A first good version, so "unchanged" means unchanged rather than still empty.
    good = _write_coco(tmp_path / "good", [("g.jpg", _jpeg(seed=9))], [_box(1, 1, 5, 5, 20, 40)])
    assert _cli("dataset", "import-coco", str(good), "--images", str(good.parent), state=state).returncode == 0
    before = _tree(state / "datasets")
    r = _cli("dataset", "import-coco", str(src), "--images", str(src.parent), state=state)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and r.stderr.rstrip().endswith(lines[0]), r.stderr  # progress bars may precede it
    for needle in needles:
        assert needle in lines[0]
    assert _tree(state / "datasets") == before


def test_open_shelves_imports_as_v0001_with_its_splits(sample_dir: Path, tmp_path: Path) -> None:
    """The README's import of the real sample: 100 train / 34 val / 15 test photos, 3034 books."""
    files = [sample_dir / f"{split}.json" for split in ("train", "val", "test")]
    r = _cli("dataset", "import-coco", *map(str, files), "--images", str(sample_dir), state=tmp_path / "state")
    assert r.returncode == 0, r.stderr
    assert "created v0001  100 train, 34 val, 15 test photos, 3034 books" in r.stdout
    store = DatasetStore(tmp_path / "state" / "datasets")
    assert store.verify("v0001") == []
    originals = {im["original_file_name"].split("/")[0] for im in store.get("v0001").coco("test")["images"]}
    assert originals == {"test"}  # the source's own test split is kept
