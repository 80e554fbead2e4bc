"""A PNG of the photo with each book's mask tinted and outlined and its number drawn on it."""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ALPHA = 0.45


def palette(i: int) -> tuple[int, int, int]:
    """Well-separated colours: hues stepped by the golden ratio."""
    r, g, b = colorsys.hsv_to_rgb((0.08 + i * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render_overlay(image: Image.Image, masks: list[np.ndarray], caption: str) -> bytes:
    """``masks`` are HxW bool at ``image`` size; book ``i`` is labelled ``i + 1``."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for i, mask in enumerate(masks):
        color = np.array(palette(i), dtype=np.float32)
        rgb[mask] = rgb[mask] * (1 - ALPHA) + color * ALPHA
        rgb[_outline(mask)] = color
    out = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(10, min(out.size) // 22))
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if xs.size == 0:
            continue
        cx, cy = float(xs.mean()), float(ys.mean())
        draw.text((cx, cy), str(i + 1), font=font, anchor="mm", fill="white", stroke_width=2, stroke_fill="black")
    caption_font = ImageFont.load_default(
        size=max(8, min(min(out.size) // 20, int(out.width / (0.6 * len(caption) + 1))))
    )
    draw.text((8, 8), caption, font=caption_font, fill="white", stroke_width=3, stroke_fill="black")
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
