"""SAM adapter: model layout, prompts -> masks, embedding caches, odd photos, automatic masks.

Models are random-init (no weights here), so these tests check shapes, bounds, batching and
caching - never mask quality.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from annotator.sam import PromptError, load_segmenter
from annotator.sam.auto_masks import BookMaskParams, generate_book_masks
from bookcounter.images import decode_image

SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "models" / "mobile_sam_vit_t.schema.json"


def test_vit_t_state_dict_matches_the_official_checkpoint_layout(vit_t_model):
    expected = json.loads(SCHEMA.read_text())["tensors"]
    got = {k: list(v.shape) for k, v in vit_t_model.state_dict().items()}
    assert sorted(got) == sorted(expected)
    assert got == expected
    assert sum(v.numel() for v in vit_t_model.state_dict().values()) == json.loads(SCHEMA.read_text())["num_elements"]


@pytest.fixture(scope="module")
def embedded(vit_t_model, shelf_photo, tmp_path_factory):
    """One photo embedded once for the prompt tests of this module."""
    from annotator.sam.embedding_cache import EmbeddingCache
    from annotator.sam.segmenter import Segmenter

    seg = Segmenter(vit_t_model, "vit_t", "random", EmbeddingCache(tmp_path_factory.mktemp("emb"), 64 << 20))
    return seg, seg.embed(shelf_photo, "a" * 64)


def test_predict_boxes_gives_one_mask_per_box_at_the_original_size(embedded):
    seg, emb = embedded
    boxes = np.array([[10, 30, 28, 210], [35, 30, 53, 210], [-50, -50, 400, 300], [300, 200, 320, 240]], float)
    masks, scores = seg.predict_boxes(emb, boxes)
    assert masks.shape == (4, 240, 320) and masks.dtype == bool
    assert scores.shape == (4,) and np.isfinite(scores).all()
    empty_masks, empty_scores = seg.predict_boxes(emb, np.zeros((0, 4)))
    assert empty_masks.shape == (0, 240, 320) and empty_scores.shape == (0,)


def test_boxes_are_decoded_in_batches_that_agree_with_single_calls(embedded):
    seg, emb = embedded
    boxes = np.array([[x, 30, x + 18, 210] for x in range(10, 10 + 25 * (seg.decoder_batch + 1), 25)], float)
    together, scores = seg.predict_boxes(emb, boxes)  # more boxes than one decoder batch
    for i, box in enumerate(boxes):
        alone, score = seg.predict_boxes(emb, box[None])
        assert (alone[0] != together[i]).mean() < 1e-3
        assert score[0] == pytest.approx(scores[i], abs=2e-2)


def test_predict_points_returns_the_best_mask_by_predicted_iou(embedded):
    seg, emb = embedded
    _, iou = seg._decode(
        emb,
        points=(
            seg.transform.apply_coords_torch(torch.tensor([[[19.0, 100.0]]]), emb.original_size),
            torch.ones(1, 1, dtype=torch.int),
        ),
    )
    mask, score = seg.predict_points(emb, np.array([[19, 100]]), np.array([1]))
    assert mask.shape == (240, 320) and mask.dtype == bool
    assert score == pytest.approx(float(iou[0, 1:].max()), abs=1e-5)  # one click: best of the 3 multimask outputs
    mask2, score2 = seg.predict_points(
        emb, np.array([[19, 100], [44, 100]]), np.array([1, 0]), box=np.array([5, 20, 40, 220])
    )
    assert mask2.shape == (240, 320) and np.isfinite(score2)


@pytest.mark.parametrize(
    "points, labels, box",
    [
        ([[400, 10]], [1], None),  # outside the 320x240 image
        ([[10, 10]], [1, 0], None),  # labels do not match points
        ([[10, 10]], [2], None),  # unknown label
        (np.zeros((0, 2)), [], None),  # nothing at all
        ([[np.nan, 3]], [1], None),
    ],
)
def test_bad_point_prompts_are_a_clear_error(embedded, points, labels, box):
    seg, emb = embedded
    with pytest.raises(PromptError):
        seg.predict_points(emb, np.array(points, float), np.array(labels), box)


def test_a_cached_embedding_is_not_recomputed(make_segmenter, shelf_photo, tmp_path):
    seg = make_segmenter(tmp_path / "cache")
    key = "b" * 64
    first = seg.embed(shelf_photo, key)
    assert seg.encoder_calls == 1
    assert seg.embed(shelf_photo, key) is first  # memory LRU
    assert seg.encoder_calls == 1
    other = make_segmenter(tmp_path / "cache")  # a new process sharing the disk cache
    again = other.embed(shelf_photo, key)
    assert other.encoder_calls == 0
    assert torch.equal(again.features, first.features)
    assert (again.original_size, again.input_size) == (first.original_size, first.input_size)
    assert other.is_cached(key) and not other.is_cached("c" * 64)


def test_pre_encode_fills_the_cache_and_skips_bad_files(make_segmenter, shelf_photo, tmp_path):
    seg = make_segmenter(tmp_path / "cache")
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    shelf_photo.save(good)
    bad.write_bytes(b"not a jpeg")
    seg.pre_encode([("d" * 64, good), ("e" * 64, bad)])
    assert seg.encoder_calls == 1 and seg.is_cached("d" * 64) and not seg.is_cached("e" * 64)
    seg.pre_encode([("d" * 64, good)])
    assert seg.encoder_calls == 1


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(lambda: Image.new("RGB", (3000, 1800), (90, 60, 30)), id="3000px"),
        pytest.param(lambda: Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (90, 1)), "L"), id="grayscale"),
        pytest.param(lambda: Image.new("RGBA", (150, 220), (10, 200, 10, 0)), id="alpha"),
    ],
)
def test_large_grayscale_and_alpha_photos_give_masks_of_their_size(make_segmenter, image):
    photo = decode_image(_png(image()), "photo.png")
    seg = make_segmenter()
    emb = seg.embed(photo, "f" * 64)
    w, h = photo.size
    masks, scores = seg.predict_boxes(emb, np.array([[0, 0, w / 2, h], [w / 4, h / 4, w, h]]))
    assert masks.shape == (2, h, w) and scores.shape == (2,)
    assert emb.original_size == (h, w) and max(emb.input_size) == 1024


def test_generate_keeps_only_book_like_non_overlapping_masks(embedded):
    seg, emb = embedded
    params = BookMaskParams(
        grid_cols=6,
        grid_rows=3,
        pred_iou_thresh=-10,
        stability_score_thresh=-1,
        min_area_frac=0.01,
        max_area_frac=0.5,
        min_aspect=1.0,
        max_aspect=25.0,
    )
    found = generate_book_masks(seg, emb, params)
    h, w = emb.original_size
    assert found, "with the quality thresholds off, a random model still yields some masks"
    covered = np.zeros((h, w), bool)
    for mask, score in found:
        assert mask.shape == (h, w) and np.isfinite(score)
        area = mask.sum() / (h * w)
        assert 0.005 <= area <= 0.55  # area filter (on low-res masks, so a little slack)
        assert (mask & covered).sum() <= 0.5 * mask.sum()  # overlap removal
        covered |= mask
    scores = [s for _, s in found]
    assert scores == sorted(scores, reverse=True)
    strict = BookMaskParams(grid_cols=6, grid_rows=3, pred_iou_thresh=2.0)  # no predicted IoU exceeds 2
    assert generate_book_masks(seg, emb, strict) == []


def test_load_segmenter_without_a_checkpoint_is_none_unless_random_init(settings):
    assert load_segmenter(settings, "vit_t") is None
    seg = load_segmenter(settings, "vit_t", random_init=True)
    assert seg is not None and seg.model_type == "vit_t" and seg.namespace == "vit_t-random"
    assert seg.cache is not None and seg.cache.root == settings.embeddings_dir
