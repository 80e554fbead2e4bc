"""The real Label Studio server, started once per test session on a free port.

``labelstudio``: session-scoped; starts the server (cold start 30-45 s) with its own temp data
dir and points every ``Settings`` of the session at its port (``BOOKCOUNTER_LS_PORT``). Its
value is the server's own settings (use them to stop/restart the server in fault tests).

``ls_settings``: per test; fresh settings with their own state dir (inbox, datasets) and their
own Label Studio project (a unique ``ls_project_title``) on that server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from annotator.labelstudio.server import start_server, stop_server
from bookcounter.settings import Settings, get_settings
from bookcounter.testing import free_port


@pytest.fixture(scope="session")
def labelstudio(tmp_path_factory: pytest.TempPathFactory, session_state_dir: Path) -> Iterator[Settings]:
    """The running server's own settings (session-scoped)."""
    port = free_port()
    old = os.environ.get("BOOKCOUNTER_LS_PORT")
    os.environ["BOOKCOUNTER_LS_PORT"] = str(port)
    get_settings.cache_clear()
    server = Settings(state_dir=tmp_path_factory.mktemp("labelstudio"), ls_port=port)
    start_server(server, timeout=300)  # a loaded 2-core machine can need over 2 min
    try:
        yield server
    finally:
        stop_server(server)
        if old is None:
            os.environ.pop("BOOKCOUNTER_LS_PORT", None)
        else:
            os.environ["BOOKCOUNTER_LS_PORT"] = old
        get_settings.cache_clear()


@pytest.fixture
def ls_settings(labelstudio: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Fresh settings (own state dir) with their own project on the session's Label Studio."""
    monkeypatch.setenv("BOOKCOUNTER_STATE_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("BOOKCOUNTER_LS_PROJECT_TITLE", f"test-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    settings = get_settings()
    settings.inbox_dir.mkdir(parents=True)
    yield settings
    get_settings.cache_clear()


def shelf_photo(width: int = 160, height: int = 120, seed: int = 0) -> Image.Image:
    """A small synthetic shelf: coloured upright rectangles ("books") on a wall."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (235, 225, 205))
    draw = ImageDraw.Draw(img)
    x = width // 20
    while x < width * 0.9:
        w = int(rng.integers(max(2, width // 25), max(3, width // 10)))
        top = int(rng.integers(height // 8, height // 3))
        draw.rectangle([x, top, x + w, height - height // 10], fill=tuple(int(c) for c in rng.integers(20, 200, 3)))
        x += w + int(rng.integers(1, max(2, width // 50)))
    return img


def save_photo(img: Image.Image, path: Path, exif_orientation: int | None = None, **save_args: Any) -> Path:
    """Save ``img``; with ``exif_orientation`` the pixels are stored rotated and the EXIF tag says
    how to turn them upright (as a phone does), so the upright view is ``img``."""
    if exif_orientation is not None:
        inverse = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img = img.transpose(inverse[exif_orientation])
        save_args["exif"] = exif
    img.save(path, **save_args)
    return path


@dataclass
class Found:
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray


class BoxesFromLayout:
    """A classical detector for :func:`shelf_photo` images, standing in for the champion's boxes
    (no trained Mask R-CNN exists in a test): books are the runs of non-wall columns; each box
    spans the rows where the run differs from the wall. Same ``predict`` as trainer's Predictor."""

    model_version = "layout"
    threshold = 0.5

    def __init__(self, max_boxes: int = 100):
        self.max_boxes = max_boxes

    def predict(self, image: Image.Image, threshold: float | None = None) -> list[Found]:
        a = np.asarray(image.convert("RGB"), np.int16)
        h, w = a.shape[:2]
        book = np.abs(a - np.array([235, 225, 205])).sum(axis=2) > 30
        cols = book[int(h * 0.8)]
        edges = np.flatnonzero(np.diff(np.concatenate([[0], cols.astype(np.int8), [0]])))
        found = []
        for x0, x1 in zip(edges[::2], edges[1::2], strict=True):
            rows = np.flatnonzero(book[:, (x0 + x1 - 1) // 2])
            mask = np.zeros((h, w), bool)
            mask[rows.min() : rows.max() + 1, x0:x1] = True
            found.append(Found(0.9, (float(x0), float(rows.min()), float(x1), float(rows.max() + 1)), mask))
        return found[: self.max_boxes]
