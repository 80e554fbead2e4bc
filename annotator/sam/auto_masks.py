"""Automatic masks from a point grid, tuned for books (used before any champion model exists).

Like ``segment_anything``'s ``SamAutomaticMaskGenerator`` (whose helpers it uses) but on a
cached embedding, with no crops, and with filters for books: spines are narrow and tall (or
wide and flat when piled), so the grid is denser across than down, and masks that are tiny,
huge, square-ish blobs or shelf-board-long are dropped before NMS and overlap removal.
Filtering runs on SAM's 256 x 256 low-res logits; only survivors are resized to the photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score
from torchvision.ops import batched_nms

if TYPE_CHECKING:
    from annotator.sam.segmenter import Embedding, Segmenter


@dataclass(frozen=True)
class BookMaskParams:
    grid_cols: int = 24  # points across (spines are narrow)
    grid_rows: int = 12  # points down
    pred_iou_thresh: float = 0.80
    stability_score_thresh: float = 0.90
    stability_score_offset: float = 1.0
    min_area_frac: float = 0.0005  # of the image; below: specks
    max_area_frac: float = 0.25  # above: a whole shelf or wall
    min_aspect: float = 1.2  # long/short side of the box; below: square blobs, not books
    max_aspect: float = 25.0  # above: shelf boards and edges
    box_nms_thresh: float = 0.7
    max_overlap: float = 0.5  # drop a mask when this share of it is covered by better ones


def point_grid(cols: int, rows: int, width: int, height: int) -> np.ndarray:
    """Cell-centred grid of ``cols x rows`` points in pixel coordinates, shape ``(rows*cols, 2)``."""
    xs = (np.arange(cols) + 0.5) / cols * width
    ys = (np.arange(rows) + 0.5) / rows * height
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)


@torch.inference_mode()
def generate_book_masks(
    seg: Segmenter, emb: Embedding, params: BookMaskParams = BookMaskParams()
) -> list[tuple[np.ndarray, float]]:
    """Masks ``(H, W) bool`` with their predicted IoU, best first, after the book filters."""
    h, w = emb.original_size
    scale = 256 / seg.transform.target_length
    ch, cw = (max(1, round(s * scale)) for s in emb.input_size)
    low_area = ch * cw
    kept_logits, kept_boxes, kept_scores = [], [], []
    points = point_grid(params.grid_cols, params.grid_rows, w, h)
    for start in range(0, len(points), seg.decoder_batch):
        batch = torch.as_tensor(points[start : start + seg.decoder_batch], device=seg.device)
        coords = seg.transform.apply_coords_torch(batch, emb.original_size)[:, None, :]
        labels = torch.ones(len(batch), 1, dtype=torch.int, device=seg.device)
        logits, iou = seg._decode(emb, points=(coords, labels))
        logits = logits[:, 1:, :ch, :cw].flatten(0, 1)  # the three multimask outputs
        iou = iou[:, 1:].flatten().float()
        stability = calculate_stability_score(logits, seg.sam.mask_threshold, params.stability_score_offset)
        binary = logits > seg.sam.mask_threshold
        area = binary.sum(dim=(-1, -2)).float() / low_area
        boxes = batched_mask_to_box(binary).float()
        bw, bh = (boxes[:, 2] - boxes[:, 0] + 1), (boxes[:, 3] - boxes[:, 1] + 1)
        aspect = torch.maximum(bw, bh) / torch.minimum(bw, bh)
        keep = (
            (iou >= params.pred_iou_thresh)
            & (stability >= params.stability_score_thresh)
            & (area >= params.min_area_frac)
            & (area <= params.max_area_frac)
            & (aspect >= params.min_aspect)
            & (aspect <= params.max_aspect)
        )
        kept_logits.append(logits[keep])
        kept_boxes.append(boxes[keep])
        kept_scores.append(iou[keep])
    logits, boxes, scores = torch.cat(kept_logits), torch.cat(kept_boxes), torch.cat(kept_scores)
    if len(scores) == 0:
        return []
    order = batched_nms(boxes, scores, torch.zeros_like(scores), params.box_nms_thresh)
    masks = np.zeros((len(order), h, w), dtype=bool)
    seg._paste(emb, logits[order], masks)
    return _remove_overlaps(masks, scores[order].cpu().numpy(), params.max_overlap)


def _remove_overlaps(masks: np.ndarray, scores: np.ndarray, max_overlap: float) -> list[tuple[np.ndarray, float]]:
    """Greedy, best first: keep a mask unless more than ``max_overlap`` of it is already covered."""
    covered = np.zeros(masks.shape[1:], dtype=bool)
    out = []
    for mask, score in zip(masks, scores):
        area = mask.sum()
        if area == 0 or (mask & covered).sum() > max_overlap * area:
            continue
        covered |= mask
        out.append((mask, float(score)))
    return out
