"""Image dimensions from the first bytes of a PNG, JPEG, WebP or GIF file.

Pure byte parsing, no dependencies: cost estimates need the pixel size of edit
inputs, and a ranged GET of the header is far cheaper than downloading and
decoding the image. Every parser reads forward only, so a prefix of a file
either gives the file's size or ``None``; truncated, corrupt or unknown data
gives ``None``, never an exception.

Sizes are the stored pixel grid: EXIF orientation is not applied, so a JPEG
shot in portrait may report ``(width, height)`` swapped relative to how it is
displayed. The area, which is all that billing depends on, is the same.

Format references: PNG (https://www.w3.org/TR/png-3/#11IHDR), JPEG (ITU-T T.81
B.1.1.2 and Table B.1), WebP (RFC 9649 sections 2.5-2.7), GIF89a (section 18).
"""

from __future__ import annotations

import os
import struct

from runflow_async._pricing import Size

__all__ = [
    "HEADER_BYTES",
    "IMAGE_TYPE_BYTES",
    "image_size_from_bytes",
    "image_size_from_path",
    "image_type_from_bytes",
]

HEADER_BYTES = 65536
"""Leading bytes that hold the size of any PNG, WebP, GIF and nearly every JPEG.

A JPEG whose SOF marker follows more than ~64 KiB of metadata (a full EXIF
segment with a large thumbnail, an ICC profile) is reported as unknown.
"""

IMAGE_TYPE_BYTES = 12
"""Leading bytes enough for :func:`image_type_from_bytes` to tell every format apart."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
# SOF0-SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-RST7, SOI (T.81 B.1.1.3).
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
_JPEG_EOI = 0xD9
_JPEG_SOS = 0xDA
_VP8_START_CODE = b"\x9d\x01\x2a"
_VP8L_SIGNATURE = 0x2F


def _positive(width: int, height: int) -> Size | None:
    return (width, height) if width > 0 and height > 0 else None


def _png_size(data: bytes) -> Size | None:
    # The IHDR chunk must come first: length (13), type, width, height.
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return _positive(width, height)


def _gif_size(data: bytes) -> Size | None:
    # The logical screen descriptor follows the signature.
    if len(data) < 10:
        return None
    width, height = struct.unpack("<HH", data[6:10])
    return _positive(width, height)


def _webp_size(data: bytes) -> Size | None:
    chunk = data[12:16]
    payload = data[20:30]
    if chunk == b"VP8 ":
        # Frame tag (3 bytes), start code, then 14-bit width and height.
        if len(payload) < 10 or payload[3:6] != _VP8_START_CODE:
            return None
        width, height = struct.unpack("<HH", payload[6:10])
        return _positive(width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        # Signature byte, then 14 bits of width-1 and 14 bits of height-1.
        if len(payload) < 5 or payload[0] != _VP8L_SIGNATURE:
            return None
        bits = int.from_bytes(payload[1:5], "little")
        return ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        # Flags (4 bytes), then 24-bit canvas width-1 and height-1.
        if len(payload) < 10:
            return None
        width = int.from_bytes(payload[4:7], "little") + 1
        height = int.from_bytes(payload[7:10], "little") + 1
        return (width, height)
    return None


def _jpeg_size(data: bytes) -> Size | None:
    pos = 2  # past SOI
    end = len(data)
    while pos < end:
        if data[pos] != 0xFF:
            return None  # not at a marker: corrupt, or entropy-coded data we cannot skip
        while pos < end and data[pos] == 0xFF:
            pos += 1  # fill bytes (T.81 B.1.1.2)
        if pos >= end:
            return None
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0x00, _JPEG_EOI, _JPEG_SOS):
            return None  # stuffed byte, end of image, or scan data before any frame header
        if pos + 2 > end:
            return None
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            # Length, sample precision, number of lines, samples per line.
            if pos + 7 > end:
                return None
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return _positive(width, height)  # 0 lines means a DNL marker defines it later
        pos += length
    return None


def image_size_from_bytes(data: bytes) -> Size | None:
    """Return ``(width, height)`` read from the header of an image file.

    Recognises PNG, JPEG (baseline, progressive, lossless, arithmetic), WebP
    (lossy ``VP8``, lossless ``VP8L`` and extended ``VP8X``) and GIF. EXIF
    orientation is not applied: the stored pixel grid is reported.

    Args:
        data: The file's first bytes; :data:`HEADER_BYTES` is enough in practice.

    Returns:
        The size in pixels, or ``None`` when the format is unknown or the
        header is truncated or corrupt. Never raises for any ``bytes`` value.
    """
    if data.startswith(_PNG_SIGNATURE):
        return _png_size(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data.startswith(_GIF_SIGNATURES):
        return _gif_size(data)
    return None


def image_type_from_bytes(data: bytes) -> str | None:
    """Return the MIME type of an image file from its magic bytes.

    Only the signature is read (:data:`IMAGE_TYPE_BYTES` are enough): a file
    that starts like an image may still be truncated or corrupt further on.

    Args:
        data: The file's first bytes.

    Returns:
        ``"image/png"``, ``"image/jpeg"``, ``"image/webp"`` or ``"image/gif"``;
        ``None`` for anything else (JSON, HTML, text, an unknown format). Never
        raises for any ``bytes`` value.
    """
    if data.startswith(_PNG_SIGNATURE):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(_GIF_SIGNATURES):
        return "image/gif"
    return None


def image_size_from_path(path: str | os.PathLike[str]) -> Size | None:
    """Return ``(width, height)`` of the image file at ``path``.

    Reads at most :data:`HEADER_BYTES` bytes; see :func:`image_size_from_bytes`.

    Args:
        path: The image file.

    Returns:
        The size in pixels, or ``None`` if the file is not a recognised image.

    Raises:
        OSError: If the file cannot be opened or read.
    """
    with open(path, "rb") as fh:
        return image_size_from_bytes(fh.read(HEADER_BYTES))
