"""Decoding photos the same way everywhere: validated, EXIF-upright, 8-bit RGB."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bookcounter.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class BadImage(UserError):
    """A file or upload that is not a usable photo; the message is one line for humans."""


class ImageTooLarge(BadImage):
    """More pixels than the megapixel limit, by the header alone (a decompression bomb is one): HTTP 413."""


class ImageTooSmall(BadImage):
    """A shorter side under the minimum: too few pixels to hold a countable book (HTTP 422)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_size(width: int, height: int, name: str, max_megapixels: float | None, min_side: int | None) -> None:
    """Raise :class:`ImageTooLarge` or :class:`ImageTooSmall` if a ``width`` x ``height`` photo breaks a limit."""
    if max_megapixels is not None and width * height > max_megapixels * 1e6:
        raise ImageTooLarge(
            f"{name}: {width}x{height} ({width * height / 1e6:.1f} megapixels) is over the {max_megapixels:g} "
            "megapixel limit (BOOKCOUNTER_MAX_MEGAPIXELS)"
        )
    if min_side is not None and min(width, height) < min_side:
        raise ImageTooSmall(
            f"{name}: {width}x{height} is too small to count books in: the shorter side must be at least "
            f"{min_side} px (BOOKCOUNTER_MIN_PHOTO_SIDE)"
        )


def check_photo(data: bytes, name: str, max_megapixels: float | None, min_side: int | None) -> None:
    """The size rules of :func:`decode_image` from the header only (nothing is decoded), and
    :class:`BadImage` for a file that is not an image at all."""
    _open(data, name, max_megapixels, min_side).close()


def _open(data: bytes, name: str, max_megapixels: float | None, min_side: int | None) -> Image.Image:
    """The lazily opened image (header read) after the size rules."""
    if not data:
        raise BadImage(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage(f"{name}: not an image (no known image format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL's own bound (89 megapixels) is hit inside open(): its message holds the claimed size
        claimed = re.search(r"\((\d+) pixels\)", str(e))
        pixels = int(claimed[1]) if claimed else Image.MAX_IMAGE_PIXELS
        limit = max_megapixels if max_megapixels is not None else round(Image.MAX_IMAGE_PIXELS / 1e6)
        raise ImageTooLarge(
            f"{name}: the header claims {pixels / 1e6:.1f} megapixels, over the {limit:g} megapixel limit "
            "(BOOKCOUNTER_MAX_MEGAPIXELS)"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"{name}: corrupt or truncated image ({e})") from None
    check_size(img.width, img.height, name, max_megapixels, min_side)
    return img


def decode_image(
    data: bytes, name: str = "image", max_megapixels: float | None = None, min_side: int | None = None
) -> Image.Image:
    """Decode ``data`` into an upright 8-bit RGB image or raise :class:`BadImage`.

    The size rules (:func:`check_size`) are applied to the header before any pixel is decoded:
    :class:`ImageTooLarge` over ``max_megapixels``, :class:`ImageTooSmall` under ``min_side``.
    EXIF orientation is applied, so pixel coordinates are those a person (or Label Studio)
    sees. Alpha is composited on white; grayscale and 16-bit photos become 8-bit RGB.
    """
    img = _open(data, name, max_megapixels, min_side)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
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


def read_image(path: Path, max_megapixels: float | None = None, min_side: int | None = None) -> Image.Image:
    """Read and decode a photo from disk (see :func:`decode_image`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImage(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_image(data, str(path), max_megapixels, min_side)
