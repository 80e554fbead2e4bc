"""The one SAM interface of bookcounter: image + prompts -> masks + scores.

The image embedding is computed once per photo (key = image sha256) and kept in a small
in-memory LRU and the on-disk :class:`EmbeddingCache`; prompts then only run the prompt
encoder and mask decoder, on ONNX Runtime when an :class:`~annotator.sam.onnx_decoder.OnnxDecoder`
is given (else PyTorch). Masks stay at SAM's low resolution (256 x 256 logits) until the
last step, which maps them straight to the original image size.

All methods are safe to call from several threads at once (the ML backend serves concurrent
requests); the model itself is only read.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from annotator.sam.auto_masks import generate_book_masks
from annotator.sam.embedding_cache import EmbeddingCache
from annotator.sam.onnx_decoder import OnnxDecoder
from bookcounter.errors import UserError
from bookcounter.images import BadImage, read_image

log = logging.getLogger(__name__)

# Prompts per mask-decoder call. Every prompt carries its own 64x64x256 copy of the image
# features through the decoder, so on a CPU large batches fall out of cache (measured:
# docs/annotation.md, "Speed decisions").
DECODER_BATCH = {"cpu": 4, "cuda": 64}


class PromptError(UserError):
    """Prompts that cannot be answered: wrong shape, not finite, or outside the image."""


@dataclass(frozen=True)
class Embedding:
    """Image features of one photo plus the geometry needed to map prompts and masks."""

    key: str
    features: torch.Tensor  # (1, 256, 64, 64) float32 on the model's device
    original_size: tuple[int, int]  # (H, W) of the photo
    input_size: tuple[int, int]  # (h, w) after resizing the long side to the encoder size


class Segmenter:
    """SAM with an embedding cache; see the module docstring."""

    def __init__(
        self,
        sam: Sam,
        model_type: str,
        weights_id: str,
        cache: EmbeddingCache | None = None,
        memory_items: int = 8,
        bf16: bool | None = None,
        onnx_decoder: OnnxDecoder | None = None,
    ):
        self.sam = sam.eval()
        self.model_type = model_type
        self.namespace = f"{model_type}-{weights_id}"
        self.device = next(sam.parameters()).device
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        if bf16 is None:  # bfloat16 where the CPU computes it natively (AVX512-BF16/AMX): ~1.8x faster
            bf16 = self.device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        self.bf16 = bf16
        self.decoder_batch = DECODER_BATCH.get(self.device.type, DECODER_BATCH["cuda"])
        self.onnx_decoder = onnx_decoder if self.device.type == "cpu" else None
        self.cache = cache
        self.memory_items = memory_items
        self.encoder_calls = 0
        self._memory: OrderedDict[str, Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    # ---- embeddings ---------------------------------------------------------------------
    def embed(self, image: Image.Image, key: str) -> Embedding:
        """The embedding of ``image`` (an upright RGB photo, see ``bookcounter.images``).

        Looked up by ``key`` (the image sha256) in memory, then on disk; computed only on a
        miss, once even when several threads ask for the same photo at the same time.
        """
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            emb = self._cached(key)
            if emb is None:
                emb = self._encode(image, key)
                if self.cache is not None:
                    self.cache.put(self.namespace, key, _to_record(emb))
            self._remember(emb)
        with self._lock:
            self._key_locks.pop(key, None)
        return emb

    def is_cached(self, key: str) -> bool:
        with self._lock:
            if key in self._memory:
                return True
        return self.cache is not None and self.cache.contains(self.namespace, key)

    def pre_encode(self, items: Iterable[tuple[str, Path]]) -> None:
        """Fill the cache for many photos ``(sha256, path)``; unreadable photos are skipped with a log line."""
        for key, path in items:
            if self.is_cached(key):
                continue
            try:
                image = read_image(path)
            except BadImage as e:
                log.warning("not pre-encoding %s", e)
                continue
            self.embed(image, key)

    def _cached(self, key: str) -> Embedding | None:
        with self._lock:
            emb = self._memory.get(key)
        if emb is None and self.cache is not None:
            record = self.cache.get(self.namespace, key)
            if record is not None:
                emb = _from_record(key, record, self.device)
        return emb

    def _remember(self, emb: Embedding) -> None:
        with self._lock:
            self._memory[emb.key] = emb
            self._memory.move_to_end(emb.key)
            while len(self._memory) > self.memory_items:
                self._memory.popitem(last=False)

    @torch.inference_mode()
    def _encode(self, image: Image.Image, key: str) -> Embedding:
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        th, tw = self.transform.get_preprocess_shape(h, w, self.transform.target_length)
        resized = np.array(image.resize((tw, th), Image.Resampling.BILINEAR))
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None].float()
        with self._autocast():
            features = self.sam.image_encoder(self.sam.preprocess(x)).float()
        with self._lock:
            self.encoder_calls += 1
        return Embedding(key, features, (h, w), (th, tw))

    # ---- prompts ------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_boxes(self, emb: Embedding, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One mask per xyxy box (original pixels): ``(N, H, W)`` bool and ``(N,)`` predicted IoU.

        Boxes are clipped to the image and go through the decoder in batches (of
        :data:`DECODER_BATCH` for the device).
        """
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4), np.float32)
        h, w = emb.original_size
        if not np.isfinite(boxes).all():
            raise PromptError("boxes must be finite numbers")
        boxes = np.clip(boxes, 0, [w, h, w, h])
        masks = np.zeros((len(boxes), h, w), dtype=bool)
        scores = np.zeros(len(boxes), dtype=np.float32)
        for start in range(0, len(boxes), self.decoder_batch):
            chunk = torch.as_tensor(boxes[start : start + self.decoder_batch], device=self.device)
            box_t = self.transform.apply_boxes_torch(chunk, emb.original_size)
            logits, iou = self._decode(emb, boxes=box_t)
            self._paste(emb, logits[:, 0], masks[start : start + len(chunk)])
            scores[start : start + len(chunk)] = iou[:, 0].float().cpu().numpy()
        return masks, scores

    @torch.inference_mode()
    def predict_points(
        self, emb: Embedding, points: np.ndarray, labels: np.ndarray, box: np.ndarray | None = None
    ) -> tuple[np.ndarray, float]:
        """One object from all its clicks (label 1 positive, 0 negative) and an optional xyxy box.

        Returns the ``(H, W)`` bool mask with the highest predicted IoU and that IoU. A single
        click is ambiguous, so it picks among SAM's three multimask outputs; with more prompts
        the single-mask output takes part too.
        """
        h, w = emb.original_size
        points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        labels = np.asarray(labels).reshape(-1)
        if len(points) != len(labels):
            raise PromptError(f"{len(points)} points but {len(labels)} labels")
        if len(points) == 0 and box is None:
            raise PromptError("no prompt: give at least one point or a box")
        if not np.isfinite(points).all() or not np.isin(labels, (0, 1)).all():
            raise PromptError("points must be finite and labels 0 (negative) or 1 (positive)")
        if ((points < 0) | (points > [w, h])).any():
            raise PromptError(f"a point lies outside the {w}x{h} image")
        coords = labels_t = box_t = None
        if len(points):
            coords = self.transform.apply_coords_torch(
                torch.as_tensor(points, device=self.device)[None], emb.original_size
            )
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            box = np.asarray(box, dtype=np.float32).reshape(1, 4)
            if not np.isfinite(box).all():
                raise PromptError("the box must be finite numbers")
            box = np.clip(box, 0, [w, h, w, h])
            box_t = self.transform.apply_boxes_torch(torch.as_tensor(box, device=self.device), emb.original_size)
        logits, iou = self._decode(emb, points=(coords, labels_t) if coords is not None else None, boxes=box_t)
        first = 1 if len(points) == 1 and box is None else 0
        best = first + int(torch.argmax(iou[0, first:]))
        mask = self._to_original(emb, logits[:, best : best + 1])[0, 0].cpu().numpy()
        return mask, float(iou[0, best])

    def generate(self, emb: Embedding) -> list[tuple[np.ndarray, float]]:
        """Automatic masks from a point grid, tuned for books (see :mod:`annotator.sam.auto_masks`)."""
        return generate_book_masks(self, emb)

    @torch.inference_mode()
    def _decode(self, emb: Embedding, points=None, boxes=None) -> tuple[torch.Tensor, torch.Tensor]:
        """All four mask outputs: low-res logits ``(B, 4, 256, 256)`` and predicted IoU ``(B, 4)``.

        ``points`` = (coords ``(B, N, 2)``, labels ``(B, N)``) and ``boxes`` ``(B, 4)`` are in the
        encoder's input frame (after :attr:`transform`).
        """
        if self.onnx_decoder is not None:
            return self._decode_onnx(emb, points, boxes)
        with self._autocast():
            sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=None)
            logits, iou = self.sam.mask_decoder.predict_masks(
                image_embeddings=emb.features,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
            )
        return logits, iou.float()

    def _decode_onnx(self, emb: Embedding, points=None, boxes=None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_decode` on ONNX Runtime: prompts as SAM's ONNX model takes them (box = two corner
        points labelled 2 and 3; without a box a padding point labelled -1, as ``PromptEncoder`` adds)."""
        coords, labels = [], []
        if points is not None:
            coords.append(points[0].cpu().numpy())
            labels.append(points[1].cpu().numpy())
        if boxes is not None:
            corners = boxes.cpu().numpy().reshape(-1, 2, 2)
            coords.append(corners)
            labels.append(np.broadcast_to(np.array([2, 3]), corners.shape[:2]))
        else:
            b = coords[0].shape[0]
            coords.append(np.zeros((b, 1, 2), np.float32))
            labels.append(np.full((b, 1), -1))
        logits, iou = self.onnx_decoder(emb.features.numpy(), np.concatenate(coords, 1), np.concatenate(labels, 1))
        return torch.from_numpy(logits), torch.from_numpy(iou)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _paste(self, emb: Embedding, logits: torch.Tensor, out: np.ndarray) -> None:
        """Write ``to_original(logits)`` into ``out`` a few masks at a time (bounded memory on huge photos)."""
        h, w = emb.original_size
        step = max(1, (1 << 25) // (h * w))
        for i in range(0, len(logits), step):
            out[i : i + step] = self._to_original(emb, logits[i : i + step, None])[:, 0].cpu().numpy()

    def _to_original(self, emb: Embedding, logits: torch.Tensor) -> torch.Tensor:
        """Low-res logits ``(B, C, 256, 256)`` -> bool masks at the original size, in one resize.

        The valid (unpadded) part of the low-res grid is cropped and resized straight to
        ``original_size``, instead of SAM's 1024 px intermediate step.
        """
        scale = logits.shape[-1] / self.transform.target_length
        ch, cw = (max(1, round(s * scale)) for s in emb.input_size)
        logits = logits[..., :ch, :cw].float()
        return F.interpolate(logits, emb.original_size, mode="bilinear", align_corners=False) > self.sam.mask_threshold


def _to_record(emb: Embedding) -> dict:
    return {
        "features": emb.features.cpu(),
        "original_size": torch.tensor(emb.original_size),
        "input_size": torch.tensor(emb.input_size),
    }


def _from_record(key: str, record: dict, device: torch.device) -> Embedding:
    return Embedding(
        key,
        record["features"].to(device),
        tuple(int(v) for v in record["original_size"]),
        tuple(int(v) for v in record["input_size"]),
    )
