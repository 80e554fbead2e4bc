"""Builders for every SAM model type, in the style of ``segment_anything.build_sam``.

``vit_b``/``vit_l``/``vit_h`` are the official SAM builders of the ``segment-anything``
package; ``vit_t`` is MobileSAM: our TinyViT encoder with SAM's own prompt encoder and mask
decoder. Builders return a random-init model in eval mode; :func:`build_sam` optionally loads
a checkpoint (``torch.load(weights_only=True)``, ``strict=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from segment_anything.build_sam import sam_model_registry as _official_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from annotator.sam.checkpoints import CheckpointError, read_state_dict
from annotator.sam.modeling import TinyViT

PROMPT_EMBED_DIM = 256
IMAGE_SIZE = 1024


def build_sam_vit_t() -> Sam:
    """MobileSAM: TinyViT-5M encoder + SAM prompt encoder and mask decoder (layout of ``mobile_sam.pt``)."""
    embedding_size = IMAGE_SIZE // 16
    sam = Sam(
        image_encoder=TinyViT(img_size=IMAGE_SIZE, out_chans=PROMPT_EMBED_DIM),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def _official(model_type: str) -> Callable[[], Sam]:
    def build() -> Sam:
        return _official_registry[model_type](checkpoint=None).eval()

    build.__doc__ = f"Official SAM {model_type} (segment-anything's builder, random init)."
    return build


sam_model_registry: dict[str, Callable[[], Sam]] = {
    "vit_t": build_sam_vit_t,
    "vit_b": _official("vit_b"),
    "vit_l": _official("vit_l"),
    "vit_h": _official("vit_h"),
}
MODEL_TYPES = tuple(sam_model_registry)


def build_sam(model_type: str, checkpoint: Path | None = None, seed: int = 0) -> Sam:
    """Build ``model_type``; load ``checkpoint`` strictly, or keep a seeded random init when None.

    Random init is seeded so that every random-init model of a type is the same network (and
    may share cached embeddings). Raises :class:`CheckpointError` when the file does not fit.
    """
    if model_type not in sam_model_registry:
        raise CheckpointError(f"unknown SAM model type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = sam_model_registry[model_type]()
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        expected = {k: tuple(v.shape) for k, v in sam.state_dict().items()}
        missing = sorted(expected.keys() - state.keys())
        unexpected = sorted(state.keys() - expected.keys())
        wrong = sorted(k for k in expected.keys() & state.keys() if tuple(state[k].shape) != expected[k])
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{checkpoint}: not a {model_type} checkpoint ({len(missing)} missing tensors, e.g. {missing[:2]}; "
                f"{len(unexpected)} unexpected, e.g. {unexpected[:2]}; {len(wrong)} of another shape, e.g. {wrong[:2]})"
            )
        sam.load_state_dict(state, strict=True)
    return sam
