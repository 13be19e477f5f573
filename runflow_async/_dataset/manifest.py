"""``metadata.jsonl`` as items finish: an image is never in the folder without its row.

Each finished item is published in this order (:func:`publish`):

1. its images are downloaded to hidden ``.NAME.rfa-ready`` files, which
   ``imagefolder`` never reads (hidden, and no image extension);
2. its rows are appended to ``metadata.jsonl`` in one ``write`` (a ``kill -9``
   loses no finished write; what a power cut loses, the next run restores
   from the journal, so no ``fsync`` widens the window below);
3. each ``.NAME.rfa-ready`` is renamed to ``NAME``;
4. the journal records the item succeeded, with its rows.

So at every instant (a ``kill -9`` included) every image in the folder has
its row, and ``datasets.load_dataset("imagefolder", data_dir=DIR)`` sees every
image with its prompt. A row whose image is not renamed yet (between 2 and 3:
one ``rename`` per image, microseconds) has its complete ``.NAME.rfa-ready``
beside it.

:func:`reconcile` runs under the folder lock when a run starts and when it
ends. Rows that reached the manifest but not the journal (a kill between 2
and 4) are rolled forward when every image they name is on disk with the
sha256 the row records: the renames are finished and the journal told. (An
item the journal still holds as "submitting", its run id lost with the group
commit's buffer, is rolled forward alike, with the run its rows name.)
Anything else not recorded as succeeded is rolled back, images first (so
the invariant holds meanwhile): the item's images and ready files are
removed, and the manifest is rewritten from the journal, one row per image
of every succeeded item, in input order. A resumed run then downloads those
items again from their runs (by id: never created twice), and no row is ever
duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Container, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from runflow_async._dataset.journal import ItemState, Journal, JournalItem
from runflow_async._http.download import IMAGE_SUFFIXES as SUFFIX_OF_TYPE
from runflow_async._http.download import TEMP_SUFFIX, DownloadedFile

__all__ = [
    "IMAGE_SUFFIXES",
    "MANIFEST",
    "READY_SUFFIX",
    "Appender",
    "append_whole",
    "named_by_type",
    "publish",
    "ready_path",
    "reconcile",
]

MANIFEST = "metadata.jsonl"
READY_SUFFIX = ".rfa-ready"
"""Ends the name of a downloaded image waiting for its row (``.NAME.rfa-ready``)."""
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".webp", ".gif"})
"""The suffixes of the images the pipeline names."""
_MAY_ROLL_FORWARD = (ItemState.CREATED, ItemState.SUBMITTING)


def ready_path(out_dir: Path, name: str) -> Path:
    """Where the image ``name`` is downloaded to before it is published."""
    path = out_dir / name  # in its shard's subfolder, if it has one
    return path.with_name(f".{path.name}{READY_SUFFIX}")


def named_by_type(guess: str, saved: DownloadedFile) -> str:
    """The image's name: ``guess`` with the suffix of the type ``saved`` really is (no I/O)."""
    suffix = SUFFIX_OF_TYPE.get(saved.content_type or "", Path(guess).suffix)
    return Path(guess).with_suffix(suffix).name


class Appender:
    """``metadata.jsonl`` held open (``O_APPEND``) for a run's appends: one ``open`` a run.

    Each :meth:`append` is still whole (one ``write`` loop, unbuffered: a kill
    loses no finished write). Open it after the run's first :func:`reconcile`
    and close it before the last (they replace the file).
    """

    def __init__(self, out_dir: Path) -> None:
        self._fd = os.open(out_dir / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def append(self, data: bytes) -> None:
        """Append ``data`` whole."""
        _write_all(self._fd, data)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


def publish(
    out_dir: Path,
    rows: Sequence[dict[str, Any]],
    downloaded: Sequence[Path] = (),
    manifest: Appender | None = None,
) -> list[str]:
    """Append ``rows`` to the manifest (one write), then rename their images in place.

    ``downloaded``: where each row's image was saved, if not at its
    :func:`ready_path` (a first guess at its name); it is renamed there first,
    so the row never names a ready file that is not there. ``manifest``: the
    run's open manifest (else it is opened for this append). Returns the rows as
    written (one JSON text each), for the journal.

    Blocking, briefly (an append and a rename per image, in the folder that
    holds the journal, whose commits block as long): the pipeline calls it on
    the event loop.
    """
    for row, saved in zip(rows, downloaded, strict=False):
        ready = ready_path(out_dir, row["file_name"])
        if saved != ready:
            os.replace(saved, ready)
    lines = [json.dumps(row, sort_keys=True) for row in rows]
    data = "".join(f"{line}\n" for line in lines).encode()
    if manifest is None:
        append_whole(out_dir / MANIFEST, data)
    else:
        manifest.append(data)
    for row in rows:
        os.replace(ready_path(out_dir, row["file_name"]), out_dir / row["file_name"])
    return lines


def reconcile(out_dir: Path, journal: Journal) -> int:
    """Make the folder match the journal (see the module doc); return the manifest's rows.

    Streamed, in memory that does not grow with the folder: only rows of items
    still "created" or "submitting" (the only ones that may roll forward: the
    journal's group commit may have lost the run id too) are read into memory,
    and the manifest is rewritten row by row from the journal.
    """
    created = {e.key for e in journal.iter_items(states=_MAY_ROLL_FORWARD)}
    if created:  # nothing else can roll forward: no need to read the manifest
        rows, whole = _read_rows(out_dir / MANIFEST, created)
        if whole:  # a torn last line: roll nothing forward, download those items again
            _roll_forward(out_dir, journal, rows)
    unfinished = {e.key for e in journal.iter_items(states=set(ItemState) - {ItemState.SUCCEEDED})}
    for folder in (out_dir, *(d for d in out_dir.iterdir() if d.name.isdigit() and d.is_dir())):
        prefix = "" if folder == out_dir else f"{folder.name}/"
        with os.scandir(folder) as found:
            for file in found:
                owner = _owner(prefix + file.name)
                if owner in unfinished and file.is_file(follow_symlinks=False):
                    os.unlink(file.path)  # before its row goes: never an image without a row
    kept = (
        line for entry in journal.iter_items(states=(ItemState.SUCCEEDED,)) for line in entry.files
    )
    count = _write_lines(out_dir / MANIFEST, kept)
    for ready in (*out_dir.glob(f".*{READY_SUFFIX}"), *out_dir.glob(f"[0-9]*/.*{READY_SUFFIX}")):
        ready.unlink(missing_ok=True)
    return count


def _write_lines(dest: Path, lines: Iterable[str]) -> int:
    """Write ``lines`` to a temporary file beside ``dest``, then rename it over ``dest``.

    The file gets the mode a plain ``open()`` would (``0o666`` less the umask).
    A temporary file a kill leaves is removed by the next run (``folder_lock``).
    """
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(f"{line}\n")
                count += 1
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def _read_rows(path: Path, keys: Container[str]) -> tuple[list[dict[str, Any]], bool]:
    """The manifest's rows of items in ``keys``, and whether every line of it was whole."""
    rows: list[dict[str, Any]] = []
    whole = True
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:  # line by line: the file is never held whole
                whole = whole and line.endswith("\n")
                try:
                    row = json.loads(line)
                except ValueError:
                    whole = False
                    continue
                if isinstance(row, dict) and str(row.get("key")) in keys:
                    rows.append(row)
    except FileNotFoundError:
        return [], True
    except (OSError, UnicodeDecodeError):
        return [], False
    return rows, whole


def _roll_forward(out_dir: Path, journal: Journal, rows: Iterable[dict[str, Any]]) -> None:
    by_key: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault(str(row.get("key")), []).append(row)
    for key, item_rows in by_key.items():
        entry = journal.get(key)
        if entry is None or not _publishable(out_dir, entry, item_rows):
            continue
        for row in item_rows:
            ready = ready_path(out_dir, row["file_name"])
            if ready.exists():
                os.replace(ready, out_dir / row["file_name"])
        files = [json.dumps(row, sort_keys=True) for row in item_rows]
        if entry.state is ItemState.SUBMITTING:  # its run id was lost too: the rows name it
            journal.mark_created(key, str(item_rows[0]["run_id"]))
        journal.mark_succeeded(
            key,
            cost_usd=_total(row.get("cost_usd") for row in item_rows),
            files=files,
            reserved_usd=_total(row.get("cost_estimated_usd") for row in item_rows),
        )


def _total(amounts: Iterable[object]) -> Decimal | None:
    """The sum of the rows' amounts, or ``None`` unless every row has one."""
    values = list(amounts)
    if not all(isinstance(value, str) for value in values):
        return None
    return sum((Decimal(str(value)) for value in values), Decimal(0))


def _publishable(out_dir: Path, entry: JournalItem, rows: Sequence[dict[str, Any]]) -> bool:
    """Whether ``rows`` are the whole publication of ``entry``'s run, every image on disk.

    A "submitting" item (its run id lost with a buffered mark) takes the run
    its rows name, if they all name one.
    """
    if entry.state is ItemState.CREATED and entry.run_id is not None:
        run_id: object = entry.run_id
    elif entry.state is ItemState.SUBMITTING and entry.client_ref is not None:
        run_id = rows[0].get("run_id")
    else:
        return False
    names = [row.get("file_name") for row in rows]
    if len(set(names)) != len(names) or not isinstance(run_id, str) or not run_id:
        return False
    for row, name in zip(rows, names, strict=True):
        if row.get("run_id") != run_id or not isinstance(name, str):
            return False
        if _owner(name) != entry.key:
            return False
        path = out_dir / name
        if path.exists() and not path.is_file():  # a folder in its way: not publishable
            return False
        if not path.exists():
            path = ready_path(out_dir, name)
        if not path.is_file() or _sha256(path) != row.get("sha256"):
            return False
    return True


def _owner(name: str) -> str | None:
    """The item key an image name of ours derives from (``KEY-N.EXT``), else ``None``."""
    sub, slash, base = name.rpartition("/")  # a shard's subfolder (``00000/``), or none
    stem, dot, suffix = base.rpartition(".")
    if not dot or f".{suffix}" not in IMAGE_SUFFIXES or (slash and not sub.isdigit()):
        return None
    key, dash, number = stem.rpartition("-")
    return key if dash and number.isdigit() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def append_whole(path: Path, data: bytes) -> None:
    """Append ``data`` with one ``O_APPEND`` file (created ``0o666`` less the umask).

    The whole of ``data`` is written before the file is closed, so a reader
    sees each appended block of lines whole or (after a kill) cut at its end.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
