"""``runflow-async preview DIR``: a contact sheet (PNG) and a gallery (``index.html``).

Both go to ``DIR/.preview/`` (hidden, so no loader takes them for data):
``contact-sheet.png`` is a grid of the first ``count`` images, each scaled to
fit a ``THUMB`` x ``THUMB`` box, with its prompt under it (wrapped, at most
``CAPTION_LINES`` lines, the last cut with ``...``). The sheet's layout, in
pixels, with ``n`` images::

    columns = min(columns, n); rows = ceil(n / columns)
    width   = columns * THUMB + (columns + 1) * PAD
    height  = rows * (THUMB + CAPTION) + (rows + 1) * PAD
    CAPTION = CAPTION_LINES * LINE_HEIGHT + PAD

Cell ``(r, c)`` starts at ``(PAD + c * (THUMB + PAD), PAD + r * (THUMB + CAPTION + PAD))``.
Needs Pillow (the ``emulator`` extra). Images are read through
:func:`~runflow_async._dataset.listing.entries`, whatever the folder's layout.
"""

from __future__ import annotations

import io
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from runflow_async._dataset.listing import Entry, NotADatasetError, entries
from runflow_async._dataset.preview_html import Tile, render_html

if TYPE_CHECKING:
    from PIL import Image, ImageFont

__all__ = [
    "CAPTION",
    "LINE_HEIGHT",
    "PAD",
    "PREVIEW_DIR",
    "THUMB",
    "PillowMissingError",
    "Preview",
    "sheet_size",
    "write_preview",
]

PREVIEW_DIR = ".preview"
THUMB = 192
PAD = 8
LINE_HEIGHT = 15
CAPTION_LINES = 3
CAPTION = CAPTION_LINES * LINE_HEIGHT + PAD
BACKGROUND = (245, 245, 245)
_TEXT = (34, 34, 34)
_FONT_SIZE = 12


class PillowMissingError(RuntimeError):
    """The preview needs Pillow, which is not installed."""


@dataclass(frozen=True, slots=True)
class Preview:
    """What :func:`write_preview` wrote."""

    sheet: Path
    html: Path
    images: int
    columns: int
    rows: int


def sheet_size(images: int, columns: int) -> tuple[int, int, int, int]:
    """``(width, height, columns, rows)`` of the sheet of ``images`` images (module doc)."""
    columns = max(1, min(columns, images))
    rows = math.ceil(images / columns)
    return (
        columns * THUMB + (columns + 1) * PAD,
        rows * (THUMB + CAPTION) + (rows + 1) * PAD,
        columns,
        rows,
    )


def write_preview(out_dir: Path, *, count: int = 24, columns: int = 6) -> Preview:
    """Write the contact sheet and the gallery of ``out_dir``'s first ``count`` images.

    Raises:
        NotADatasetError: ``out_dir`` is not a dataset folder, or has no images yet.
        PillowMissingError: Pillow is not installed.
    """
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:
        raise PillowMissingError(
            "preview needs Pillow: pip install 'runflow-async[emulator]' (or pillow)"
        ) from exc
    shown = list(entries(out_dir, limit=count))
    if not shown:
        raise NotADatasetError(f"{out_dir} has no images yet")
    total = sum(1 for _ in entries(out_dir))
    width, height, columns, rows = sheet_size(len(shown), columns)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=_FONT_SIZE)
    dest = out_dir / PREVIEW_DIR
    dest.mkdir(exist_ok=True)
    for stale in dest.glob(".*.tmp"):  # what a killed preview left
        stale.unlink(missing_ok=True)
    tiles = []
    for index, entry in enumerate(shown):
        x = PAD + (index % columns) * (THUMB + PAD)
        y = PAD + (index // columns) * (THUMB + CAPTION + PAD)
        thumb = _thumbnail(entry)
        prompt = str(entry.row.get("prompt", ""))
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        for line_no, line in enumerate(_wrap(prompt, font, THUMB)):
            draw.text((x, y + THUMB + PAD // 2 + line_no * LINE_HEIGHT), line, _TEXT, font)
        tiles.append(_tile(entry, thumb, prompt, dest))
    sheet_path = _atomic(dest / "contact-sheet.png", lambda fh: sheet.save(fh, "PNG"))
    page = render_html(out_dir.resolve().name, tiles, total=total).encode()
    html_path = _atomic(dest / "index.html", lambda fh: fh.write(page))
    return Preview(sheet_path, html_path, len(shown), columns, rows)


def _thumbnail(entry: Entry) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(entry.read())) as image:
            thumb = image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        thumb = Image.new("RGB", (THUMB, THUMB), (200, 60, 60))  # unreadable: a red square
    thumb.thumbnail((THUMB, THUMB))
    return thumb


def _tile(entry: Entry, thumb: Image.Image, prompt: str, dest: Path) -> Tile:
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=85)
    row = entry.row
    details = [
        (name, "" if row.get(name) is None else str(row[name]))
        for name in ("seed", "cost_usd", "run_id")
    ]
    details.insert(1, ("size", f"{row.get('width')}x{row.get('height')}"))
    href = None if entry.path is None else Path(os.path.relpath(entry.path, dest)).as_posix()
    return Tile(buffer.getvalue(), thumb.width, thumb.height, prompt, details, href)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` in lines that fit ``width`` px, at most ``CAPTION_LINES``, the last cut ``...``."""
    lines: list[str] = []
    words = text.split()
    line = ""
    while words:
        word = words.pop(0)
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:  # the word starts the next line
            lines.append(line)
            words.insert(0, word)
            line = ""
        else:  # one word wider than the box: cut it
            cut = _fit(word, font, width)
            lines.append(cut)
            words.insert(0, word[len(cut) :])
        if len(lines) == CAPTION_LINES:
            break
    if line and len(lines) < CAPTION_LINES:
        lines.append(line)
    elif words or line:  # more than fits: the last line ends with "..."
        lines[-1] = _fit(lines[-1], font, width, suffix="...") + "..."
    return lines


def _fit(
    text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int, suffix: str = ""
) -> str:
    """The longest start of ``text`` that fits ``width`` px with ``suffix`` (at least 1 char)."""
    end = len(text)
    while end > 1 and font.getlength(text[:end] + suffix) > width:
        end -= 1
    return text[:end]


def _atomic(dest: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``dest`` through ``write(file)`` to a temporary file, then rename it."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
    try:
        with tmp.open("wb") as fh:
            write(fh)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
