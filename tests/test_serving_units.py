"""Serving's pure parts: mapping masks back to original pixels, the overlay PNG, the metrics."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bookcounter import masks as rle
from serving.counting import downscale, upscale_masks_rle
from serving.metrics import ServingMetrics
from serving.overlay import palette, render_overlay


@pytest.mark.parametrize("small_hw,size", [((48, 64), (200, 150)), ((60, 40), (121, 181)), ((32, 32), (32, 32))])
def test_upscaled_masks_equal_a_full_nearest_resize(small_hw: tuple[int, int], size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    h, w = small_hw
    masks = []
    for _ in range(4):
        m = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h - 5), rng.integers(0, w - 5)
        m[y0 : y0 + rng.integers(2, h - y0), x0 : x0 + rng.integers(2, w - x0)] = True
        m &= rng.random((h, w)) > 0.2  # ragged, not just a rectangle
        masks.append(m)
    masks.append(np.zeros((h, w), bool))  # an empty mask stays empty

    out = upscale_masks_rle(masks, size)

    width, height = size
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
    for m, r in zip(masks, out):
        assert r["size"] == [height, width]
        np.testing.assert_array_equal(rle.decode(r), m[np.ix_(rows, cols)])
    assert rle.area(out[-1]) == 0


def test_downscale_keeps_aspect_and_leaves_small_photos_alone() -> None:
    assert downscale(Image.new("RGB", (4000, 3000)), 512).size == (512, 384)
    assert downscale(Image.new("RGB", (300, 2000)), 512).size == (77, 512)
    small = Image.new("RGB", (320, 240))
    assert downscale(small, 512) is small


def test_overlay_is_a_png_of_the_photo_with_each_mask_tinted() -> None:
    photo = Image.new("RGB", (120, 80), (255, 255, 255))
    m1 = np.zeros((80, 120), bool)
    m1[10:70, 10:40] = True
    m2 = np.zeros((80, 120), bool)
    m2[10:70, 70:100] = True
    png = render_overlay(photo, [m1, m2], "2 books")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (120, 80)
    px = np.asarray(img.convert("RGB")).astype(int)
    for i in range(2):
        inside = px[45, 15 if i == 0 else 75]  # left part of the mask, away from the number
        expected = 255 * 0.55 + np.array(palette(i)) * 0.45
        assert np.abs(inside - expected).max() <= 2
    assert (px[75, 55] == 255).all()  # outside every mask: untouched


def test_metrics_expose_the_loaded_version_and_request_counts() -> None:
    m = ServingMetrics()
    m.set_model_version("3")
    m.observe("/count", 200, 0.2)
    m.observe("/count", 413, 0.01)
    m.set_model_version("4")
    text = m.exposition().decode()
    assert 'bookcounter_model_loaded{version="4"} 1.0' in text
    assert 'version="3"' not in text
    assert 'bookcounter_requests_total{route="/count",status="413"} 1.0' in text
    assert 'bookcounter_request_seconds_count{route="/count"} 2.0' in text


@pytest.mark.parametrize(
    ("host", "has_key", "warns"),
    [
        ("127.0.0.1", False, False),
        ("localhost", False, False),
        ("::1", False, False),
        ("0.0.0.0", False, True),
        ("192.168.1.20", False, True),
        ("shelf-box.lan", False, True),
        ("0.0.0.0", True, False),
    ],
)
def test_serving_beyond_loopback_without_a_key_is_warned_about(host: str, has_key: bool, warns: bool) -> None:
    from serving.cli import exposure_warning

    warning = exposure_warning(host, has_key)
    assert (warning is not None) == warns
    if warning:
        assert host in warning and "BOOKCOUNTER_API_KEY" in warning and len(warning.splitlines()) == 1
