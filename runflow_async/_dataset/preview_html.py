"""The preview's ``index.html``: a gallery that opens from disk, with no network at all.

Thumbnails are inline (``data:`` JPEGs), so the page is one file that works
wherever it is copied; each links to its full image by a relative path when
the image is a file. Every text (prompts are user input) is HTML-escaped; a
Content-Security-Policy allows no fetch at all, and only the page's own small
script (by its hash), which marks ``<body data-loaded=N data-failed=M>`` once
every image has loaded or failed (tests read it from the rendered DOM).
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Tile", "render_html"]

_SCRIPT = """
(function () {
  var images = document.images, left = images.length, failed = 0;
  function mark() {
    document.body.setAttribute("data-failed", String(failed));
    document.body.setAttribute("data-loaded", String(images.length - failed));
  }
  function one(ok) { if (!ok) { failed += 1; } left -= 1; if (left === 0) { mark(); } }
  if (left === 0) { mark(); }
  for (var i = 0; i < images.length; i += 1) {
    var image = images[i];
    if (image.complete) { one(image.naturalWidth > 0); continue; }
    image.addEventListener("load", function () { one(true); });
    image.addEventListener("error", function () { one(false); });
  }
})();
"""
_STYLE = """
body { font-family: sans-serif; margin: 1em; background: #f5f5f5; color: #222; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; }
figure { margin: 0; background: #fff; padding: 8px; border-radius: 4px; }
figure img { display: block; max-width: 100%; margin: 0 auto; }
figcaption { font-size: 13px; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 0 6px; font-size: 12px; color: #555; }
dd { margin: 0; overflow-wrap: anywhere; }
"""


@dataclass(frozen=True, slots=True)
class Tile:
    """One image of the gallery: its thumbnail (JPEG bytes) and what is shown under it."""

    jpeg: bytes
    width: int
    height: int
    prompt: str
    details: Sequence[tuple[str, str]]
    href: str | None = None


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    return (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; form-action 'none'; base-uri 'none'"
    )


def _figure(tile: Tile) -> str:
    e = html.escape
    data = base64.b64encode(tile.jpeg).decode()
    img = (
        f'<img src="data:image/jpeg;base64,{data}" width="{tile.width}" '
        f'height="{tile.height}" alt="{e(tile.prompt)}">'
    )
    if tile.href is not None:
        img = f'<a href="{e(tile.href)}">{img}</a>'
    details = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in tile.details)
    return (
        f'<figure>{img}<figcaption class="prompt">{e(tile.prompt)}</figcaption>'
        f"<dl>{details}</dl></figure>\n"
    )


def render_html(title: str, tiles: Sequence[Tile], *, total: int) -> str:
    """The gallery page of ``tiles`` (the first of ``total`` images)."""
    e = html.escape
    figures = "".join(_figure(tile) for tile in tiles)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_csp()}">\n'
        f"<title>{e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f'<body data-images="{len(tiles)}">\n'
        f"<h1>{e(title)}</h1>\n<p>The first {len(tiles)} of {total} images.</p>\n"
        f"<main>\n{figures}</main>\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )
