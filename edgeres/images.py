"""Decoding an image file within bounds: its size known from its header before any pixel is decoded.

A 437 kB PNG can claim 60000 x 60000 pixels (10 GB decoded); OpenCV refuses some such files
with an exception and decodes others into gigabytes. Here the header says how large the
image is first: a JPEG above the limit is decoded at a half, quarter or eighth of its size
(libjpeg scales while it decodes, so the full image never exists), anything else above the
limit is refused with its size. A classifier looks at a 224-pixel crop: nothing is lost.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

MAX_PIXELS = 64_000_000  # decoded at most: 192 MB of BGR; a 64 MP camera's full frame
# OpenCV's own cap for every format, headers this module cannot read included (TIFF, JPEG 2000, ...);
# it reads the variable at its first decode, so it is set before cv2 is imported here.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402
import numpy as np

from .errors import EdgeresError
from .files import IMAGE_LIMIT, read_bytes

JPEG_REDUCED = ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))


class ImageError(EdgeresError):
    """An image file that cannot be classified: unreadable, not an image, or too large."""


def decode_image(path: Path) -> np.ndarray:
    """The image at `path` as BGR uint8, or ImageError saying why not."""
    data = read_bytes(path, IMAGE_LIMIT, "image", ImageError)
    if not data:
        raise ImageError(f"image {path} is empty")
    size = header_size(data)
    flags = cv2.IMREAD_COLOR
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        flags = _reduced_jpeg(data, size)
        if flags is None:
            raise ImageError(f"image {path} is {size[0]} x {size[1]} pixels, more than the {MAX_PIXELS // 1_000_000} "
                             "megapixels edgeres decodes; downscale it first")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as error:  # OpenCV's own limits (CV_IO_MAX_IMAGE_PIXELS) and decoder failures
        if "CV_IO_MAX_IMAGE_PIXELS" in str(error):
            raise ImageError(f"image {path} has more than the {MAX_PIXELS // 1_000_000} megapixels edgeres "
                             "decodes; downscale it first") from None
        raise ImageError(f"image {path} cannot be decoded: {_last_line(error)}") from None
    if image is None:
        raise ImageError(f"image {path} cannot be decoded; is it a corrupt or non-image file?")
    return image


def read_image(path: Path) -> np.ndarray | None:
    """A BGR uint8 image, or None if it cannot be decoded for any reason (calibration skips and counts those)."""
    try:
        return decode_image(path)
    except ImageError:
        return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP or WebP header; None for other formats or a broken header."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill bytes before a marker (libjpeg skips them too)
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame: the size
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        position += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        return width, 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def _reduced_jpeg(data: bytes, size: tuple[int, int]) -> int | None:
    if data[:2] != b"\xff\xd8":
        return None
    return next((flags for factor, flags in JPEG_REDUCED if size[0] * size[1] // factor ** 2 <= MAX_PIXELS), None)


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
