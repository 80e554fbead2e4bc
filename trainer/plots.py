"""The PNGs of an evaluation report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bookcounter import masks as rle
from bookcounter.dataset_store import DatasetVersion
from bookcounter.images import read_image


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(history: list[dict[str, float]], iter_losses: list[float], path: Path) -> str:
    """Total loss per iteration (faint) and each loss term per epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if iter_losses:
        ax.plot(
            np.arange(1, len(iter_losses) + 1) / max(1, len(iter_losses) / max(1, len(history))),
            iter_losses,
            alpha=0.3,
            label="loss per iteration",
        )
    for key in sorted({k for row in history for k in row if k.startswith("loss")}):
        ax.plot([r["epoch"] for r in history], [r[key] for r in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("training losses")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def count_scatter(true: list[int], pred: list[int], path: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, pred, alpha=0.7)
    top = max([1, *true, *pred])
    ax.plot([0, top], [0, top], "k--", linewidth=1)
    ax.set_xlabel("true count")
    ax.set_ylabel("predicted count")
    ax.set_title("books per photo")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def worst_photos(
    version: DatasetVersion, gt: dict[str, Any], results: list[dict[str, Any]], threshold: float, path: Path, n: int = 5
) -> str:
    """The ``n`` photos with the largest count error, predicted masks drawn in colour."""
    plt = _pyplot()
    by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in gt["images"]}
    for r in results:
        if r["score"] >= threshold:
            by_image[r["image_id"]].append(r)
    truth = {im["id"]: 0 for im in gt["images"]}
    for a in gt["annotations"]:
        truth[a["image_id"]] += 1
    worst = sorted(gt["images"], key=lambda im: -abs(len(by_image[im["id"]]) - truth[im["id"]]))[:n]
    fig, axes = plt.subplots(1, max(1, len(worst)), figsize=(4 * max(1, len(worst)), 4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, im in zip(axes[0], worst):
        photo = np.asarray(read_image(version.image_path(im)), dtype=np.float32) / 255
        for r in by_image[im["id"]]:
            m = rle.decode(r["segmentation"])
            photo[m] = 0.5 * photo[m] + 0.5 * rng.random(3)
        ax.imshow(photo)
        ax.set_title(f"true {truth[im['id']]}, predicted {len(by_image[im['id']])}", fontsize=9)
        ax.axis("off")
    for ax in axes[0][len(worst) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
