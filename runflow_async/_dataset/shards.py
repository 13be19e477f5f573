"""Where a dataset's images go: numbered subfolders, or packed tar/Parquet shards.

The folder's format is chosen when it is made and kept in the journal (``meta``):
a folder made before shards existed (a journal with items, no format) keeps its
flat layout (``shard_size`` 0). Each succeeded item is placed in one shard (the
journal's ``shard`` column):

* ``imagefolder``: the shard is a subfolder (``00000/``) holding at most
  ``shard_size`` images; rows' ``file_name`` include it.
* ``webdataset`` / ``parquet`` (packed): images are published to a staging
  folder (``.runflow/staging``, with its own manifest, reconciled like a flat
  folder) and stay there until their shard file is final: written under a
  temporary name, fsynced, renamed, the folder fsynced
  (:mod:`runflow_async._dataset.packed`). A shard the journal names but whose
  file is missing (a kill before its rename) is rebuilt from the staged images
  when the next run starts; so no paid image is lost, and no item is in two
  shards (the journal names one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from runflow_async._core.errors import ConfigurationError
from runflow_async._dataset.journal import ItemState, Journal

__all__ = ["DEFAULT_SHARD_SIZE", "DatasetFormat", "Layout", "Shards", "resolve_layout"]

DEFAULT_SHARD_SIZE = 1000
STAGING = Path(".runflow", "staging")


class DatasetFormat(StrEnum):
    """How a dataset folder holds its images."""

    IMAGEFOLDER = "imagefolder"
    WEBDATASET = "webdataset"
    PARQUET = "parquet"


@dataclass(frozen=True, slots=True)
class Layout:
    """A folder's format and shard size (0: the flat layout of older folders)."""

    format: DatasetFormat
    shard_size: int

    @property
    def packed(self) -> bool:
        """Whether images are packed into shard files (kept in staging until then)."""
        return self.format is not DatasetFormat.IMAGEFOLDER

    def images_dir(self, out_dir: Path) -> Path:
        """Where images (and their manifest) are published as items finish."""
        return out_dir / STAGING if self.packed else out_dir


def resolve_layout(
    journal: Journal, fmt: DatasetFormat | None = None, shard_size: int | None = None
) -> Layout:
    """The folder's layout: as its journal records it, else as asked (and recorded).

    Raises:
        ConfigurationError: The folder was made with another format or shard size.
    """
    stored = journal.get_meta("format")
    if stored is None:
        legacy = next(journal.iter_items(), None) is not None  # made before shards: flat
        layout = Layout(
            DatasetFormat.IMAGEFOLDER if legacy else (fmt or DatasetFormat.IMAGEFOLDER),
            0 if legacy else (shard_size or DEFAULT_SHARD_SIZE),
        )
    else:
        layout = Layout(DatasetFormat(stored), int(journal.get_meta("shard_size") or 0))
    if fmt is not None and fmt is not layout.format:
        raise ConfigurationError(
            f"{journal.path.parent.parent} holds a {layout.format} dataset; "
            f"it cannot continue as {fmt} (use another --out)"
        )
    if shard_size is not None and shard_size != layout.shard_size:
        raise ConfigurationError(
            f"{journal.path.parent.parent} has shard size {layout.shard_size or 'flat'}; "
            f"it cannot continue with --shard-size {shard_size}"
        )
    journal.set_meta("format", layout.format.value)
    journal.set_meta("shard_size", str(layout.shard_size))
    return layout


class Shards:
    """Places each succeeded item in a shard; says which packed shards are complete."""

    def __init__(self, out_dir: Path, journal: Journal, layout: Layout) -> None:
        self.layout = layout
        self.out_dir = out_dir
        counts = journal.shard_images()
        self.current = max(counts, default=0)
        self.fill = counts.get(self.current, 0)
        if layout.packed and counts:  # every shard so far was finalised at the start
            self.current, self.fill = self.current + 1, 0
        self._open: set[int] = set()

    def place(self, rows: Sequence[dict[str, Any]]) -> int | None:
        """The shard for an item's ``rows`` (imagefolder: their ``file_name`` moves into it)."""
        size = self.layout.shard_size
        if size == 0:
            return None
        if self.fill and self.fill + len(rows) > size:
            self.current, self.fill = self.current + 1, 0
        self.fill += len(rows)
        if self.layout.packed:
            self._open.add(self.current)
        else:
            sub = subfolder(self.current)
            (self.out_dir / sub).mkdir(exist_ok=True)
            for row in rows:
                row["file_name"] = f"{sub}/{row['file_name']}"
        return self.current

    def complete(self, *, ending: bool = False) -> list[int]:
        """Packed shards to finalise now (``ending``: the run's last, even if not full)."""
        done = [
            k
            for k in sorted(self._open)
            if ending or k < self.current or self.fill >= self.layout.shard_size
        ]
        self._open.difference_update(done)
        if done and self.current in done:
            self.current, self.fill = self.current + 1, 0
        return done


def subfolder(shard: int) -> str:
    """The imagefolder subfolder of ``shard``."""
    return f"{shard:05d}"


def adopt_unplaced(journal: Journal, shards: Shards) -> list[int]:
    """Give a shard to succeeded items without one (rolled forward by ``reconcile``).

    Imagefolder rows name their subfolder already; packed items join the open
    shard. Returns the packed shards that became complete.
    """
    for entry in _unplaced(journal):
        rows = [{"file_name": line} for line in entry.files]  # only the count matters
        first = entry.files[0] if entry.files else ""
        sub = first.split('"file_name": "', 1)[-1].split("/", 1)[0]
        if shards.layout.packed:
            shard = shards.place(rows)
        elif sub.isdigit():
            shard = int(sub)
        else:
            continue
        if shard is not None:
            journal.set_shard(entry.key, shard)
    return shards.complete()


def _unplaced(journal: Journal) -> Iterator[Any]:
    if journal.get_meta("shard_size") == "0":
        return iter(())
    found = [e for e in journal.iter_items(states=(ItemState.SUCCEEDED,)) if e.shard is None]
    return iter(found)
