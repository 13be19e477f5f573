"""Local image files named by an edit job: resolved and checked before anything is billed."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from runflow_async._imagesize import IMAGE_TYPE_BYTES, image_type_from_bytes

__all__ = ["MAX_LOCAL_IMAGE_BYTES", "local_file"]

# Mirrors the asset upload limit (_assets.MAX_UPLOAD_BYTES; docs: "1-50 MiB").
MAX_LOCAL_IMAGE_BYTES = 50 * 1024 * 1024


def local_file(entry: str, base: Path) -> tuple[Path, str | None]:
    """Resolve a local ``image_urls`` entry; return the path and what is wrong with it, if any."""
    if entry.startswith("file://"):
        raw = Path(url2pathname(urlsplit(entry).path))
    elif "://" in entry or entry.startswith("data:"):  # data: URIs are not accepted upstream
        return Path(entry), f"{entry[:60]}: not an http(s) URL, a file:// URL or a path"
    else:
        raw = Path(entry).expanduser()
    path = (base / raw).resolve()
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return path, f"{path}: not a regular file"
        if info.st_size == 0:
            return path, f"{path}: file is empty"
        if info.st_size > MAX_LOCAL_IMAGE_BYTES:
            return path, f"{path}: file is {info.st_size} bytes, over the 50 MiB upload limit"
        with path.open("rb") as fh:
            head = fh.read(IMAGE_TYPE_BYTES)
    except OSError as exc:  # missing, permission denied, a broken link...
        return path, f"{path}: {exc.strerror or exc}"
    if image_type_from_bytes(head) is None:  # what the asset upload accepts
        return path, f"{path}: not a PNG, JPEG, WebP or GIF image (by its first bytes)"
    return path, None
