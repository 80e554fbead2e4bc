"""How small a photo can be and still be counted: the minimum-size rule of ``bookcounter/images.py``.

Counts the val photos of the open-shelves sample (never test) downscaled so their shorter
side is each of ``--sides`` pixels, with one trained model, and prints per size the count MAE
against the COCO annotations, the mean count and the share of photos counted within 25 %.
Then the same for sparse photos: each val photo cut into four vertical strips (a quarter of
the width, about 5 books each; a book belongs to the strip holding most of its box).
Also prints what the model answers for a few photos with nothing to count (flat grey, noise)
at small sizes: a model upscales every photo to its input size, so a tiny photo is counted
as blur, not refused.

    .venv/bin/python -m bench.min_photo_size MODEL_DIR [--photos 12]
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from bookcounter.images import read_image
from bookcounter.settings import get_settings
from trainer.predictor import Predictor

SIDES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 640)


def downscaled(image: Image.Image, side: int) -> Image.Image:
    scale = side / min(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--sample", type=Path, default=None, help="open-shelves dir (default: settings.sample_dir)")
    p.add_argument("--photos", type=int, default=8, help="first N val photos")
    p.add_argument("--sides", type=int, nargs="+", default=list(SIDES), help="shorter sides to try, pixels")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    sample = args.sample or get_settings().sample_dir
    coco = json.loads((sample / "val.json").read_text())
    truth = Counter(a["image_id"] for a in coco["annotations"])
    images = coco["images"][: args.photos]
    photos = [(read_image(sample / im["file_name"]), truth[im["id"]]) for im in images]
    predictor = Predictor(args.model_dir, device="cpu")

    strips = []
    for im, (image, _) in zip(images, photos, strict=True):
        w = image.width // 4
        boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == im["id"]]
        for k in range(4):
            inside = sum(max(0.0, min(x + bw, (k + 1) * w) - max(x, k * w)) > bw / 2 for x, _, bw, _ in boxes)
            strips.append((image.crop((k * w, 0, (k + 1) * w, image.height)), inside))

    print(f"model {args.model_dir}")
    for title, items in (("val photos", photos), ("quarter-width strips of them", strips)):
        print(f"\n{len(items)} {title}, {np.mean([t for _, t in items]):.1f} books each on average")
        print(f"{'side px':>8} {'count MAE':>10} {'mean count':>11} {'within 25%':>11}")
        for side in args.sides:
            if side > min(items[0][0].size):
                continue
            errors, counts, close = [], [], 0
            for image, want in items:
                got = len(predictor.predict(downscaled(image, side)))
                errors.append(abs(got - want))
                counts.append(got)
                close += abs(got - want) <= 0.25 * want
            print(f"{side:>8} {np.mean(errors):>10.2f} {np.mean(counts):>11.1f} {close / len(items):>10.0%}")

    rng = np.random.default_rng(0)
    print("\nphotos with no book in them (counts):")
    print(f"{'side px':>8} {'flat grey':>10} {'noise':>6}")
    for side in (8, 16, 32, 64):
        grey = Image.new("RGB", (side, side), (128, 128, 128))
        noise = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        print(f"{side:>8} {len(predictor.predict(grey)):>10} {len(predictor.predict(noise)):>6}")


if __name__ == "__main__":
    main()
