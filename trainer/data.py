"""A torch Dataset over one split of a dataset version, with augmentation that moves masks and boxes together.

Every photo reaches the network through :func:`trainer.inputs.model_input`, as in
evaluation, serving, pre-labelling and the ML backend. In training, before that resize, a photo may become:

- a *view* of another shape: a random crop with aspect ratio 1/3..3 (phone photos are 4:3 or
  3:4, a shelf row is a wide strip), keeping the books a person would still count (:func:`crop`);
- a *sparse scene*: 0-6 of its books, some turned to lie flat, pasted onto a book-free
  background made from the photo itself (copy-paste augmentation, Ghiasi et al. 2021). The
  sample holds only dense shelves; this shows the model what 0-6 books, and no books, look like;
- a *pile*: 1-5 whole books seen cover-on, made from its spines, beside boxes and fabric that are
  no books (:func:`pile_scene`; off in the default recipe until measured, ``pile_p``).

Then flips, rotation, scale and colour jitter. Boxes are recomputed from the augmented masks,
so a rotated book gets the tight box of its rotated mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bookcounter import masks as rle
from bookcounter.dataset_store import DatasetError, DatasetVersion
from bookcounter.images import read_image
from trainer.inputs import model_input
from trainer.model import ModelConfig

# A book cut by a crop still counts if this share of its mask is inside, or, when the crop
# keeps its whole width across (a tall spine crossing a shelf strip), this smaller share.
MIN_VISIBLE, MIN_VISIBLE_ACROSS = 0.3, 0.1
MAX_PASTED = 6


def stack_masks(anns: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """NxHxW bool masks of COCO annotations with RLE segmentations (N may be 0)."""
    return np.stack([rle.decode(a["segmentation"]) for a in anns]) if anns else np.zeros((0, height, width), bool)


def photos_with_masks(version: DatasetVersion, split: str) -> Iterator[tuple[PIL.Image.Image, np.ndarray]]:
    """(photo, NxHxW book masks) for every photo of ``split``, in the split's order."""
    coco = version.coco(split)
    anns: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        anns[a["image_id"]].append(a)
    for im in coco["images"]:
        photo = read_image(version.image_path(im))
        yield photo, stack_masks(anns[im["id"]], photo.height, photo.width)


def train_transforms() -> v2.Transform:
    """Flips, rotation up to +-15 degrees with scale jitter 0.75-1.25, colour jitter."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomApply([v2.RandomAffine(degrees=15, scale=(0.75, 1.25))], p=0.7),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
        ]
    )


def crop(
    image: PIL.Image.Image, masks: np.ndarray, box: tuple[int, int, int, int]
) -> tuple[PIL.Image.Image, np.ndarray]:
    """Crop to ``box`` (x0, y0, x1, y1); keep the books a person would still count.

    That is a book with >= MIN_VISIBLE of its area inside, or with >= MIN_VISIBLE_ACROSS inside
    and >= 80 % of its width across (its shorter extent) inside: a spine crossing a strip.
    """
    x0, y0, x1, y1 = box
    inside = masks[:, y0:y1, x0:x1]
    share = inside.reshape(len(masks), -1).sum(1) / np.maximum(masks.reshape(len(masks), -1).sum(1), 1)
    full_w, full_h = masks.any(1).sum(1), masks.any(2).sum(1)
    seen_w, seen_h = inside.any(1).sum(1), inside.any(2).sum(1)
    across = np.where(full_w <= full_h, seen_w >= 0.8 * full_w, seen_h >= 0.8 * full_h)
    keep = (share >= MIN_VISIBLE) | (across & (share >= MIN_VISIBLE_ACROSS))
    return image.crop(box), inside[keep]


def random_view(
    image: PIL.Image.Image, masks: np.ndarray, rng: np.random.Generator
) -> tuple[PIL.Image.Image, np.ndarray]:
    """A crop of 30-100 % of the photo's area with aspect ratio (w/h) log-uniform in 1/3..3."""
    w, h = image.size
    aspect = math.exp(rng.uniform(math.log(1 / 3), math.log(3)))
    area = rng.uniform(0.3, 1.0) * w * h
    cw, ch = min(w, round(math.sqrt(area * aspect))), min(h, round(math.sqrt(area / aspect)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return crop(image, masks, (x0, y0, x0 + cw, y0 + ch))


def sparse_scene(
    image: PIL.Image.Image, masks: np.ndarray, rng: np.random.Generator
) -> tuple[PIL.Image.Image, np.ndarray]:
    """0-6 of the photo's books pasted (some turned 90 degrees) onto a smooth book-free background.

    The background is the photo shrunk to a few pixels and blown up again, plus noise: the
    colours of a real room, no spines. Later pastes occlude earlier ones; a book left with less
    than MIN_VISIBLE of itself is dropped.
    """
    w, h = image.size
    canvas = room_background(image, rng)
    pixels = np.asarray(image)
    pasted: list[tuple[np.ndarray, int]] = []  # (visible mask, area when pasted)
    for k in rng.permutation(len(masks))[: int(rng.integers(0, MAX_PASTED + 1))]:
        ys, xs = np.nonzero(masks[k])
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        patch, shape = pixels[y0:y1, x0:x1], masks[k, y0:y1, x0:x1]
        if rng.random() < 0.4:  # lying flat, as in a pile
            patch, shape = np.rot90(patch), np.rot90(shape)
        ph, pw = shape.shape
        if ph > h or pw > w:
            continue
        py, px = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        full = np.zeros((h, w), bool)
        full[py : py + ph, px : px + pw] = shape
        canvas[full] = patch[shape]
        pasted = [(m & ~full, area) for m, area in pasted]
        pasted.append((full, int(shape.sum())))
    kept = [m for m, area in pasted if m.sum() >= MIN_VISIBLE * area]
    stacked = np.stack(kept) if kept else np.zeros((0, h, w), bool)
    return PIL.Image.fromarray(canvas), stacked


def room_background(image: PIL.Image.Image, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 uint8: the photo shrunk to a few pixels and blown up again, plus noise: its colours, no books."""
    w, h = image.size
    small = image.resize((int(rng.integers(2, 9)), int(rng.integers(2, 9))), PIL.Image.Resampling.BOX)
    background = np.asarray(small.resize((w, h), PIL.Image.Resampling.BICUBIC)).astype(np.int16)
    background += rng.normal(0, rng.uniform(2, 12), (h, w, 1)).astype(np.int16)
    return np.clip(background, 0, 255).astype(np.uint8)


def _clutter(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """Paint a thing that is no book onto ``canvas``: a cardboard box (two shaded faces) or a fold of fabric."""
    h, w = canvas.shape[:2]
    bw, bh = int(rng.uniform(0.2, 0.5) * w), int(rng.uniform(0.15, 0.4) * h)
    x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    colour = rng.integers(60, 220, 3)
    if rng.random() < 0.5:  # a box: a front face and a lighter top face
        top = max(2, bh // 4)
        canvas[y : y + top, x : x + bw] = np.clip(colour * 1.25, 0, 255)
        canvas[y + top : y + bh, x : x + bw] = colour
    else:  # fabric: soft parallel folds
        yy, xx = np.mgrid[0:bh, 0:bw]
        angle, period = rng.uniform(0, np.pi), rng.uniform(8, 30)
        shade = 0.75 + 0.25 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        canvas[y : y + bh, x : x + bw] = np.clip(colour * shade[..., None], 0, 255)


def pile_scene(
    image: PIL.Image.Image, masks: np.ndarray, rng: np.random.Generator
) -> tuple[PIL.Image.Image, np.ndarray]:
    """1-5 whole books seen cover-on (standing or lying flat), on a book-free background with clutter.

    The sample shows only spines on shelves. Here a book's spine texture is stretched onto a
    cover-shaped box (about 3:4) with a darker edge, covers overlap as in a pile, and a box or a
    fold of fabric (never a book) may lie beside them. Later books occlude earlier ones; a book
    left with less than MIN_VISIBLE of itself is dropped.
    """
    w, h = image.size
    canvas = room_background(image, rng)
    for _ in range(int(rng.integers(0, 3))):
        _clutter(canvas, rng)
    pixels = np.asarray(image)
    pasted: list[tuple[np.ndarray, int]] = []
    for k in rng.permutation(len(masks))[: int(rng.integers(1, 6))]:
        ys, xs = np.nonzero(masks[k])
        if len(ys) == 0:
            continue
        long = int(rng.uniform(0.2, 0.45) * min(w, h))
        short = max(4, int(long * rng.uniform(0.6, 0.8)))
        cw, ch = (long, short) if rng.random() < 0.5 else (short, long)  # lying flat or standing
        spine = PIL.Image.fromarray(pixels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
        cover = np.asarray(spine.resize((cw, ch), PIL.Image.Resampling.BILINEAR)).copy()
        edge = max(1, min(cw, ch) // 20)
        for band in (np.s_[:edge], np.s_[-edge:]):
            cover[band] = cover[band] * 0.6
            cover[:, band] = cover[:, band] * 0.6
        px, py = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        full = np.zeros((h, w), bool)
        full[py : py + ch, px : px + cw] = True
        canvas[full] = cover.reshape(-1, 3)
        pasted = [(m & ~full, area) for m, area in pasted]
        pasted.append((full, cw * ch))
    kept = [m for m, area in pasted if m.sum() >= MIN_VISIBLE * area]
    return PIL.Image.fromarray(canvas), np.stack(kept) if kept else np.zeros((0, h, w), bool)


class BookDataset(torch.utils.data.Dataset):
    """(image float tensor CxHxW in [0,1] at the network's input size, target dict with
    boxes/labels/masks/image_id) per photo.

    With ``train=True`` every item is augmented from a seed made of ``seed``, the epoch (set
    with :meth:`set_epoch`) and the index, so a resumed run sees the same augmentations.
    """

    def __init__(
        self,
        version: DatasetVersion,
        split: str,
        config: ModelConfig,
        train: bool = False,
        seed: int = 0,
        view_p: float = 0.0,
        sparse_p: float = 0.0,
        pile_p: float = 0.0,
    ):
        """``view_p`` / ``sparse_p`` / ``pile_p``: the share of training items that become a view / a
        sparse scene / a pile."""
        coco = version.coco(split)
        self.view_p, self.sparse_p, self.pile_p = view_p, sparse_p, pile_p
        self.version = version
        self.images = coco["images"]
        self.config = config
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.transforms = train_transforms() if train else None
        self._anns: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in self.images}
        for a in coco["annotations"]:
            self._anns[a["image_id"]].append(a)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        im = self.images[i]
        try:
            pil = read_image(self.version.image_path(im))
        except Exception as e:
            raise DatasetError(f"{self.version.name}: {im['file_name']}: {e}") from None
        anns = self._anns[im["id"]]
        m = stack_masks(anns, pil.height, pil.width)
        seed = hash((self.seed, self.epoch, i)) & 0x7FFFFFFF
        if self.train:
            rng = np.random.default_rng(seed)
            u = rng.random()
            if u < self.sparse_p:
                pil, m = sparse_scene(pil, m, rng)
            elif u < self.sparse_p + self.pile_p:
                pil, m = pile_scene(pil, m, rng)
            elif u < self.sparse_p + self.pile_p + self.view_p:
                pil, m = random_view(pil, m, rng)
        sized = model_input(pil, self.config)
        image = tv_tensors.Image(F.pil_to_tensor(sized))
        mask = tv_tensors.Mask(torch.from_numpy(m).to(torch.uint8))
        if sized.size != pil.size:
            mask = F.resize(mask, [sized.height, sized.width])
        if self.transforms is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image, mask = self.transforms(image, mask)
        mask = mask[mask.flatten(1).bool().any(1)] if len(mask) else mask
        boxes = masks_to_boxes(mask)
        target = {
            "boxes": boxes,
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "masks": mask.as_subclass(torch.Tensor),
            "image_id": torch.tensor(im["id"]),
        }
        return F.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor), target


def masks_to_boxes(mask: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (pixel edges, so a 1-pixel mask has width 1) of NxHxW masks."""
    if len(mask) == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    rows, cols = mask.any(2), mask.any(1)
    y0 = rows.float().argmax(1)
    y1 = mask.shape[1] - rows.flip(1).float().argmax(1)
    x0 = cols.float().argmax(1)
    x1 = mask.shape[2] - cols.flip(1).float().argmax(1)
    return torch.stack([x0, y0, x1, y1], 1).float()


def collate(batch: list) -> tuple:
    return tuple(zip(*batch))
