"""A tiny PNG encoder (zlib + struct only) and the stand-in's cover pictures.

The stand-in serves real, valid PNG files so that code which downloads,
stores or inspects cover images is exercised exactly as it would be against
Kie, without any image library.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib

#: The eight bytes every PNG file starts with.
PNG_SIGNATURE: bytes = b"\x89PNG\r\n\x1a\n"

#: Side length of the stand-in's square cover pictures, in pixels.
COVER_SIZE: int = 64


def _chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk: big-endian length, tag, data, CRC-32 of tag + data."""
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """Encode an 8-bit RGB picture as a PNG file.

    Args:
        width: picture width in pixels (at least 1).
        height: picture height in pixels (at least 1).
        rgb: ``width * height * 3`` bytes, rows top to bottom, pixels left to
            right, each pixel red, green, blue.

    Returns:
        The complete PNG file as bytes (signature, IHDR, one IDAT, IEND).

    Raises:
        ValueError: when the sizes are not positive or ``rgb`` has the wrong
            length.
    """
    if width < 1 or height < 1:
        raise ValueError(f"picture size must be positive, got {width}x{height}")
    stride = width * 3
    if len(rgb) != stride * height:
        raise ValueError(f"expected {stride * height} RGB bytes, got {len(rgb)}")
    # Filter type 0 (None) on every row: the pictures are tiny, so the better
    # compression of adaptive filters is not worth the code.
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    # Bit depth 8, colour type 2 (truecolour), default compression, filter
    # and no interlace.
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=256)
def cover_png(cover_id: str, index: int, size: int = COVER_SIZE) -> bytes:
    """The stand-in's picture number ``index`` of cover task ``cover_id``.

    The picture is deterministic (same arguments, same bytes) and differs per
    cover id and per index: its colours and geometry come from
    ``sha256(f"{cover_id}/{index}")``. Even indexes draw diagonal stripes and
    odd ones a checkerboard, echoing Kie's "two images in different styles";
    both get a disc in an accent colour.

    Args:
        cover_id: the cover task id.
        index: which of the cover's pictures (0 or 1 for Kie's two images).
        size: side length in pixels; default 64.

    Returns:
        A complete ``size`` x ``size`` RGB PNG file.
    """
    digest = hashlib.sha256(f"{cover_id}/{index}".encode()).digest()
    background = digest[0:3]
    foreground = digest[3:6]
    accent = digest[6:9]
    band = 3 + digest[9] % 10  # stripe or square width, pixels
    centre_x = digest[10] % size
    centre_y = digest[11] % size
    radius = size // 8 + digest[12] % (size // 4)
    radius_sq = radius * radius
    stripes = index % 2 == 0

    pixels = bytearray()
    for y in range(size):
        for x in range(size):
            dx, dy = x - centre_x, y - centre_y
            if dx * dx + dy * dy <= radius_sq:
                pixels += accent
            elif stripes:
                pixels += foreground if ((x + y) // band) % 2 else background
            else:
                pixels += foreground if ((x // band) + (y // band)) % 2 else background
    return encode_png(size, size, bytes(pixels))
