"""What the dataset pipeline does per item: journal statements, queueing, one publish.

Counts, not timings: the SQLite statements an item costs (every connection's
trace callback), how many items wait in the engine's queue ahead of the free
slots, and what :func:`publish` leaves on disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tracemalloc
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from runflow_async._dataset.input import Defaults, read_generate_file
from runflow_async._dataset.journal import ItemState, Journal, JournalStateError
from runflow_async._dataset.manifest import MANIFEST, publish, ready_path, reconcile
from runflow_async._dataset.outputs import summarize
from runflow_async._dataset.pipeline import run_dataset
from runflow_async._dataset.progress import DatasetProgress
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY, make_client
from tests.test_dataset_cli import manifest, prompts_file

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class Statements:
    """Every SQL statement SQLite runs on connections opened while installed."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def writes(self) -> int:
        return sum(s.lstrip().upper().startswith(WRITES) for s in self.sql)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Statements:
    seen = Statements()
    connect = sqlite3.connect

    def counting(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.set_trace_callback(seen.sql.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", counting)
    return seen


def _journal(tmp_path: Path, *keys: str) -> Journal:
    journal = Journal.open(tmp_path)
    journal.add_items((key, n, "generate", Decimal("0.01")) for n, key in enumerate(keys))
    return journal


def test_recording_a_run_is_one_statement(tmp_path: Path, statements: Statements) -> None:
    with _journal(tmp_path, "a", "b") as journal:
        journal.mark_submitting("a", "ref-a")
        journal.mark_submitting("b", "ref-b")
        before = len(statements.sql)
        journal.own_run("a", "run-a")
        journal.mark_created("b", "run-b")
        recorded = statements.sql[before:]
        assert len(recorded) == 2  # no SELECT before the UPDATE: the state is known
        assert all(" UPDATE items SET state = v.state" in s for s in recorded)
        assert all("'created'" in s for s in recorded)
        # Off the hot path the rules hold as before: the same run again is a
        # no-op, another run is the engine's correction, a finished item refuses.
        journal.mark_created("a", "run-a")
        journal.own_run("b", "run-b2")
        assert journal.get("b").run_id == "run-b2"  # type: ignore[union-attr]
        journal.mark_succeeded("a", cost_usd=Decimal("0.01"), files=[])
        with pytest.raises(JournalStateError):
            journal.own_run("a", "run-a2")
        with pytest.raises(JournalStateError):
            journal.mark_created("a", "run-a2")
        with pytest.raises(JournalStateError):
            journal.mark_created("nope", "run-x")


def test_get_many_reads_hundreds_of_items_in_a_few_statements(
    tmp_path: Path, statements: Statements
) -> None:
    keys = [f"k{i:04d}" for i in range(1200)]
    with _journal(tmp_path, *keys) as journal:
        journal.mark_failed("k0007", error_type="RunFailedError", error="boom")
        before = len(statements.sql)
        found = journal.get_many([*keys, "absent"])
        assert len(statements.sql) - before == 3  # 500 keys a SELECT
        assert list(found) == keys  # absent keys left out
        assert found["k0007"] == journal.get("k0007")
        assert found["k0007"].state is ItemState.FAILED
        assert found["k0001"] == journal.get("k0001")


async def test_an_item_costs_at_most_three_statements(
    tmp_path: Path, statements: Statements
) -> None:
    n = 40
    items = read_generate_file(prompts_file(tmp_path, n), Defaults(image_size=(64, 64)))
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001, seed=3) as emu,
        make_client(emu.url) as client,
    ):
        summary = await run_dataset(client, tmp_path / "out", items, concurrency=8)
    assert summary.succeeded == n
    assert len(manifest(tmp_path / "out")) == n
    # Everything, reads included (was 6 an item: BEGIN, three UPDATEs, COMMIT, a read).
    assert len(statements.sql) <= 3 * n, len(statements.sql)
    # Write-ahead: each item's submitting mark is written (autocommitted, with
    # every mark waiting) in a statement of its own before its create; its
    # created and succeeded marks ride along with later ones.
    flushes = [s for s in statements.sql if s.startswith("WITH v(")]
    for item in items:
        assert sum(f"('{item.key}', 'submitting'" in s for s in flushes) == 1
        assert any(f"('{item.key}', 'succeeded'" in s for s in flushes)


async def test_items_wait_queued_ahead_of_the_free_slots(tmp_path: Path) -> None:
    # A slot that frees starts the next item at once: up to `concurrency` more
    # items are handed to the engine than run. The emulator's runs
    # stand still (one emulated second is 1,000 real ones) until the test moves
    # its clock, so the feed has filled before any run ends: no race with it.
    n, concurrency = 40, 4
    items = read_generate_file(prompts_file(tmp_path, n), Defaults(image_size=(64, 64)))
    seen: list[int] = []

    def progress(p: DatasetProgress) -> None:
        seen.append(p.in_flight)

    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=1000.0, seed=4) as emu,
        make_client(emu.url) as client,
    ):
        done = anyio.Event()

        async def run() -> None:
            try:
                assert (
                    await run_dataset(
                        client,
                        tmp_path / "out",
                        items,
                        concurrency=concurrency,
                        on_progress=progress,
                    )
                ).succeeded == n
            finally:
                done.set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                while emu.counters.runs_created < concurrency:  # noqa: ASYNC110 (no event for it)
                    await anyio.sleep(0.001)
                while not done.is_set():  # every run made so far ends, then the next ones
                    emu.advance(1000.0)
                    await anyio.sleep(0.001)
    assert emu.counters.runs_created == n
    # The first outcome found every slot busy and `concurrency` more queued (less
    # itself): one put at a time, waiting for its slot, kept it at `concurrency` + 1.
    # (The first call is the line shown before anything was fed.)
    assert seen[0] == 0
    assert seen[1] >= concurrency + 2
    # Never more than queued + running + the engine's outcome buffer (runs that
    # ended together wait there for the reader): memory does not grow with n.
    assert max(seen) <= 3 * concurrency


def test_publish_renames_an_image_saved_under_a_guessed_name(tmp_path: Path) -> None:
    guessed = ready_path(tmp_path, "key-0.png")
    guessed.write_bytes(b"\xff\xd8\xff" + b"jpeg bytes")
    row = {"file_name": "key-0.jpg", "key": "key", "sha256": "x"}
    lines = publish(tmp_path, [row], [guessed])
    assert lines == [json.dumps(row, sort_keys=True)]
    assert (tmp_path / MANIFEST).read_text() == lines[0] + "\n"
    assert (tmp_path / "key-0.jpg").read_bytes().startswith(b"\xff\xd8\xff")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key-0.jpg", MANIFEST]


async def test_finished_runs_wait_for_their_downloads_instead_of_piling_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Downloads held back: creates must stop once the outcomes waiting to be
    # recorded fill their bound, instead of every run being created while its
    # result waits in memory (which grew with the input: ~24 KB an item).
    n, concurrency, downloads = 60, 2, 1
    items = read_generate_file(prompts_file(tmp_path, n), Defaults(image_size=(64, 64)))
    gate = anyio.Event()
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001, seed=5) as emu,
        make_client(emu.url) as client,
    ):
        download = client.download

        async def held(*args: Any, **kwargs: Any) -> Any:
            await gate.wait()
            return await download(*args, **kwargs)

        monkeypatch.setattr(client, "download", held)

        async def release_when_stalled() -> None:
            quiet, last = 0, -1
            with anyio.fail_after(30):
                while emu.counters.runs_created < n and quiet < 50:
                    created = emu.counters.runs_created
                    idle = created == last and emu.counters.in_flight == 0
                    quiet, last = (quiet + 1 if idle else 0), created
                    await anyio.sleep(0.001)
            stalled.append(emu.counters.runs_created)
            gate.set()

        stalled: list[int] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(release_when_stalled)
            summary = await run_dataset(
                client,
                tmp_path / "out",
                items,
                concurrency=concurrency,
                download_concurrency=downloads,
            )
    assert summary.succeeded == n
    assert emu.counters.runs_created == n
    # Held in slots, in the outcome buffer, being recorded, and one read.
    assert stalled[0] <= 3 * concurrency + downloads + 1 < n


def test_lines_of_one_size_share_its_size_object_and_keep_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a red fox\na red fox\na blue bird\n")
    items = read_generate_file(path, Defaults(image_size=(64, 64), base_seed=5))
    sizes = {id(item.request.image_size) for item in items}
    assert len(sizes) == 1  # one object, not one per line (memory at 100,000 lines)
    assert items[0].request.size == (64, 64)
    # Keys and seeds as before sharing (a changed key would bill a line again).
    assert [(i.key, i.request.seed) for i in items] == [
        ("fdd81db4e5d7a1194361cbdb-0", 1421565411),
        ("2b4c2abf0d36af320f738a9a-0", 1421565412),
        ("dc66c0f4c9493453abd1d148-0", 1180992408),
    ]
    with pytest.raises(ValueError, match="image_size"):  # still reported, with its line
        read_generate_file(path, Defaults(image_size=(64, 9999)))


def test_the_folder_is_reconciled_and_summarised_in_memory_that_does_not_grow(
    tmp_path: Path,
) -> None:
    # 3,000 succeeded items with 2 KB rows: about 6 MB of rows, in the journal
    # and in the manifest. Reconciling and summarising stream them (the old
    # code held every row, as text and as dicts: many times that).
    n = 3000
    prompts = prompts_file(tmp_path, n)
    items = read_generate_file(prompts, Defaults())
    out = tmp_path / "out"
    out.mkdir()
    rows = []
    with Journal.open(out) as journal:
        journal.add_items((i.key, i.ordinal, "generate", Decimal("0.01")) for i in items)
        for item in items:
            row = json.dumps({"file_name": f"{item.key}-0.png", "key": item.key, "pad": "x" * 2000})
            journal.mark_succeeded(item.key, cost_usd=Decimal("0.01"), files=[row])
            rows.append(row)
        (out / MANIFEST).write_text("".join(f"{r}\n" for r in rows))
        tracemalloc.start()
        try:
            assert reconcile(out, journal) == n
            reconciled = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            summary = summarize(out, journal, items, images=n)
            summarised = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert (out / MANIFEST).read_text() == "".join(f"{r}\n" for r in rows)
    assert summary.succeeded == n
    assert summary.spent_usd == Decimal("0.01") * n
    assert reconciled < 1_500_000
    assert summarised < 1_500_000


def test_a_manifest_rewrite_that_fails_leaves_the_old_one_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    from runflow_async._dataset.manifest import _write_lines

    (tmp_path / MANIFEST).write_text("old\n")

    def rows() -> Iterator[str]:
        yield "new"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _write_lines(tmp_path / MANIFEST, rows())
    assert (tmp_path / MANIFEST).read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]


def test_a_created_item_without_a_manifest_is_left_to_collect(tmp_path: Path) -> None:
    with _journal(tmp_path, "a", "b") as journal:
        journal.mark_submitting("a", "ref-a")
        journal.mark_created("a", "run-a")
        assert reconcile(tmp_path, journal) == 0  # no manifest yet: nothing rolls forward
        assert journal.get("a").state is ItemState.CREATED  # type: ignore[union-attr]
        summary = summarize(tmp_path, journal, [], images=0)
    assert summary.total == 0  # items of another input are not counted
    assert (tmp_path / MANIFEST).read_text() == ""


async def test_a_run_opens_the_manifest_once_not_once_an_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 20
    items = read_generate_file(prompts_file(tmp_path, n), Defaults(image_size=(64, 64)))
    opened: list[str] = []
    real_open = os.open

    def counting(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001, seed=4) as emu,
        make_client(emu.url) as client,
    ):
        monkeypatch.setattr(os, "open", counting)
        summary = await run_dataset(client, tmp_path / "out", items, concurrency=4)
        monkeypatch.undo()
    assert summary.succeeded == n
    assert len(manifest(tmp_path / "out")) == n  # every row appended, whole
    appends = [p for p in opened if Path(p).name == MANIFEST]
    assert len(appends) == 1  # was one per item
