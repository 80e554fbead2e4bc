"""Counting many photos into one results file: what ``bookcounter count`` and the ``count-folder`` flow share.

A photo is counted exactly as ``POST /count`` counts it (the same size limits and decoding,
:func:`serving.counting.count_books`). The results file (CSV, or JSON lines with the instances)
holds one row per photo and model version. It is only ever appended to, one whole line per
``write`` followed by ``fsync``, so a killed run loses at most the photo in flight; a partial
last line (a crash inside that one write) is cut off when the file is opened again. A re-run
skips every photo whose (sha256, model version) already has a row.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bookcounter.errors import UserError
from bookcounter.images import IMAGE_SUFFIXES, BadImage, decode_image, sha256_bytes, sha256_file
from bookcounter.settings import Settings
from serving.counting import count_books

if TYPE_CHECKING:
    from serving.model_slot import LoadedModel
    from trainer.registry import ModelInfo

FORMATS = ("csv", "json")


@dataclass
class Row:
    """One photo's result; ``error`` is empty when it was counted."""

    path: str
    sha256: str = ""
    count: int | None = None
    model_version: str = ""
    threshold: float | None = None
    width: int | None = None
    height: int | None = None
    seconds: float | None = None
    error: str = ""
    instances: list[dict[str, Any]] | None = field(default=None, repr=False)  # JSON lines only

    @property
    def key(self) -> tuple[str, str]:
        """What makes a row a duplicate: the photo's bytes (its path if unreadable) and the model."""
        return (self.sha256 or f"path:{self.path}", self.model_version)


CSV_COLUMNS = [f.name for f in fields(Row) if f.name != "instances"]


# --- which photos ------------------------------------------------------------------------------
def find_photos(paths: Iterable[Path], recursive: bool = False) -> list[Path]:
    """Photos named directly (whatever their suffix) and the image files of folders, in order.

    A folder without photos or a path that does not exist is a :class:`UserError`.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            inside = sorted(
                p
                for p in path.glob(pattern)
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not inside:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                more = "" if recursive else "; add --recursive to look in its subfolders"
                raise UserError(f"{path}: no photos in this folder (looked for {suffixes}){more}")
            found += inside
        elif path.exists():
            found.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    if not found:
        raise UserError("no photos given: name the photos or folders to count")
    return list(dict.fromkeys(found))


# --- one photo ---------------------------------------------------------------------------------
@dataclass
class Photo:
    """A photo's bytes and hash, or why it cannot be read."""

    path: Path
    data: bytes | None
    sha256: str
    error: str = ""


def read_photo(path: Path, settings: Settings) -> Photo:
    """Read ``path`` under the upload size limit of ``POST /count``."""
    limit = int(settings.max_upload_mb * 1_000_000)
    try:
        if path.stat().st_size > limit:
            return Photo(
                path,
                None,
                sha256_file(path),
                f"{path}: the photo is over the {settings.max_upload_mb:g} MB upload limit (BOOKCOUNTER_MAX_UPLOAD_MB)",
            )
        data = path.read_bytes()
    except OSError as e:
        return Photo(path, None, "", f"{path}: cannot read ({e.strerror or e})")
    return Photo(path, data, sha256_bytes(data))


def count_photo(
    photo: Photo, model: LoadedModel, settings: Settings, overlays: Path | None = None, instances: bool = False
) -> Row:
    """Count one photo as ``POST /count`` does; a bad photo is a row with its one-line reason."""
    row = Row(str(photo.path), photo.sha256, model_version=model.version, error=photo.error)
    if photo.data is None:
        return row
    started = time.perf_counter()
    try:
        image = decode_image(photo.data, str(photo.path), settings.max_megapixels, settings.min_photo_side)
        prediction = count_books(image, model)
    except BadImage as e:
        row.error = str(e)
        return row
    except Exception as e:  # one photo never stops the batch
        row.error = f"{photo.path}: internal error ({type(e).__name__}: {e})".splitlines()[0]
        return row
    row.count, row.threshold = prediction.count, round(prediction.threshold, 4)
    row.width, row.height = prediction.original_size
    if instances:
        row.instances = prediction.to_json(elapsed_ms=0)["instances"]
    if overlays is not None:
        overlays.mkdir(parents=True, exist_ok=True)
        (overlays / overlay_name(photo)).write_bytes(prediction.overlay_png())
    row.seconds = round(time.perf_counter() - started, 3)
    return row


def overlay_name(photo: Photo) -> str:
    """``<stem>-<first 8 of sha256>.png``: photos of the same name in different folders do not collide."""
    return f"{photo.path.stem}-{photo.sha256[:8]}.png"


# --- the model, once per process ---------------------------------------------------------------
_models: dict[tuple[str, str], LoadedModel] = {}
_models_lock = threading.Lock()


def resolve_model(spec: str) -> tuple[Path, ModelInfo]:
    """``champion`` or a version number -> its model directory and registry entry."""
    from trainer import registry

    info = registry.get(spec)
    return registry.model_dir(info.version), info


def load_model(model_dir: Path, info: ModelInfo) -> LoadedModel:
    """The model in ``model_dir``, loaded and warmed up once per process (Dask workers included)."""
    from serving.model_slot import LoadedModel, warm_up
    from trainer.predictor import Predictor

    key = (str(model_dir), info.version)
    with _models_lock:
        if key not in _models:
            started = time.monotonic()
            predictor = Predictor(model_dir, model_version=info.version)
            warm_up(predictor)
            _models[key] = LoadedModel(predictor, info, loaded_at=time.time(), load_seconds=time.monotonic() - started)
        return _models[key]


# --- the results file --------------------------------------------------------------------------
class Results:
    """An append-only results file; ``done`` maps each row's :attr:`Row.key` to its error ("" if counted)."""

    def __init__(self, path: Path, fmt: str = "csv") -> None:
        if fmt not in FORMATS:
            raise UserError(f"unknown format {fmt!r}: choose csv or json")
        self.path, self.format = Path(path), fmt
        self.done: dict[tuple[str, str], str] = {}
        self.books: dict[tuple[str, str], int] = {}
        has_rows = self._cut_partial_line()
        if has_rows:
            for row in self._rows():
                self._note(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if fmt == "csv" and not has_rows:
            self._write_line(",".join(CSV_COLUMNS) + "\n")

    def _cut_partial_line(self) -> bool:
        """Cut off a partial last line (a kill inside the one write of a row); True if whole lines remain."""
        if not self.path.is_file():
            return False
        with open(self.path, "rb+") as f:
            size = pos = f.seek(0, os.SEEK_END)
            while pos > 0:  # back from the end, a block at a time, to the last newline
                step = min(1 << 16, pos)
                pos -= step
                f.seek(pos)
                block = f.read(step)
                if pos + step == size and block.endswith(b"\n"):
                    return True
                if (i := block.rfind(b"\n")) >= 0:
                    pos += i + 1
                    break
            f.truncate(pos)
            os.fsync(f.fileno())
            return pos > 0

    def _rows(self) -> Iterator[Row]:
        with open(self.path, encoding="utf-8", newline="") as f:
            if self.format == "csv":
                reader = csv.DictReader(f)
                if reader.fieldnames != CSV_COLUMNS:
                    raise UserError(
                        f"{self.path}: not a CSV written by 'bookcounter count' (its header differs); "
                        "choose another --out"
                    )
                for rec in reader:
                    yield Row(rec["path"], rec["sha256"], _int(rec["count"]), rec["model_version"], error=rec["error"])
                return
            for n, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                    yield Row(rec["path"], rec["sha256"], rec["count"], rec["model_version"], error=rec["error"])
                except (ValueError, KeyError, TypeError):
                    raise UserError(
                        f"{self.path}:{n}: not a JSON line written by 'bookcounter count --format json'; "
                        "choose another --out"
                    ) from None

    def _note(self, row: Row) -> None:
        self.done[row.key] = row.error
        self.books[row.key] = row.count or 0

    def append(self, row: Row) -> bool:
        """Write ``row`` durably unless a row with its key is there already; False if it was."""
        if row.key in self.done:
            return False
        if self.format == "csv":
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(
                ["" if v is None else v for k, v in asdict(row).items() if k != "instances"]
            )
            line = buf.getvalue()
        else:
            line = json.dumps(asdict(row), separators=(",", ":")) + "\n"
        self._write_line(line)
        self._note(row)
        return True

    def _write_line(self, line: str) -> None:
        data = line.encode("utf-8")
        written = os.write(self._fd, data)  # one write of the whole line (O_APPEND)
        if written != len(data):
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes); is the disk full?")
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _int(value: str) -> int | None:
    return int(value) if value else None


# --- the batch in one process (``bookcounter count``) -------------------------------------------
def count_all(
    photos: list[Path],
    model: LoadedModel,
    results: Results,
    settings: Settings,
    tally: Tally,
    overlays: Path | None = None,
    progress: bool = True,
) -> None:
    """Count every photo not yet in ``results`` into it, one durable row each, with a progress bar."""
    from tqdm import tqdm

    with tqdm(photos, unit="photo", disable=not progress, dynamic_ncols=True, desc="counting") as bar:
        for path in bar:
            photo = read_photo(path, settings)
            key = Row(str(path), photo.sha256, model_version=model.version).key
            if key in results.done:
                tally.skip(results, key)
            else:
                row = count_photo(photo, model, settings, overlays, instances=results.format == "json")
                results.append(row)
                tally.add(row)
            bar.set_postfix(books=tally.books, failed=tally.failed, refresh=False)


# --- the summary -------------------------------------------------------------------------------
@dataclass
class Tally:
    """Books over every photo of the batch (counted now or before), and what happened to each."""

    books: int = 0
    counted: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_failed: int = 0  # skipped photos whose earlier row is a failure
    started: float = field(default_factory=time.monotonic)

    def add(self, row: Row) -> None:
        if row.error:
            self.failed += 1
        else:
            self.counted += 1
            self.books += row.count or 0

    def skip(self, results: Results, key: tuple[str, str]) -> None:
        self.skipped += 1
        self.books += results.books.get(key, 0)
        self.skipped_failed += bool(results.done.get(key))

    @property
    def any_failed(self) -> bool:
        return bool(self.failed or self.skipped_failed)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def line(self, out: Path) -> str:
        rate = self.counted / self.seconds if self.seconds > 0 else 0.0
        skipped = f", {self.skipped} skipped (already in {out}" + (
            f", {self.skipped_failed} of them failed)" if self.skipped_failed else ")"
        )
        return (
            f"{self.books} books in {self.counted + self.failed + self.skipped} photos: {self.counted} counted, "
            f"{self.failed} failed{skipped if self.skipped else ''} in {self.seconds:.1f} s "
            f"({rate:.2f} photos/s) -> {out}"
        )
