"""Decoding photos the same way everywhere: validated, EXIF-upright, 8-bit RGB."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bookcounter.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class BadImage(UserError):
    """A file or upload that is not a usable photo; the message is one line for humans."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def decode_image(data: bytes, name: str = "image", max_megapixels: float | None = None) -> Image.Image:
    """Decode ``data`` into an upright 8-bit RGB image or raise :class:`BadImage`.

    EXIF orientation is applied, so pixel coordinates are those a person (or Label Studio)
    sees. Alpha is composited on white; grayscale and 16-bit photos become 8-bit RGB.
    """
    if not data:
        raise BadImage(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if max_megapixels is not None and img.width * img.height > max_megapixels * 1e6:
                raise BadImage(
                    f"{name}: {img.width}x{img.height} is over the {max_megapixels:g} megapixel limit"
                )
            img.load()
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(f"{name}: not an image (no known image format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"{name}: corrupt or truncated image ({e})") from None
    img = ImageOps.exif_transpose(img)
    return to_rgb8(img)


def to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode (16-bit, float, palette, alpha)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = a.max() if a.size else 1.0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0) if img.mode == "F" else 255.0)
        img = Image.fromarray(np.clip(a * scale, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def read_image(path: Path, max_megapixels: float | None = None) -> Image.Image:
    """Read and decode a photo from disk (see :func:`decode_image`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImage(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_image(data, str(path), max_megapixels)
