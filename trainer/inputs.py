"""The one way a photo becomes the network's input: training, evaluation, serving,
pre-labelling and the ML backend all call :func:`model_input` (then :func:`to_tensor`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import PIL.Image
import torch
from torchvision.transforms.v2 import functional as F

if TYPE_CHECKING:
    from trainer.model import ModelConfig


def input_size(width: int, height: int, config: ModelConfig) -> tuple[int, int]:
    """The (w, h) a ``width`` x ``height`` photo is resized to for the network: torchvision's
    ``min_size``/``max_size`` rule, so a 640x200 shelf strip is not shrunk to 120 px tall."""
    scale = min(config.image_size / min(width, height), config.max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def model_input(image: PIL.Image.Image, config: ModelConfig) -> PIL.Image.Image:
    """``image`` as RGB at the network's input size (:func:`input_size`)."""
    image = image.convert("RGB")
    size = input_size(image.width, image.height, config)
    if size == image.size:
        return image
    return image.resize(size, PIL.Image.Resampling.BILINEAR, reducing_gap=3.0)


def to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """CxHxW float in [0, 1]; the model's transform normalises it with the config's mean/std."""
    return F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
