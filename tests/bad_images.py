"""Photos every door must refuse the same way (``bookcounter.images``): a decompression bomb and a tiny photo."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` (1600 megapixels) and almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def tiny_jpeg(side: int = 8) -> bytes:
    """A ``side`` x ``side`` JPEG of a few coloured stripes: a real photo, too small to count books in."""
    img = Image.new("RGB", (side, side), (235, 225, 205))
    for x in range(0, side, 3):
        img.paste((40 * x % 200, 60, 120), (x, 1, x + 2, side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


BOMB_MESSAGE = "over the 50 megapixel limit"  # with the default BOOKCOUNTER_MAX_MEGAPIXELS
TINY_MESSAGE = "at least 64 px"  # with the default BOOKCOUNTER_MIN_PHOTO_SIDE
