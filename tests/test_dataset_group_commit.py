"""Group commit (issue 12): later marks wait for the next write-ahead commit; kills lose only them.

* Inside :meth:`Journal.grouped` the write-ahead mark is committed at once
  (with everything buffered); created, succeeded, failed marks wait, visible to
  the journal's own connection, not to another process, until then, until 64
  wait, until the timer finds the oldest ``GROUP_SECONDS`` old, or the block
  ends. A transaction SQLite rolled back is an error, never silently lost.
* Each window a ``kill -9`` may now hit is recovered exactly once: the state a
  kill leaves is the journal's *committed* state (copied through a second
  connection, as another process sees it) and the folder at that instant.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from runflow_async._dataset import journal_commit
from runflow_async._dataset.input import Defaults, read_generate_file
from runflow_async._dataset.journal import (
    GROUP_ENTRIES,
    ItemState,
    Journal,
    JournalError,
    JournalStateError,
)
from runflow_async._dataset.manifest import MANIFEST, reconcile
from runflow_async._dataset.pipeline import run_dataset
from runflow_async._dataset.progress import DatasetProgress
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY, make_client
from tests.test_dataset_cli import manifest, prompts_file
from tests.test_dataset_consistency import check_folder, images_on_disk, published


def committed(journal: Journal, key: str) -> ItemState:
    """The item's state as another process sees it (committed only)."""
    with sqlite3.connect(journal.path) as other:
        (state,) = other.execute("SELECT state FROM items WHERE key = ?", (key,)).fetchone()
    other.close()
    return ItemState(state)


def _journal(tmp_path: Path, n: int) -> Journal:
    journal = Journal.open(tmp_path)
    journal.add_items((f"k{i}", i, "generate", Decimal(1)) for i in range(n))
    return journal


def test_later_marks_wait_for_the_next_write_ahead_commit(tmp_path: Path) -> None:
    with _journal(tmp_path, 3) as journal:
        with journal.grouped():
            journal.mark_submitting("k0", "ref-0")
            assert committed(journal, "k0") is ItemState.SUBMITTING  # before its create
            journal.mark_created("k0", "run-0")
            journal.mark_succeeded("k0", cost_usd=Decimal(1), files=[])
            assert journal.get("k0").state is ItemState.SUCCEEDED  # type: ignore[union-attr]
            assert committed(journal, "k0") is ItemState.SUBMITTING  # buffered
            journal.mark_failed("k1", error_type="X", error="x")
            journal.mark_submitting("k2", "ref-2")  # commits every buffered mark with it
            assert committed(journal, "k0") is ItemState.SUCCEEDED
            assert committed(journal, "k1") is ItemState.FAILED
            journal.mark_created("k2", "run-2")
            assert committed(journal, "k2") is ItemState.SUBMITTING
        assert committed(journal, "k2") is ItemState.CREATED  # the block's end commits
        journal.mark_succeeded("k2", cost_usd=None, files=[])  # outside: at once, as before
        assert committed(journal, "k2") is ItemState.SUCCEEDED


def test_a_full_buffer_or_an_old_one_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _journal(tmp_path, GROUP_ENTRIES + 1) as journal, journal.grouped():
        for i in range(GROUP_ENTRIES):
            journal.mark_not_submitted(f"k{i}", reason="budget")
        assert committed(journal, f"k{GROUP_ENTRIES - 1}") is ItemState.NOT_SUBMITTED
        last = f"k{GROUP_ENTRIES}"
        journal.mark_not_submitted(last, reason="budget")
        journal.commit_due()  # far younger than GROUP_SECONDS: still waits
        assert committed(journal, last) is ItemState.PENDING
        monkeypatch.setattr(journal_commit, "GROUP_SECONDS", 0.0)
        journal.commit_due()
        assert committed(journal, last) is ItemState.NOT_SUBMITTED
        journal.commit_due()  # nothing buffered: nothing to do


def test_marks_sqlite_rolled_back_are_an_error_not_a_silent_loss(tmp_path: Path) -> None:
    with _journal(tmp_path, 2) as journal:
        with sqlite3.connect(journal.path) as other:  # a write that makes SQLite roll back
            other.execute(
                "CREATE TRIGGER refuse BEFORE UPDATE ON items WHEN NEW.error = 'boom'"
                " BEGIN SELECT RAISE(ROLLBACK, 'refused'); END"
            )
        other.close()
        with journal.grouped():
            journal.mark_failed("k0", error_type="X", error="fine")
            journal.mark_failed("k1", error_type="X", error="boom")  # waits, in Python
            with pytest.raises(JournalError, match="2 change"):
                journal.commit()  # one statement: both rolled back
        assert committed(journal, "k0") is ItemState.PENDING  # lost, and said so


def test_a_submitting_item_whose_rows_are_whole_is_rolled_forward_with_their_run(
    tmp_path: Path,
) -> None:
    # A kill after the rows were written, with both later marks still buffered.
    with _journal(tmp_path, 2) as journal:
        journal.mark_submitting("k0", "ref-0")
        rows = published(tmp_path, journal, "k0", 2)
        journal.mark_submitting("k1", "ref-1")
        other = {**published(tmp_path, journal, "k1", 1)[0], "run_id": ""}
        (tmp_path / MANIFEST).write_text(
            "".join(f"{line}\n" for line in [*map(_dumps, rows), _dumps(other)])
        )
        assert reconcile(tmp_path, journal) == 2
        item = journal.get("k0")
        assert item is not None
        assert (item.state, item.run_id) == (ItemState.SUCCEEDED, "run-k0")
        assert journal.get("k1").state is ItemState.SUBMITTING  # type: ignore[union-attr]
    assert images_on_disk(tmp_path) == {"k0-0.png", "k0-1.png"}  # k1's row named no run
    assert [row["file_name"] for row in manifest(tmp_path)] == ["k0-0.png", "k0-1.png"]


def _dumps(row: dict[str, object]) -> str:
    return json.dumps(row, sort_keys=True)


def _snapshot(out: Path, dest: Path) -> None:
    """What a ``kill -9`` leaves now: the committed journal and the folder's files."""
    (dest / ".runflow").mkdir(parents=True)
    for path in out.iterdir():
        if path.is_file():
            shutil.copy2(path, dest / path.name)
        elif path.name != ".runflow":  # a shard's subfolder, hidden ready files and all
            shutil.copytree(path, dest / path.name)
    with sqlite3.connect(out / ".runflow" / "journal.sqlite3") as src:
        with sqlite3.connect(dest / ".runflow" / "journal.sqlite3") as copy:
            src.backup(copy)
        copy.close()
    src.close()


@pytest.mark.parametrize("window", ["created", "succeeded"])
async def test_each_kill_window_of_the_buffer_is_recovered_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: str
) -> None:
    # The timer never fires here: only the next write-ahead mark or the end commits.
    monkeypatch.setattr(journal_commit, "GROUP_SECONDS", 1e9)
    items = read_generate_file(prompts_file(tmp_path, 1), Defaults(image_size=(64, 64)))
    out, killed = tmp_path / "out", tmp_path / "killed"
    calls: list[int] = []

    def kill_now(progress: DatasetProgress) -> None:
        # "created": the run is finished and its outcome taken, nothing saved yet;
        # "succeeded": its row and image are in the folder, the mark buffered.
        # (The first call is the line shown before anything started: skipped.)
        calls.append(progress.done)
        if len(calls) > 1 and not killed.exists() and (progress.done == 1 or window == "created"):
            _snapshot(out, killed)
            scope.cancel()

    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001, seed=5) as emu,
        make_client(emu.url) as client,
    ):
        with anyio.CancelScope() as scope:
            await run_dataset(client, out, items, concurrency=1, on_progress=kill_now)
        with sqlite3.connect(killed / ".runflow" / "journal.sqlite3") as db:
            (state,) = db.execute("SELECT state FROM items").fetchone()
        db.close()
        assert state == "submitting"  # both later marks were lost with the process
        rows_at_kill = manifest(killed) if (killed / MANIFEST).exists() else []
        assert len(rows_at_kill) == (1 if window == "succeeded" else 0)
        summary = await run_dataset(client, killed, items, concurrency=1)
        counters = emu.counters
    assert summary.succeeded == 1
    assert counters.runs_created == 1  # found by client_ref or its rows: never created again
    rows, renaming = check_folder(killed)
    assert (len(rows), renaming) == (1, set())
    if window == "succeeded":
        assert rows == rows_at_kill  # rolled forward: the same image, not fetched again
    image = killed / rows[0]["file_name"]
    assert hashlib.sha256(image.read_bytes()).hexdigest() == rows[0]["sha256"]
    with Journal.open(killed) as journal:
        entry = journal.get(items[0].key)
    assert entry is not None
    assert (entry.state, entry.run_id) == (ItemState.SUCCEEDED, rows[0]["run_id"])


def test_waiting_marks_are_checked_at_the_call_and_merged_into_reads(tmp_path: Path) -> None:
    with _journal(tmp_path, 3) as journal, journal.grouped():
        journal.mark_submitting("k0", "ref-0")
        journal.mark_created("k0", "run-0")
        journal.mark_succeeded("k0", cost_usd=None, files=["row"], reserved_usd=Decimal(2))
        with pytest.raises(JournalStateError, match="is succeeded; it cannot become created"):
            journal.mark_created("k0", "run-1")  # refused now, not when written
        journal.mark_not_submitted("k1", reason="budget")
        journal.mark_submitting("k1", "ref-1")  # merged with its waiting mark, then written
        journal.mark_failed("k2", error_type="X", error="x")
        item = journal.get_many(["k0", "k2"])["k0"]
        assert (item.state, item.run_id, item.files) == (ItemState.SUCCEEDED, "run-0", ("row",))
        assert (item.cost_usd, item.reserved_usd, item.attempts) == (None, Decimal(2), 1)
        assert committed(journal, "k0") is ItemState.SUCCEEDED
        assert journal.get("k1").attempts == 1  # type: ignore[union-attr]
        assert committed(journal, "k2") is ItemState.PENDING  # waits
        assert journal.get("k2").state is ItemState.FAILED  # type: ignore[union-attr]
        assert [i.state for i in journal.items()] == [  # a scan writes them first
            ItemState.SUCCEEDED,
            ItemState.SUBMITTING,
            ItemState.FAILED,
        ]
        assert committed(journal, "k2") is ItemState.FAILED


def test_an_item_changed_under_the_journal_is_an_error(tmp_path: Path) -> None:
    with _journal(tmp_path, 2) as journal, journal.grouped():
        journal.mark_submitting("k0", "ref-0")
        journal.mark_created("k0", "run-0")  # checked against "submitting", as it knew
        with sqlite3.connect(journal.path) as other:
            other.execute("UPDATE items SET state = 'failed' WHERE key = 'k0'")
        other.close()
        with pytest.raises(JournalError, match="changed under the journal"):
            journal.commit()
        with sqlite3.connect(journal.path) as other:
            other.execute("UPDATE items SET state = 'failed' WHERE key = 'k1'")
        other.close()
        with pytest.raises(JournalStateError, match="'k1' is failed; it cannot become submitting"):
            journal.mark_submitting("k1", "ref-1")  # unknown to it: its statement checks
        with pytest.raises(JournalStateError, match="run run-x cannot be replaced"):
            journal.move_run("k1", "run-x", "run-y")
