"""Output images: real PNG/JPEG/WebP files of the exact size, rendered on first fetch.

Pillow is imported lazily, so the server runs without it (the ``emulator`` extra
installs it); a fetch then fails with ``PillowMissingError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections import OrderedDict
from collections.abc import Mapping

from runflow_async._pricing import Size

__all__ = ["ImageRenderer", "PillowMissingError"]

_PIL_FORMATS: Mapping[str, str] = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
# Fast encoder settings: these images are test fixtures, not art.
_SAVE_OPTIONS: Mapping[str, Mapping[str, int]] = {
    "png": {"compress_level": 1},
    "jpeg": {"quality": 85},
    "webp": {"quality": 60, "method": 0},
}

ImageKey = tuple[str, int, str, Size]


class PillowMissingError(RuntimeError):
    """Pillow is not installed, so the emulator cannot render images."""


def render_image(name: str, size: Size, output_format: str) -> bytes:
    """Render a deterministic picture for ``name``: a background, a block and a disc.

    Raises:
        PillowMissingError: If Pillow cannot be imported.
    """
    try:
        # Imported here: Pillow is an optional dependency (the "emulator" extra).
        from PIL import Image, ImageDraw
    except ImportError as exc:
        raise PillowMissingError("install runflow-async[emulator] to render images") from exc
    digest = hashlib.sha256(name.encode()).digest()
    width, height = size
    image = Image.new("RGB", size, (digest[0], digest[1], digest[2]))
    draw = ImageDraw.Draw(image)
    left, top = digest[9] * width // 512, digest[10] * height // 512
    draw.rectangle((left, top, left + width // 2, top + height // 2), fill=tuple(digest[3:6]))
    radius = max(1, min(width, height) // 4)
    cx, cy = width - left - radius, height - top - radius
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=tuple(digest[6:9]))
    buffer = io.BytesIO()
    image.save(buffer, _PIL_FORMATS[output_format], **_SAVE_OPTIONS[output_format])
    return buffer.getvalue()


class ImageRenderer:
    """Renders images off the event loop and keeps the most recent ones."""

    __slots__ = ("_cache", "_max_entries")

    def __init__(self, max_entries: int = 32) -> None:
        self._cache: OrderedDict[ImageKey, bytes] = OrderedDict()
        self._max_entries = max_entries

    async def render(self, run_id: str, index: int, output_format: str, size: Size) -> bytes:
        """Return the bytes of image ``index`` of run ``run_id``.

        Raises:
            PillowMissingError: If Pillow cannot be imported.
        """
        key: ImageKey = (run_id, index, output_format, size)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        data = await asyncio.to_thread(render_image, f"{run_id}/{index}", size, output_format)
        self._cache[key] = data
        if len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return data
