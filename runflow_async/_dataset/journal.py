"""The dataset journal: one SQLite file in the output folder, the source of truth for resuming.

The pipeline writes *before* each create (``mark_submitting``: the item's
``client_ref``), as soon as the create returns (``mark_created``: the run id)
and when the item ends. So after any crash, even ``kill -9``, a re-run knows
which runs exist (collect them), which creates may exist (look them up by
``client_ref``) and which were never sent (submit them).

Each method is one short write on one connection, except inside
:meth:`Journal.grouped` (the pipeline's hot path: group commit). There the
write-ahead mark stays committed *before* its create is sent (``mark_submitting``
commits at once, and with it everything waiting: the never-billed-twice
guard), but the later marks (``mark_created``/``own_run``, ``mark_succeeded``,
``mark_failed``, ``mark_not_submitted``) wait in Python: merged per item,
checked at the call against the state the journal knows the item has (an
invalid transition is refused then, not when written), and written in ONE
autocommitted statement (:mod:`~runflow_async._dataset.journal_commit`) with
the next write-ahead mark, when ``GROUP_ENTRIES`` items wait, when the oldest
has waited ``GROUP_SECONDS`` (real time: :meth:`Journal.commit_due`, called on
a timer), and always when the block ends (a clean exit, an error, a
cancellation or Ctrl-C), before the summary. ``move_run``, ``note_error``,
``record_cost`` (off the hot path) write at once, after whatever waits. Reads
of an item (``get``, ``get_many``) merge its waiting marks; scans
(``iter_items``, ``summary``) write them first; other processes (``status``)
see them within ``GROUP_SECONDS``. What a ``kill -9`` can then lose, and how
the next run recovers it:

* the run id of a create (the item stays "submitting"): looked up by
  ``client_ref`` over the visibility window, never sent again blindly;
* a success (the item stays "submitting" or "created", its manifest rows and
  images possibly already in the folder): the manifest's reconcile rolls it
  forward when its rows are whole and every image is on disk with their
  SHA-256 (the run id taken from the rows when the journal lost it too), so
  the folder holds each item exactly once; otherwise the rows and images are
  rolled back and the run is read again by id (or found by ``client_ref``)
  and its images fetched again;
* a failure, a "not submitted", a late cost: the item is still "submitting"
  or "created" and its run is read (or looked up) again.

Nothing is billed twice: no create is sent without its committed write-ahead
mark. WAL with ``synchronous=NORMAL`` loses nothing committed when the
*process* dies (a power cut may lose the last commits, which a re-run
reconciles by ``client_ref``). Money is
stored as decimal text, so sums are exact. Use a journal from one thread. The
file (and SQLite's ``-wal``/``-shm`` beside it) is private, ``0600``, whatever
the umask: it names every run of the folder.

Transitions (any other is refused with :class:`JournalStateError`)::

    mark_submitting      pending, submitting, not_submitted          -> submitting
    mark_created         pending, submitting, not_submitted          -> created
    mark_succeeded       pending, submitting, created, not_submitted -> succeeded
    mark_failed          pending, submitting, created, not_submitted -> failed
    mark_not_submitted   pending, submitting, not_submitted          -> not_submitted
    reset_for_retry      failed, not_submitted                       -> pending
    move_run, own_run    created (with the run it replaces)          -> created

A run may turn up for an item the journal holds as not (or no longer)
submitted: a create whose answer was lost, then refused on the resend (402,
or a 429 given up when the batch stopped), is recorded "not submitted" though
the server made it; a later lookup by ``client_ref`` finds it. Such a run is
adopted (``mark_created`` and the outcomes accept those states), never refused.
What stays refused loses a run: a created item becoming not submitted or
submitting, a second run for one item, a finished item changing.

``note_error`` changes no state: it records why a submitting or created item
is not finished yet (its run is still collected by the next run).

Money: a succeeded run whose cost the server did not report (or not yet) is
not $0. It keeps ``reserved_usd``, the estimate at the billing factor it was
reserved at, and counts that against budgets (:attr:`JournalItem.spent_usd`)
until :meth:`Journal.record_cost` learns the real cost; summaries show it as
estimated. (A run recorded so by an older journal, without ``reserved_usd``,
counts at its estimate.) A failed run is not billed: an unknown cost is $0.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from runflow_async._dataset.journal_commit import GROUP_ENTRIES, GROUP_SECONDS, Pending, run_sets
from runflow_async._dataset.journal_file import SCHEMA_VERSION, JournalError, connect
from runflow_async._dataset.journal_item import ItemState, JournalItem, summarize_items
from runflow_async._dataset.journal_read import JournalReads, JournalStateError

__all__ = [
    "GROUP_ENTRIES",
    "GROUP_SECONDS",
    "JOURNAL_PATH",
    "SCHEMA_VERSION",
    "ItemState",
    "Journal",
    "JournalError",
    "JournalItem",
    "JournalStateError",
]

JOURNAL_PATH = Path(".runflow", "journal.sqlite3")


_P, _S, _C, _OK, _F, _N = ItemState
# Which states each mark_* moves from; anything else is a pipeline bug, refused.
_FROM: dict[ItemState, tuple[ItemState, ...]] = {
    _S: (_P, _S, _N),  # _S again: a retried create, or one resumed after a crash
    _C: (_P, _S, _N),  # from _P/_N: a run found later by client_ref is adopted
    _OK: (_P, _S, _C, _N),  # from _S: a create that answered with a finished run
    _F: (_P, _S, _C, _N),  # from _P/_N: e.g. an upload failed before any create
    _N: (_P, _S, _N),
    _P: (_F, _N),  # reset_for_retry
}


class Journal(JournalReads):
    """The journal of one output folder (``DIR/.runflow/journal.sqlite3``).

    Open with :meth:`open`; close with :meth:`close` or a ``with`` block.

    Attributes:
        path: The SQLite file.
    """

    @classmethod
    def open(cls, out_dir: Path) -> Journal:
        """Open (creating if need be) the journal of ``out_dir``.

        Raises:
            JournalError: The file is not a journal, or a newer version wrote it.
        """
        path = out_dir / JOURNAL_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(connect(path), path)

    def close(self) -> None:
        """Close the journal (idempotent); buffered marks are committed first."""
        with contextlib.suppress(sqlite3.ProgrammingError):  # closed already
            self.commit()
        self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add_items(self, items: Iterable[tuple[str, int, str, Decimal]]) -> int:
        """Record new ``(key, ordinal, kind, estimate_usd)`` items as pending (known keys: no-op).

        Returns:
            How many items were new.
        """
        now = _now()
        # A generator, not a list: 100,000 rows are not held at once.
        rows = ((k, o, kind, _money(e), _P.value, now) for k, o, kind, e in items)
        before = self._conn.total_changes
        self.commit()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT OR IGNORE INTO items (key, ordinal, kind, estimate_usd, state, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        return self._conn.total_changes - before

    def mark_submitting(self, key: str, client_ref: str) -> None:
        """Record, *before* sending it, that a create is starting (write-ahead).

        ``client_ref`` is stored only the first time: every later attempt of the
        same item keeps the first one, so a lost create can always be found.
        """
        self._move(
            key,
            _S,
            {"error_type": None, "error": None},
            ref=client_ref,
            inc=1,
            now=True,  # committed (with every waiting mark) before the create is sent
        )

    def mark_created(self, key: str, run_id: str, batch_id: str | None = None) -> None:
        """Record the run a create returned, and its batch (the same run again: a no-op)."""
        if self._try_move(key, _C, run_sets(run_id, batch_id)):
            return  # no statement on the hot path: the item was not created yet
        item = self._get(key)
        if item.state is _C and item.run_id == run_id:
            return
        self._move(key, _C, {"run_id": run_id})  # refused: raises

    def own_run(self, key: str, run_id: str, batch_id: str | None = None) -> None:
        """Record ``run_id`` as the item's run: :meth:`mark_created`, or :meth:`move_run`.

        The engine names an item's run a second time only when the first proved
        another create's, so a created item with another run moves to this one.
        """
        if self._try_move(key, _C, run_sets(run_id, batch_id)):
            return  # no statement on the hot path: the item was not created yet
        item = self._get(key)
        if item.state is _C and item.run_id is not None and item.run_id != run_id:
            self.move_run(key, item.run_id, run_id)
        else:
            self.mark_created(key, run_id, batch_id)

    def move_run(self, key: str, wrong_run_id: str, run_id: str) -> None:
        """Record that a created item's run is ``run_id``, not the ``wrong_run_id`` it had.

        For a create answered with another create's run (a server that told two
        creates they made one run): the item's own run, found by its
        ``client_ref``, replaces it. Only that run may be replaced.
        """
        cursor = self._execute(
            "UPDATE items SET run_id = ?, updated_at = ? WHERE key = ? AND state = ?"
            " AND run_id = ?",
            (run_id, _now(), key, _C.value, wrong_run_id),
        )
        if cursor.rowcount == 0:
            item = self._get(key)
            raise JournalStateError(
                f"item {key!r} is {item.state} with run {item.run_id}; "
                f"run {wrong_run_id} cannot be replaced"
            )

    def mark_succeeded(
        self,
        key: str,
        *,
        cost_usd: Decimal | None,
        files: Sequence[str],
        reserved_usd: Decimal | None = None,
        shard: int | None = None,
    ) -> None:
        """Record that the item finished with ``files`` (what the pipeline keeps), in ``shard``.

        ``reserved_usd``: with ``cost_usd=None``, what the run was reserved at
        (it counts against budgets until :meth:`record_cost`).
        """
        reserved = None if cost_usd is not None else reserved_usd
        self._move(
            key,
            _OK,
            {
                "cost_usd": _money(cost_usd),
                "files": json.dumps(list(files)),
                "reserved_usd": _money(reserved),
                "error_type": None,
                "error": None,
                "shard": shard,
            },
        )

    def record_cost(self, key: str, *, cost_usd: Decimal, files: Sequence[str]) -> bool:
        """Record the cost, reported late, of a succeeded run whose cost was unknown.

        ``files`` replace the item's (rows that name the cost). Returns whether
        it changed anything (``False``: the cost was known, or not succeeded).
        """
        cursor = self._execute(
            "UPDATE items SET cost_usd = ?, files = ?, reserved_usd = NULL, updated_at = ?"
            " WHERE key = ? AND state = ? AND cost_usd IS NULL",
            (_money(cost_usd), json.dumps(list(files)), _now(), key, _OK.value),
        )
        return cursor.rowcount > 0

    def mark_failed(
        self, key: str, *, error_type: str, error: str, cost_usd: Decimal | None = None
    ) -> None:
        """Record that the item finished without images."""
        self._move(
            key, _F, {"error_type": error_type, "error": error, "cost_usd": _money(cost_usd)}
        )

    def note_error(self, key: str, *, error_type: str, error: str) -> bool:
        """Record why a submitting or created item did not finish; its state stays.

        ``mark_succeeded`` (and a new ``mark_submitting``) clears it.

        Returns:
            Whether the item was submitting or created (otherwise nothing changed).
        """
        cursor = self._execute(
            "UPDATE items SET error_type = ?, error = ?, updated_at = ?"
            " WHERE key = ? AND state IN (?, ?)",
            (error_type, error, _now(), key, _S.value, _C.value),
        )
        return cursor.rowcount > 0

    def mark_not_submitted(self, key: str, *, reason: str) -> None:
        """Record that no run was created for the item; a re-run submits it (client_ref kept)."""
        self._move(key, _N, {"error_type": None, "error": reason})

    def reset_for_retry(self, key: str) -> None:
        """Send a failed or not-submitted item back to pending.

        A failed *run* is forgotten (run id and ``client_ref`` cleared, its cost
        kept in ``prior_cost_usd``, ``retries`` counted up) so the retry creates
        a new run under a new ``client_ref``: the old one names the failed run,
        and a create sent with it would be answered with that run again. Without
        a run, the ``client_ref`` is kept (an earlier create may yet be found by it).
        """
        self.commit()
        self._known.pop(key, None)
        self._reset(key)

    def _reset(self, key: str) -> None:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            item = self._get(key)
            prior = item.prior_cost_usd + (item.cost_usd or 0)
            ref = item.client_ref if item.run_id is None else None
            cursor = self._conn.execute(
                "UPDATE items SET state = ?, updated_at = ?, client_ref = ?, run_id = NULL,"
                " batch_id = NULL, cost_usd = NULL, reserved_usd = NULL, prior_cost_usd = ?,"
                " error_type = NULL, error = NULL, files = '[]', retries = retries + ?"
                " WHERE key = ? AND state IN (?, ?)",
                (_P.value, _now(), ref, str(prior), int(item.run_id is not None), key, _F, _N),
            )
            if cursor.rowcount == 0:
                raise JournalStateError(f"item {key!r} is {item.state}; it cannot become {_P}")

    def summary(self) -> dict[str, Any]:
        """Count the items per state and add up the money.

        Returns:
            ``total``, ``counts`` (every state), ``spent_usd`` (what counts
            against a budget: costs of finished runs, of runs before a retry,
            and runs of unknown cost as reserved), ``unknown_cost_runs`` and
            ``unknown_cost_usd`` (those runs, and the estimated part of
            ``spent_usd``), and ``estimated_usd`` (the estimates of every item
            that may still be billed: pending, submitting, created and not
            submitted).
        """
        return summarize_items(self.iter_items())

    def set_meta(self, name: str, value: str) -> None:
        """Store a named value (e.g. the input file, the dataset id)."""
        self._execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def get_meta(self, name: str) -> str | None:
        """Return a value stored with :meth:`set_meta`, or ``None``."""
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _move(
        self,
        key: str,
        to: ItemState,
        sets: dict[str, object],
        *,
        ref: str | None = None,
        inc: int = 0,
        now: bool = False,
    ) -> None:
        if not self._try_move(key, to, sets, ref=ref, inc=inc, now=now):
            raise JournalStateError(f"item {key!r} is {self._state(key)}; it cannot become {to}")

    def _try_move(
        self,
        key: str,
        to: ItemState,
        sets: dict[str, object],
        *,
        ref: str | None = None,
        inc: int = 0,
        now: bool = False,
    ) -> bool:
        """Whether ``key`` is in a state that may become ``to``; if so the change waits.

        Checked in Python against the state the journal knows (read once if it
        knows none). A write-ahead mark (``now``) of an item it knows nothing of
        is checked by its statement instead, which names the allowed states.
        """
        sources = _FROM[to]
        known = self._pending[key].state if key in self._pending else self._known.get(key)
        if known is None and not now:
            known = self._get(key).state.value  # off the hot path: one SELECT
        if known is None:
            where = f",{','.join(sources)},"
        elif known in sources:
            where = f",{known},"
        else:
            return False
        self._stage(key, Pending(where, to.value, sets, ref, inc), now=now)
        return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _money(value: Decimal | None) -> str | None:
    if value is not None and not Decimal(value).is_finite():
        raise ValueError(f"not an amount of money: {value}")
    return None if value is None else str(value)
