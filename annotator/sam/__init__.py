"""SAM for bookcounter: one :class:`Segmenter` (image + prompts -> masks + scores).

Layout after ``segment_anything``: ``build_sam.py`` (builder registry for vit_t/b/l/h),
``modeling/`` (modules only: the TinyViT encoder of MobileSAM), ``segmenter.py`` (the one
predictor class), ``embedding_cache.py``, ``checkpoints.py``, ``onnx_decoder.py`` (the prompt path on
ONNX Runtime) and ``auto_masks.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from annotator.sam.checkpoints import CheckpointError
from annotator.sam.segmenter import Embedding, PromptError, Segmenter
from bookcounter.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["CheckpointError", "Embedding", "PromptError", "Segmenter", "load_segmenter"]


def load_segmenter(
    settings: Settings,
    model_type: str | None = None,
    checkpoint: Path | None = None,
    random_init: bool = False,
    device: str | None = None,
) -> Segmenter | None:
    """A ready :class:`Segmenter`, or None (and one log line) when no checkpoint is found.

    ``model_type`` defaults to ``settings.sam_model_type``; ``checkpoint`` to
    ``settings.sam_checkpoint``, then the file ``bookcounter setup-models`` stores in
    ``settings.models_dir``. ``random_init=True`` builds a seeded random-init model instead
    (tests and benchmarks: compute cost does not depend on the weights). Raises
    :class:`CheckpointError` for an unknown type or a checkpoint that is missing, corrupt or
    of another model type.

    On CPU, SAM's prompt path runs on ONNX Runtime (``settings.sam_prompt_runtime``; exported
    once into ``settings.models_dir``), falling back to PyTorch with a log line when that fails.
    """
    import torch

    from annotator.sam.build_sam import MODEL_TYPES, build_sam
    from annotator.sam.checkpoints import resolve_checkpoint
    from annotator.sam.embedding_cache import EmbeddingCache
    from annotator.sam.onnx_decoder import load_onnx_decoder
    from bookcounter.images import sha256_file

    model_type = model_type or settings.sam_model_type
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"unknown SAM model type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    if random_init:
        path, weights_id = None, "random"
    else:
        path = resolve_checkpoint(settings, model_type, checkpoint)
        if path is None:
            log.warning(
                "no SAM %s checkpoint (run `bookcounter setup-models` or set BOOKCOUNTER_SAM_CHECKPOINT): SAM is off",
                model_type,
            )
            return None
        weights_id = sha256_file(path)[:12]
    sam = build_sam(model_type, path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cache = EmbeddingCache(settings.embeddings_dir, settings.embedding_cache_mb * 1024 * 1024)
    namespace = f"{model_type}-{weights_id}"
    onnx_decoder = None
    if device == "cpu" and settings.sam_prompt_runtime == "onnx":
        onnx_decoder = load_onnx_decoder(sam, settings.models_dir, namespace, settings.sam_onnx_threads)
    return Segmenter(sam.to(device), model_type, weights_id, cache, onnx_decoder=onnx_decoder)
