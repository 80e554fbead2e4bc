"""GPU smoke test (``pytest -m gpu``, see docs/gpu.md): the CUDA branches of the trainer and the
predictor, which no other test reaches. One epoch of the tiny model with AMP (autocast and the
GradScaler, on whenever training runs on CUDA), then a prediction on CUDA. Skips without CUDA.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures_trainer import TinyDataset, synthetic_photo, tiny_train_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"),
]

DEVICE = "cuda"


def test_one_amp_epoch_then_a_prediction_on_cuda(tiny_dataset: TinyDataset, tmp_path: Path) -> None:
    from trainer.predictor import Predictor
    from trainer.train import train_and_save

    cfg = tiny_train_config(tiny_dataset.version.name, epochs=1, device=DEVICE)
    model_dir = train_and_save(cfg, tiny_dataset.store, tmp_path / "run", progress=False)

    meta = json.loads((model_dir / "model.json").read_text())
    (epoch,) = meta["history"]
    assert torch.isfinite(torch.tensor(epoch["loss"]))
    # AMP ran: the GradScaler, enabled only on CUDA, saved its loss scale with the checkpoint
    scaler = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)["scaler"]
    assert scaler.get("scale", 0) > 0, f"the GradScaler was disabled: {scaler}"

    predictor = Predictor(model_dir, device=DEVICE)
    assert {p.device.type for p in predictor.model.parameters()} == {"cuda"}
    photo, _ = synthetic_photo(seed=5, n_books=3)
    for instance in predictor.predict(photo, threshold=0.0):  # one epoch: scores mean nothing yet
        assert instance.mask.shape == (photo.height, photo.width)


def test_cuda_counts_what_cpu_counts(tiny_model_dir: Path, counted_photo) -> None:
    """The tiny model (trained on CPU) predicts the same books on CUDA as on CPU."""
    import numpy as np

    from trainer.predictor import Predictor

    photo, _ = counted_photo
    on_cpu = Predictor(tiny_model_dir, device="cpu").predict(photo)
    on_cuda = Predictor(tiny_model_dir, device=DEVICE).predict(photo)
    assert len(on_cuda) == len(on_cpu) > 0
    for a, b in zip(on_cpu, on_cuda, strict=True):
        assert abs(a.score - b.score) < 0.02
        assert np.abs(np.subtract(a.box, b.box)).max() < 1.0
        assert (a.mask & b.mask).sum() / max(1, (a.mask | b.mask).sum()) > 0.9
