"""A run's writer: where items' images are published, and their shards finalised.

:meth:`Placement.start` reconciles the folder with the journal when a run starts
(the published images, then packed shards a kill left unfinished, rebuilt);
:meth:`Placement.done` places a succeeded item's rows in a shard and finalises
the packed shards it completes; :meth:`Placement.write_outputs` finalises the
last shard and reconciles again when the run ends, however it ends.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runflow_async._dataset.card import CardSource
from runflow_async._dataset.failures import FailureList
from runflow_async._dataset.input import DatasetItem
from runflow_async._dataset.journal import Journal
from runflow_async._dataset.manifest import MANIFEST, reconcile
from runflow_async._dataset.outputs import write_card_quietly
from runflow_async._dataset.packed import finalise, reconcile_packed, require_writer
from runflow_async._dataset.shards import DatasetFormat, Shards, adopt_unplaced, resolve_layout
from runflow_async._http.download import TEMP_SUFFIX

__all__ = ["Placement"]


class Placement:
    """The folder's layout for one run (see the module doc)."""

    def __init__(self, out_dir: Path, journal: Journal, shards: Shards) -> None:
        self.out_dir = out_dir
        self.journal = journal
        self.shards = shards
        self.layout = shards.layout
        self.images_dir = self.layout.images_dir(out_dir)

    @classmethod
    def start(
        cls,
        out_dir: Path,
        journal: Journal,
        fmt: DatasetFormat | None = None,
        shard_size: int | None = None,
    ) -> Placement:
        """Resolve the folder's layout and reconcile it with the journal.

        Raises:
            ConfigurationError: The folder has another format or shard size, or
                its format cannot be written here.
        """
        layout = resolve_layout(journal, fmt, shard_size)
        require_writer(layout.format)
        images_dir = layout.images_dir(out_dir)
        images_dir.mkdir(parents=True, exist_ok=True)
        reconcile(images_dir, journal)  # what a killed run left: rolled forward or back
        if layout.packed:
            reconcile_packed(out_dir, journal, layout)
        placement = cls(out_dir, journal, Shards(images_dir, journal, layout))
        placement._finalise(adopt_unplaced(journal, placement.shards))
        return placement

    def place(self, rows: Sequence[dict[str, Any]]) -> int | None:
        """The shard of a succeeding item's ``rows`` (before they are published)."""
        return self.shards.place(rows)

    def done(self) -> None:
        """After an item's success is recorded: finalise the packed shards now complete."""
        self._finalise(self.shards.complete())

    def write_outputs(self, items: Sequence[DatasetItem], card: CardSource | None = None) -> int:
        """Finalise the last shard, reconcile, rewrite failures and the card; the images' count."""
        self._finalise(self.shards.complete(ending=True))
        images = reconcile(self.images_dir, self.journal)
        if self.layout.packed:  # the manifest beside the shards: one row per packed image
            tmp = self.out_dir / f".{MANIFEST}{TEMP_SUFFIX}"
            shutil.copyfile(self.images_dir / MANIFEST, tmp)
            tmp.replace(self.out_dir / MANIFEST)
        FailureList(self.out_dir, items).rewrite(self.journal)
        if card is not None:
            write_card_quietly(self.out_dir, self.journal, items, card)
        return images

    def _finalise(self, shards: Sequence[int]) -> None:
        for shard in shards:
            finalise(self.out_dir, self.journal, self.layout, shard)
