"""One class that runs a trained model directory on photos (CPU or CUDA)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as nnf
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import boxes as box_ops

from bookcounter.errors import UserError
from trainer.inputs import input_size, model_input, to_tensor
from trainer.model import DEFAULT_NMS_IOU, ModelConfig, build_model, load_checkpoint_file

# Counting rule for sparse scenes (docs/recipe.md "Few books, whole books"): where at most
# SPARSE_MAX books are counted, a detection whose mask lies at least CONTAINED inside a larger
# counted one is a fragment of that book (one book split into strips), not a book of its own.
# A model uses it when the paired bootstrap says it counts better so on val and its sparse scenes
# (model.json ``whole_books``, trainer.evaluate.choose_whole_books).
SPARSE_MAX, CONTAINED = 10, 0.8


def whole_books(masks: list[np.ndarray]) -> list[int]:
    """Indices of the ``masks`` (counted detections, any order) that are books, not fragments of one."""
    if len(masks) > SPARSE_MAX:
        return list(range(len(masks)))
    areas = [max(1, int(m.sum())) for m in masks]
    kept: list[int] = []
    for i in sorted(range(len(masks)), key=lambda i: -areas[i]):
        if all((masks[i] & masks[k]).sum() < CONTAINED * areas[i] for k in kept):
            kept.append(i)
    return sorted(kept)


@dataclass
class Instance:
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in ORIGINAL image pixels
    mask: np.ndarray  # HxW bool, original image size


class Predictor:
    """A trained Mask R-CNN ready for inference (CPU or CUDA).

    The photo is resized by :func:`trainer.inputs.model_input` (the same rule as in training)
    before the network sees it; masks of the kept instances only are scaled to the size asked
    for, so a large photo costs memory for the books found, not for every candidate.
    """

    def __init__(self, model_dir: Path, device: str | None = None, model_version: str | None = None):
        model_dir = Path(model_dir)
        meta_path = model_dir / "model.json"
        if not meta_path.is_file():
            raise UserError(f"{model_dir}: not a model directory (no model.json)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.config = ModelConfig.from_dict(self.meta["model"])
        self.threshold: float = float(self.meta.get("threshold", 0.5))
        self.whole_books: bool = bool(self.meta.get("whole_books", False))  # count with whole_books()
        self.model_version: str = model_version or model_dir.name
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = build_model(self.config)
        load_checkpoint_file(model, model_dir / "model.pt")
        self.model = model.eval().to(self.device)
        # the NMS IoU of the counting operating point, chosen on val with the threshold
        self.set_nms_iou(float(self.meta.get("nms_iou", DEFAULT_NMS_IOU)))

    def set_nms_iou(self, iou: float) -> None:
        self.nms_iou = iou
        self.model.roi_heads.nms_thresh = iou

    def input_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (w, h) the network sees a photo of ``size`` (w, h) at."""
        return input_size(*size, self.config)

    def input_tensor(self, image: PIL.Image.Image) -> torch.Tensor:
        """The network's input for ``image`` (before the model's own normalisation)."""
        return to_tensor(model_input(image, self.config)).to(self.device)

    def _input(self, image: PIL.Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """The input tensor, and network pixels per photo pixel as an xyxy multiplier."""
        t = self.input_tensor(image)
        sx, sy = t.shape[-1] / image.width, t.shape[-2] / image.height
        return t, torch.tensor([sx, sy, sx, sy], device=self.device)

    @torch.inference_mode()
    def predict(
        self, image: PIL.Image.Image, threshold: float | None = None, mask_size: tuple[int, int] | None = None
    ) -> list[Instance]:
        """Instances with score >= ``threshold`` (default: the counted books: the counting threshold
        chosen on val, and, if the model counts so, no fragments of a book, :func:`whole_books`), best first.

        Boxes are in ``image`` pixels; masks at ``mask_size`` (w, h; default the image's size).
        """
        thr = self.threshold if threshold is None else threshold
        t, scale = self._input(image)
        # Candidates below the threshold never reach the mask head (it costs ~70% of a CPU call).
        self.model.roi_heads.score_thresh = thr
        out = self.model([t])[0]
        keep = out["scores"] >= thr
        probs = out["masks"][keep]  # (N,1,h,w) at the network's size
        masks = self._resize_masks(probs, mask_size or image.size)
        boxes = (out["boxes"][keep] / scale).cpu().numpy()
        scores = out["scores"][keep].cpu().numpy()
        found = [Instance(float(s), tuple(float(v) for v in b), m) for s, b, m in zip(scores, boxes, masks)]
        if threshold is not None or not self.whole_books:
            return found
        return [found[i] for i in whole_books([f.mask for f in found])]

    @torch.inference_mode()
    def candidates(self, image: PIL.Image.Image, min_score: float) -> tuple[np.ndarray, np.ndarray]:
        """Book boxes (xyxy, original pixels) with score >= ``min_score`` *before* NMS, and their scores.

        What :func:`trainer.evaluate.choose_operating_point` sweeps NMS IoUs over; no masks.
        """
        t, scale = self._input(image)
        images, _ = self.model.transform([t])  # normalises and pads; no resize
        features = self.model.backbone(images.tensors)
        proposals, _ = self.model.rpn(images, features)
        heads = self.model.roi_heads
        logits, deltas = heads.box_predictor(
            heads.box_head(heads.box_roi_pool(features, proposals, images.image_sizes))
        )
        boxes = box_ops.clip_boxes_to_image(
            heads.box_coder.decode(deltas, proposals)[:, 1], t.shape[-2:]
        )  # class 1 = book
        scores = logits.softmax(-1)[:, 1]
        keep = (
            (scores >= min_score) & (boxes[:, 2] - boxes[:, 0] >= 1e-2) & (boxes[:, 3] - boxes[:, 1] >= 1e-2)
        )  # as torchvision
        order = scores[keep].argsort(descending=True)
        boxes = boxes[keep][order] / scale
        return boxes.cpu().numpy(), scores[keep][order].cpu().numpy()

    @torch.inference_mode()
    def masks_for_boxes(self, image: PIL.Image.Image, boxes: np.ndarray) -> np.ndarray:
        """(N,H,W) bool masks from the mask head for given xyxy boxes in original pixels."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((0, image.height, image.width), bool)
        t, scale = self._input(image)
        images, _ = self.model.transform([t])  # normalises and pads; no resize
        net_boxes = torch.from_numpy(boxes).to(self.device) * scale
        features = self.model.backbone(images.tensors)
        heads = self.model.roi_heads
        x = heads.mask_head(heads.mask_roi_pool(features, [net_boxes], images.image_sizes))
        probs = heads.mask_predictor(x)[:, 1:2].sigmoid()  # class 1 = book
        pasted = paste_masks_in_image(probs, net_boxes, tuple(t.shape[-2:]))
        return self._resize_masks(pasted, image.size)

    def _resize_masks(self, probs: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(N,1,h,w) probabilities at the network's size -> (N,H,W) bool at ``size`` (w, h)."""
        width, height = size
        if len(probs) == 0:
            return np.zeros((0, height, width), bool)
        if probs.shape[-2:] != (height, width):
            probs = torch.cat(
                [nnf.interpolate(p[None], size=(height, width), mode="bilinear", align_corners=False)[0] for p in probs]
            )[:, None]
        return (probs[:, 0] > 0.5).cpu().numpy()
