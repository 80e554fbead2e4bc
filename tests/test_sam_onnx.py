"""SAM's prompt path on ONNX Runtime: same masks as PyTorch, exported once, PyTorch when it breaks.

Random-init weights (no checkpoints here): the comparison is of two runtimes on one network, so
the weights' quality does not matter, only that both compute the same thing.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from annotator.sam import load_segmenter
from annotator.sam.onnx_decoder import load_onnx_decoder, onnx_path
from annotator.sam.segmenter import Segmenter


@pytest.fixture(scope="module")
def both(vit_t_model, shelf_photo, tmp_path_factory):
    """A float32 PyTorch Segmenter and an ONNX one on the same model, and the photo's embedding."""
    decoder = load_onnx_decoder(vit_t_model, tmp_path_factory.mktemp("models"), "vit_t-random")
    assert decoder is not None
    torch_seg = Segmenter(vit_t_model, "vit_t", "random", bf16=False)
    onnx_seg = Segmenter(vit_t_model, "vit_t", "random", bf16=False, onnx_decoder=decoder)
    emb = torch_seg.embed(shelf_photo, "a" * 64)
    return torch_seg, onnx_seg, emb


PROMPTS = {
    "one point": ([[60, 100]], [1], None),
    "points": ([[60, 100], [90, 100], [62, 150]], [1, 0, 1], None),
    "box": (np.zeros((0, 2)), [], [35, 30, 53, 210]),
    "box + point": ([[44, 120]], [1], [35, 30, 53, 210]),
}


@pytest.mark.parametrize("name", PROMPTS)
def test_onnx_and_pytorch_masks_agree(both, name):
    torch_seg, onnx_seg, emb = both
    points, labels, box = PROMPTS[name]
    points, labels = np.array(points, np.float32).reshape(-1, 2), np.array(labels)
    box = None if box is None else np.array(box, np.float32)
    want, want_score = torch_seg.predict_points(emb, points, labels, box)
    got, got_score = onnx_seg.predict_points(emb, points, labels, box)
    assert got.shape == want.shape == emb.original_size
    assert (got == want).mean() >= 0.995
    assert got_score == pytest.approx(want_score, abs=1e-3)


def test_batched_boxes_agree_and_all_four_outputs_match(both):
    torch_seg, onnx_seg, emb = both
    boxes = np.array([[x, 30, x + 18, 210] for x in range(10, 10 + 25 * 6, 25)], np.float32)  # > one batch of 4
    want, want_scores = torch_seg.predict_boxes(emb, boxes)
    got, got_scores = onnx_seg.predict_boxes(emb, boxes)
    assert (got == want).mean() >= 0.995
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-3)
    coords = torch_seg.transform.apply_coords_torch(torch.tensor([[[60.0, 100.0], [90.0, 100.0]]]), emb.original_size)
    labels = torch.tensor([[1, 0]], dtype=torch.int)
    want_logits, want_iou = torch_seg._decode(emb, points=(coords, labels))
    got_logits, got_iou = onnx_seg._decode(emb, points=(coords, labels))
    np.testing.assert_allclose(got_logits.numpy(), want_logits.numpy(), atol=1e-3)
    np.testing.assert_allclose(got_iou.numpy(), want_iou.numpy(), atol=1e-4)


def test_the_export_is_reused_on_the_second_start(settings, caplog):
    caplog.set_level(logging.INFO, logger="annotator.sam.onnx_decoder")
    first = load_segmenter(settings, "vit_t", random_init=True, device="cpu")
    assert first.onnx_decoder is not None and first.onnx_decoder.exported
    path = first.onnx_decoder.path
    assert path.parent == settings.models_dir / "sam-onnx" and path.name.startswith("vit_t-random-")
    mtime = path.stat().st_mtime_ns
    assert "exported SAM's prompt path" in caplog.text
    caplog.clear()
    second = load_segmenter(settings, "vit_t", random_init=True, device="cpu")  # a new process: same file, no export
    assert second.onnx_decoder is not None and not second.onnx_decoder.exported
    assert second.onnx_decoder.path == path and path.stat().st_mtime_ns == mtime
    assert "exported" not in caplog.text and "(cached)" in caplog.text
    assert list(path.parent.iterdir()) == [path]  # no temp files left behind


def test_a_corrupt_export_falls_back_to_pytorch_with_the_reason_in_the_log(settings, vit_t_model, shelf_photo, caplog):
    path = onnx_path(settings.models_dir, "vit_t-random", vit_t_model)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x08\x07 half a protobuf")
    with caplog.at_level(logging.WARNING, logger="annotator.sam.onnx_decoder"):
        seg = load_segmenter(settings, "vit_t", random_init=True, device="cpu")
    assert seg.onnx_decoder is None
    (record,) = [r for r in caplog.records if "stays on PyTorch" in r.getMessage()]
    assert "load failed" in record.getMessage() and str(path) in record.getMessage()
    mask, score = seg.predict_points(seg.embed(shelf_photo, "c" * 64), np.array([[60, 100]]), np.array([1]))
    assert mask.shape == (240, 320) and np.isfinite(score)


def test_the_torch_setting_keeps_the_prompt_path_on_pytorch(settings, monkeypatch):
    monkeypatch.setenv("BOOKCOUNTER_SAM_PROMPT_RUNTIME", "torch")
    from bookcounter.settings import get_settings

    get_settings.cache_clear()
    seg = load_segmenter(get_settings(), "vit_t", random_init=True, device="cpu")
    assert seg.onnx_decoder is None and not (settings.models_dir / "sam-onnx").exists()
