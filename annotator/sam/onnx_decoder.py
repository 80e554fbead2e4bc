"""SAM's prompt path (prompt encoder + mask decoder) on ONNX Runtime: the one ONNX module.

The graph is ``segment_anything.utils.onnx.SamOnnxModel``'s point/box/mask embedding and SAM's
mask decoder (shared by vit_t, since MobileSAM keeps SAM's decoder), without its upscaling: it
returns all four low-res outputs ``(B, 4, 256, 256)`` and their predicted IoU ``(B, 4)``, so the
:class:`~annotator.sam.segmenter.Segmenter` picks the mask by IoU and resizes only that one, as
on PyTorch. Boxes are two corner points (labels 2 and 3); point prompts without a box end with
SAM's padding point (label -1), exactly as ``PromptEncoder`` does.

Exported once per weights into ``<models_dir>/sam-onnx/<type>-<weights>-<digest>.onnx`` (the
digest hashes the prompt encoder's and mask decoder's tensors and :data:`EXPORT_VERSION`, so a
random-init model or a changed graph never reuses a stale file), written atomically; later
starts load the file. When export or loading fails, :func:`load_onnx_decoder` logs why in one
line and returns None: the Segmenter then stays on PyTorch.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel

from bookcounter.atomic import atomic_write

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the exported graph changes
OPSET = 17
INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
OUTPUTS = ("low_res_masks", "iou_predictions")


class _PromptDecoder(torch.nn.Module):
    """What is exported: SamOnnxModel's traceable prompt embedding + SAM's mask decoder, all 4 outputs."""

    def __init__(self, sam: Sam):
        super().__init__()
        self.onnx = SamOnnxModel(sam, return_single_mask=False)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        sam = self.onnx.model
        return sam.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=self.onnx._embed_points(point_coords, point_labels),
            dense_prompt_embeddings=self.onnx._embed_masks(mask_input, has_mask_input),
        )


class OnnxDecoder:
    """An ``onnxruntime.InferenceSession`` of the prompt path; safe to call from several threads."""

    def __init__(self, path: Path, threads: int, exported: bool):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # clicks come one at a time: idle threads sleep instead of spinning against the other services
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        self.threads = threads
        self.exported = exported  # True when this start wrote the file, False when it reused it
        self._no_mask = np.zeros((1, 1, 256, 256), np.float32)
        self._no_mask_flag = np.zeros(1, np.float32)

    def __call__(self, features: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``features (1, 256, 64, 64)``, ``coords (B, N, 2)`` in the 1024 px input frame and
        ``labels (B, N)`` (1/0 points, 2/3 box corners, -1 padding) -> logits and IoU."""
        logits, iou = self.session.run(
            OUTPUTS,
            {
                "image_embeddings": features,
                "point_coords": coords.astype(np.float32, copy=False),
                "point_labels": labels.astype(np.float32, copy=False),
                "mask_input": self._no_mask,
                "has_mask_input": self._no_mask_flag,
            },
        )
        return logits, iou


def decoder_digest(sam: Sam) -> str:
    """sha256 over the prompt encoder's and mask decoder's tensors and the export version."""
    h = hashlib.sha256(f"bookcounter-sam-onnx-v{EXPORT_VERSION}-opset{OPSET}".encode())
    for prefix, module in (("prompt_encoder.", sam.prompt_encoder), ("mask_decoder.", sam.mask_decoder)):
        for name, tensor in module.state_dict().items():
            h.update((prefix + name).encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def onnx_path(models_dir: Path, namespace: str, sam: Sam) -> Path:
    """Where the export of ``sam`` (``namespace`` = type and checkpoint sha256[:12]) is kept."""
    return Path(models_dir) / "sam-onnx" / f"{namespace}-{decoder_digest(sam)[:12]}.onnx"


def export(sam: Sam, path: Path) -> None:
    """Export the prompt path of ``sam`` to ``path`` atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _PromptDecoder(sam).eval().cpu()
    dummy = (
        torch.zeros(1, 256, 64, 64),
        torch.zeros(1, 2, 2),
        torch.ones(1, 2),
        torch.zeros(1, 1, 256, 256),
        torch.zeros(1),
    )
    with atomic_write(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings of SAM's own code, harmless here
        torch.onnx.export(
            model,
            dummy,
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes={"point_coords": {0: "prompts", 1: "points"}, "point_labels": {0: "prompts", 1: "points"}},
        )


def load_onnx_decoder(sam: Sam, models_dir: Path, namespace: str, threads: int = 2) -> OnnxDecoder | None:
    """The ONNX Runtime prompt path of ``sam``, exported on first use; None (and one log line) on failure."""
    path, stage = None, "export"
    try:
        path = onnx_path(models_dir, namespace, sam)
        exported = not path.is_file()
        if exported:
            t0 = time.perf_counter()
            export(sam, path)
            log.info("exported SAM's prompt path to %s in %.1f s", path, time.perf_counter() - t0)
        stage = "load"
        decoder = OnnxDecoder(path, threads, exported)
    except Exception as e:  # any failure (exporter, disk, corrupt file, runtime) means: stay on PyTorch
        where = f" ({path}; delete it to export again)" if path is not None and path.is_file() else ""
        log.warning(
            "SAM prompt path stays on PyTorch: ONNX %s failed%s: %s: %s", stage, where, type(e).__name__, str(e)[:200]
        )
        return None
    log.info(
        "SAM prompt path on ONNX Runtime (%d intra-op threads): %s%s",
        threads,
        path.name,
        "" if exported else " (cached)",
    )
    return decoder
