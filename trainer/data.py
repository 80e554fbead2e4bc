"""A torch Dataset over one split of a dataset version, with augmentation that moves masks and boxes together.

Photos are resized so the longer side is ``image_size`` before augmenting (the network
would resize them anyway; augmenting small tensors is cheaper). Boxes are recomputed from the
augmented masks, so a rotated book gets the tight box of its rotated mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from annotator.dataset_store import DatasetError, DatasetVersion
from bookcounter import masks as rle
from bookcounter.images import read_image


def train_transforms() -> v2.Transform:
    """Flips, rotation up to +-15 degrees with scale jitter 0.75-1.25, colour jitter."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomApply([v2.RandomAffine(degrees=15, scale=(0.75, 1.25))], p=0.7),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
        ]
    )


class BookDataset(torch.utils.data.Dataset):
    """(image float tensor CxHxW in [0,1], target dict with boxes/labels/masks/image_id) per photo.

    With ``train=True`` every item is augmented from a seed made of ``seed``, the epoch (set
    with :meth:`set_epoch`) and the index, so a resumed run sees the same augmentations.
    """

    def __init__(self, version: DatasetVersion, split: str, image_size: int, train: bool = False, seed: int = 0):
        coco = version.coco(split)
        self.version = version
        self.images = coco["images"]
        self.image_size = image_size
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

    def counts(self) -> list[int]:
        return [len(self._anns[im["id"]]) for im in self.images]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        im = self.images[i]
        try:
            pil = read_image(self.version.image_path(im))
        except Exception as e:
            raise DatasetError(f"{self.version.name}: {im['file_name']}: {e}") from None
        h, w = pil.height, pil.width
        anns = self._anns[im["id"]]
        m = np.stack([rle.decode(a["segmentation"]) for a in anns]) if anns else np.zeros((0, h, w), bool)
        image = tv_tensors.Image(F.pil_to_tensor(pil))
        mask = tv_tensors.Mask(torch.from_numpy(m).to(torch.uint8))
        scale = self.image_size / max(h, w)
        if scale < 1:
            size = [round(h * scale), round(w * scale)]
            image = F.resize(image, size, antialias=True)
            mask = F.resize(mask, size)
        if self.transforms is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
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
