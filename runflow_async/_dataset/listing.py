"""What a finished dataset folder holds, read back: one ``(image, row)`` per image.

The dataset card (:mod:`~runflow_async._dataset.card`) and the preview
(:mod:`~runflow_async._dataset.preview`) read a folder only through
:func:`entries`, so a new layout (shards whose images are bytes inside a tar or
a Parquet file) is one more branch here. The layouts: ``imagefolder``,
``metadata.jsonl`` rows whose ``file_name`` is the image's path relative to the
folder (a flat folder, or numbered subfolders); ``parquet`` (``train-*.parquet``:
the rows and the image bytes in each shard) and ``webdataset`` (``shard-*.tar``:
``KEY.png`` beside ``KEY.json``, the row), read shard by shard in their order.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from runflow_async._dataset.journal import JOURNAL_PATH
from runflow_async._dataset.manifest import MANIFEST

__all__ = ["PACKED_FILES", "Entry", "NotADatasetError", "entries", "layout"]

PACKED_FILES = {"parquet": "train-*.parquet", "webdataset": "shard-*.tar"}
"""The shard files of each packed layout (:mod:`runflow_async._dataset.packed` names them)."""


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
    """The folder's layout: ``"imagefolder"``, or ``"parquet"``/``"webdataset"`` (shards).

    Raises:
        NotADatasetError: ``out_dir`` is missing or is not a dataset folder.
    """
    if not out_dir.is_dir():
        raise NotADatasetError(f"{out_dir} is not a folder")
    if (out_dir / MANIFEST).is_file():
        recorded = _recorded_format(out_dir)
        if recorded is not None:
            return recorded
        for kind, pattern in PACKED_FILES.items():  # a folder copied without its journal
            if next(out_dir.glob(pattern), None) is not None:
                return kind
        return "imagefolder"
    raise NotADatasetError(f"{out_dir} is not a dataset folder (no {MANIFEST})")


def entries(out_dir: Path, *, limit: int | None = None) -> Iterator[Entry]:
    """The folder's images with their rows, in the manifest's order, at most ``limit``.

    Rows that are not JSON objects, or whose ``file_name`` leaves the folder,
    are skipped (the manifest is the user's file too).

    Raises:
        NotADatasetError: As :func:`layout`.
    """
    kind = layout(out_dir)
    if kind != "imagefolder":
        shards = sorted(out_dir.glob(PACKED_FILES[kind]))
        read = _parquet if kind == "parquet" else _tar
        found = (entry for shard in shards for entry in read(shard))
        for count, entry in enumerate(found):
            if limit is not None and count >= limit:
                return
            yield entry
        return
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


def _parquet(shard: Path) -> Iterator[Entry]:
    """A Parquet shard's rows, a batch at a time, each with its image's bytes."""
    import pyarrow.parquet as pq  # the parquet extra: a folder of this layout was made with it

    with pq.ParquetFile(shard) as table:
        for batch in table.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                image = row.pop("image", None) or {}
                yield Entry(row=row, data=image.get("bytes") or b"")


def _tar(shard: Path) -> Iterator[Entry]:
    """A tar shard's samples: each ``KEY.json`` row with the image stored before it."""
    with tarfile.open(shard) as tar:
        images: dict[str, bytes] = {}
        for member in tar:
            stem, _, suffix = member.name.rpartition(".")
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is None:
                continue
            data = extracted.read()
            if suffix != "json":
                images[stem] = data
                continue
            with contextlib.suppress(ValueError):
                row = json.loads(data)
                if isinstance(row, dict) and stem in images:
                    yield Entry(row=row, data=images.pop(stem))


def _recorded_format(out_dir: Path) -> str | None:
    """The format the folder's journal recorded (read only), if it has one we know."""
    path = out_dir / JOURNAL_PATH
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:  # an older or damaged journal: judged by the files
        return None
    value = None if row is None else str(row[0])
    return value if value == "imagefolder" or value in PACKED_FILES else None
