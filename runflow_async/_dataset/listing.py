"""What a finished dataset folder holds, read back: one ``(image, row)`` per image.

The dataset card (:mod:`~runflow_async._dataset.card`) and the preview
(:mod:`~runflow_async._dataset.preview`) read a folder only through
:func:`entries`, so a new layout (shards whose images are bytes inside a tar or
a Parquet file) is one more branch here. Today's layout is ``imagefolder``:
``metadata.jsonl`` rows whose ``file_name`` is the image's path relative to the
folder (a flat folder, or numbered subfolders).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from runflow_async._dataset.manifest import MANIFEST

__all__ = ["Entry", "NotADatasetError", "entries", "layout"]


class NotADatasetError(ValueError):
    """The folder is missing, or holds no dataset this package wrote."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One image of the dataset and its metadata row.

    Attributes:
        row: The image's metadata (``prompt``, ``seed``, ``run_id``, ``cost_usd``...).
        path: The image file, when it is a file of its own (``imagefolder``).
        data: The image's bytes, when it lives inside a shard (``path`` is then ``None``).
    """

    row: dict[str, Any]
    path: Path | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        """The image's bytes."""
        if self.data is not None:
            return self.data
        assert self.path is not None  # noqa: S101 - an entry has one or the other
        return self.path.read_bytes()


def layout(out_dir: Path) -> str:
    """The folder's layout (``"imagefolder"``).

    Raises:
        NotADatasetError: ``out_dir`` is missing or is not a dataset folder.
    """
    if not out_dir.is_dir():
        raise NotADatasetError(f"{out_dir} is not a folder")
    if (out_dir / MANIFEST).is_file():
        return "imagefolder"
    raise NotADatasetError(f"{out_dir} is not a dataset folder (no {MANIFEST})")


def entries(out_dir: Path, *, limit: int | None = None) -> Iterator[Entry]:
    """The folder's images with their rows, in the manifest's order, at most ``limit``.

    Rows that are not JSON objects, or whose ``file_name`` leaves the folder,
    are skipped (the manifest is the user's file too).

    Raises:
        NotADatasetError: As :func:`layout`.
    """
    layout(out_dir)
    count = 0
    with (out_dir / MANIFEST).open(encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and count >= limit:
                return
            try:
                row = json.loads(line)
            except ValueError:
                continue
            name = row.get("file_name") if isinstance(row, dict) else None
            # No syscall a row: a name that could leave the folder is skipped by its text.
            if not isinstance(name, str) or _leaves(name):
                continue
            count += 1
            yield Entry(row=row, path=out_dir / name)


def _leaves(name: str) -> bool:
    """Whether the relative path ``name`` is absolute, empty or climbs out (``..``)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return not parts or parts[0] == "/" or ".." in parts or ":" in parts[0]
