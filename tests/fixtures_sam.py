"""SAM fixtures: one small random-init vit_t model per session (no weights exist here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotator.sam.build_sam import build_sam
from annotator.sam.embedding_cache import EmbeddingCache
from annotator.sam.segmenter import Segmenter


@pytest.fixture(scope="session")
def vit_t_model():
    """Seeded random-init MobileSAM (the real vit_t code path, garbage weights)."""
    return build_sam("vit_t")


@pytest.fixture
def make_segmenter(vit_t_model, tmp_path: Path):
    """Build a Segmenter on the session model with a disk cache of its own (``cache_dir``, ``max_mb``)."""

    def make(cache_dir: Path | None = None, max_mb: float = 64) -> Segmenter:
        cache = EmbeddingCache(cache_dir or tmp_path / "embeddings", int(max_mb * 1024 * 1024))
        return Segmenter(vit_t_model, "vit_t", "random", cache)

    return make


@pytest.fixture(scope="session")
def shelf_photo() -> Image.Image:
    """A 320x240 RGB photo with some vertical 'spines' (content only matters for shapes)."""
    rng = np.random.default_rng(0)
    a = np.full((240, 320, 3), 200, np.uint8)
    for x in range(10, 300, 25):
        a[30:210, x : x + 18] = rng.integers(0, 255, 3)
    return Image.fromarray(a)
