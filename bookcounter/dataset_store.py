"""Immutable, versioned COCO datasets: the contract between the annotator and the trainer.

Layout under the store root (``var/datasets``)::

    images/<sha256><ext>     every photo once, by content, shared by all versions (read-only)
    v0001/annotations.json   COCO instances; masks as RLE; each image carries its ``split``
    v0001/manifest.json      sha256 of every file, parent, provenance, counts per split

A version is the parent's images and masks plus what was added (an image added again
replaces its masks). It is written to a temp dir, fsynced, made read-only and renamed into
place, so a reader sees either the whole version or none; the temp files of a writer that
was killed are removed by the next one. Content equal to an existing version creates nothing.

Splits belong to the image, by sha256, and are frozen at first sight: an image keeps the
split it got in the first version that held it. New images take the split their source gives
(``train``/``val``/``test``), else one from :func:`hash_split`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bookcounter import masks
from bookcounter.atomic import TMP_PREFIX, atomic_write
from bookcounter.errors import UserError
from bookcounter.images import BadImage, decode_image, sha256_bytes, sha256_file
from bookcounter.locks import file_lock

if TYPE_CHECKING:
    from bookcounter.settings import Settings

SPLITS = ("train", "val", "test")
CATEGORIES = [{"id": 1, "name": "book", "supercategory": "object"}]


class DatasetError(UserError):
    """Bad input or a broken version; the message is one line naming the file and item."""


@dataclass
class NewImage:
    """A photo and its book masks, to be added to the store."""

    data: bytes
    file_name: str  # the name it had at its source, kept for people
    masks: list[masks.RLE]  # in upright (EXIF-applied) pixel coordinates
    split: str | None = None  # None: frozen split if known, else the hash rule
    provenance: dict[str, Any] = field(default_factory=dict)  # e.g. Label Studio task/annotation ids

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.data)


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    path: Path

    @property
    def store_root(self) -> Path:
        return self.path.parent

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    def coco(self, split: str | None = None) -> dict[str, Any]:
        """The COCO dict, or the part of it in one split (ids unchanged)."""
        data = json.loads((self.path / "annotations.json").read_text())
        if split is None:
            return data
        images = [im for im in data["images"] if im["split"] == split]
        ids = {im["id"] for im in images}
        return {
            **data,
            "images": images,
            "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
        }

    def image_path(self, image: dict[str, Any]) -> Path:
        return self.store_root / image["file_name"]


@dataclass
class CommitResult:
    version: DatasetVersion
    created: bool
    report: dict[str, Any]


def hash_split(sha256: str, test_fraction: float, val_fraction: float) -> str:
    """Deterministic split of an image from its content hash."""
    u = int(sha256[:16], 16) / 16**16
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


class DatasetStore:
    def __init__(self, root: Path, test_fraction: float = 0.15, val_fraction: float = 0.15):
        self.root = Path(root)
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction

    @classmethod
    def from_settings(cls, settings: Settings) -> DatasetStore:
        """The store under ``settings.state_dir``, with its split fractions."""
        return cls(settings.datasets_dir, settings.test_fraction, settings.val_fraction)

    # --- reading ------------------------------------------------------------------------
    def versions(self) -> list[DatasetVersion]:
        if not self.root.is_dir():
            return []
        names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and _is_version_name(p.name))
        return [DatasetVersion(n, self.root / n) for n in names]

    def latest(self) -> DatasetVersion | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def get(self, name: str) -> DatasetVersion:
        if name == "latest":
            latest = self.latest()
            if latest is None:
                raise DatasetError(f"{self.root}: no dataset version yet (run 'bookcounter dataset import-coco')")
            return latest
        if name.isdigit():
            name = f"v{int(name):04d}"
        path = self.root / name
        if not _is_version_name(name) or not (path / "manifest.json").is_file():
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise DatasetError(f"{name}: no such dataset version (known: {known})")
        return DatasetVersion(name, path)

    def frozen_splits(self) -> dict[str, str]:
        """sha256 -> split of every image any version ever held (first assignment wins)."""
        splits: dict[str, str] = {}
        for v in self.versions():
            for im in v.coco()["images"]:
                splits.setdefault(im["sha256"], im["split"])
        return splits

    def verify(self, name: str) -> list[str]:
        """Recompute every hash of a version; returns one line per problem (empty = intact)."""
        version = self.get(name)
        problems = []
        for rel, expected in version.manifest()["files"].items():
            path = version.path / rel if rel == "annotations.json" else self.root / rel
            if not path.is_file():
                problems.append(f"{rel}: missing")
            elif (actual := sha256_file(path)) != expected:
                problems.append(f"{rel}: sha256 changed (manifest {expected[:12]}, now {actual[:12]})")
        return problems

    # --- writing ------------------------------------------------------------------------
    def commit(self, new: list[NewImage], source: dict[str, Any], report: dict[str, Any] | None = None) -> CommitResult:
        """Write a version holding the latest version's content plus ``new``.

        All images are decoded before anything is written; a bad one raises
        :class:`DatasetError` and leaves the store as it was.
        """
        report = dict(report or {})
        checked = {}
        for item in new:
            try:
                img = decode_image(item.data, item.file_name)
            except BadImage as e:
                raise DatasetError(str(e)) from None
            for i, rle in enumerate(item.masks):
                if list(rle["size"]) != [img.height, img.width]:
                    raise DatasetError(
                        f"{item.file_name}: mask {i} is {rle['size'][1]}x{rle['size'][0]}, "
                        f"image is {img.width}x{img.height}"
                    )
            if item.split is not None and item.split not in SPLITS:
                raise DatasetError(f"{item.file_name}: unknown split {item.split!r} (use train, val or test)")
            checked[item.sha256] = (item, img.width, img.height)

        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / ".lock"):
            self._remove_leftovers()
            parent = self.latest()
            frozen = self.frozen_splits()
            records = _records_of(parent) if parent else {}
            for sha, (item, width, height) in checked.items():
                split = frozen.get(sha) or item.split or hash_split(sha, self.test_fraction, self.val_fraction)
                if item.split and split != item.split:
                    report.setdefault("split_kept", []).append(
                        f"{item.file_name}: stays in {split} (source says {item.split})"
                    )
                suffix = Path(item.file_name).suffix.lower() or ".jpg"
                records[sha] = {
                    "sha256": sha,
                    "file_name": f"images/{sha}{suffix}",
                    "original_file_name": item.file_name,
                    "width": width,
                    "height": height,
                    "split": split,
                    "provenance": item.provenance,
                    "masks": [m for m in item.masks if masks.area(m) > 0],
                }
            coco = _build_coco(records)
            content_hash = sha256_bytes(_canonical(coco))
            for v in self.versions():
                if v.manifest()["content_hash"] == content_hash:
                    return CommitResult(v, False, report)

            for sha, (item, _, _) in checked.items():
                self._write_blob(records[sha]["file_name"], item.data)
            name = f"v{(int(parent.name[1:]) + 1) if parent else 1:04d}"
            manifest = {
                "version": name,
                "parent": parent.name if parent else None,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "content_hash": content_hash,
                "source": source,
                "added": [
                    {"sha256": sha, "file_name": item.file_name, **item.provenance}
                    for sha, (item, _, _) in checked.items()
                ],
                "counts": _counts(coco),
                "report": report,
                "files": {},
            }
            version = self._write_version(name, coco, manifest)
        return CommitResult(version, True, report)

    def _remove_leftovers(self) -> None:
        """Remove the temp files and dirs of a writer that was killed (only a lock holder makes them)."""
        for tmp in [*self.root.glob(f"{TMP_PREFIX}*"), *(self.root / "images").glob(f"{TMP_PREFIX}*")]:
            if tmp.is_dir():
                os.chmod(tmp, 0o755)
                shutil.rmtree(tmp)
            else:
                tmp.unlink()

    def _write_blob(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        if path.is_file() and sha256_file(path) == sha256_bytes(data):
            return
        with atomic_write(path, mode=0o444) as tmp:
            tmp.write_bytes(data)

    def _write_version(self, name: str, coco: dict, manifest: dict) -> DatasetVersion:
        annotations = _canonical(coco)
        manifest["files"] = {"annotations.json": sha256_bytes(annotations)}
        manifest["files"].update({im["file_name"]: im["sha256"] for im in coco["images"]})
        with atomic_write(self.root / name, directory=True, mode=0o555) as tmp:
            _write_file(tmp / "annotations.json", annotations)
            _write_file(tmp / "manifest.json", json.dumps(manifest, indent=2).encode())
        return DatasetVersion(name, self.root / name)


def _is_version_name(name: str) -> bool:
    return len(name) == 5 and name[0] == "v" and name[1:].isdigit()


def _records_of(version: DatasetVersion) -> dict[str, dict[str, Any]]:
    coco = version.coco()
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["segmentation"])
    records = {}
    for im in coco["images"]:
        rec = {k: v for k, v in im.items() if k != "id"}
        rec["masks"] = by_image.get(im["id"], [])
        records[im["sha256"]] = rec
    return records


def _build_coco(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    images, annotations = [], []
    for image_id, sha in enumerate(sorted(records), start=1):
        rec = records[sha]
        images.append({"id": image_id, **{k: v for k, v in rec.items() if k != "masks"}})
        for rle in rec["masks"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": masks.area(rle),
                    "bbox": masks.bbox(rle),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def _counts(coco: dict[str, Any]) -> dict[str, dict[str, int]]:
    split_of = {im["id"]: im["split"] for im in coco["images"]}
    images = Counter(im["split"] for im in coco["images"])
    books = Counter(split_of[a["image_id"]] for a in coco["annotations"])
    return {s: {"images": images[s], "books": books[s]} for s in SPLITS}


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _write_file(path: Path, data: bytes) -> None:
    """One file of a version being written: read-only (:func:`atomic_write` fsyncs it)."""
    path.write_bytes(data)
    os.chmod(path, 0o444)
