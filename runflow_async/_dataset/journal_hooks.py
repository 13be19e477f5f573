"""The pipeline's write-ahead hooks into the journal, and the names it gives items' runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from runflow_async._batch.hooks import NoHooks
from runflow_async._core.models import Run
from runflow_async._dataset.input import DatasetItem
from runflow_async._dataset.journal import Journal

__all__ = ["FIRST_CREATE_META", "JournalHooks", "client_ref_of"]

FIRST_CREATE_META = "first_create_at"
"""Journal meta: when the folder's first create was sent (UTC ISO 8601; for the card)."""


class JournalHooks(NoHooks):
    """Write-ahead: each client_ref committed before its create; each run id recorded at once.

    The run id waits (in the journal's group commit) for the next write-ahead commit.
    """

    def __init__(self, journal: Journal, items: Sequence[DatasetItem]) -> None:
        self._journal = journal
        self._items = items
        self._first = journal.get_meta(FIRST_CREATE_META) is None

    def on_submitting(self, index: int, client_ref: str, /) -> None:
        self._journal.mark_submitting(self._items[index].key, client_ref)
        if self._first:  # once a folder: the start of the card's time span
            self._first = False
            self._journal.set_meta(
                FIRST_CREATE_META, datetime.now(UTC).isoformat(timespec="seconds")
            )

    def on_created(self, index: int, run: Run, /) -> None:
        # Told again with its own run if the first proved another item's.
        self._journal.own_run(self._items[index].key, run.id, run.batch_id)


def client_ref_of(dataset_id: str, key: str, retries: int) -> str:
    """An item's ``client_ref``: ``rfa-<dataset>-<key>``, ``-r<N>`` after ``N`` retries."""
    ref = f"rfa-{dataset_id}-{key}"
    return f"{ref}-r{retries}" if retries else ref
