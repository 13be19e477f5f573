"""The SQLite journal: lifecycle, write-ahead client_ref, crash safety, exact money."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from runflow_async._core.errors import RunflowError
from runflow_async._dataset import journal as _journal
from runflow_async._dataset.journal import (
    JOURNAL_PATH,
    SCHEMA_VERSION,
    ItemState,
    Journal,
    JournalError,
    JournalItem,
    JournalStateError,
)

S = ItemState
PACKAGE_ROOT = Path(_journal.__file__).resolve().parents[2]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path) as j:
        yield j


def entry(journal: Journal, key: str) -> JournalItem:
    item = journal.get(key)
    assert item is not None
    return item


def add(journal: Journal, *keys: str, estimate: str = "0.006") -> int:
    return journal.add_items((k, n, "generate", Decimal(estimate)) for n, k in enumerate(keys))


def test_open_creates_the_file_in_wal_mode(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "out") as journal:
        assert journal.path == tmp_path / "out" / ".runflow" / "journal.sqlite3"
        assert journal.path == tmp_path / "out" / JOURNAL_PATH
    conn = sqlite3.connect(tmp_path / "out" / JOURNAL_PATH)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        conn.close()


def test_add_items_is_insert_or_ignore_and_counts_new_ones(journal: Journal) -> None:
    assert add(journal, "a-0", "b-0") == 2
    journal.mark_submitting("a-0", "ref-a")
    assert journal.add_items([("a-0", 5, "edit", Decimal(1)), ("c-0", 2, "edit", Decimal(1))]) == 1
    a = entry(journal, "a-0")
    assert (a.ordinal, a.kind, a.state, a.estimate_usd) == (
        0,
        "generate",
        S.SUBMITTING,
        Decimal("0.006"),
    )
    assert [i.key for i in journal.items()] == ["a-0", "b-0", "c-0"]
    assert add(journal) == 0


def test_a_fresh_item_is_pending_with_nothing_recorded(journal: Journal) -> None:
    add(journal, "a-0")
    item = entry(journal, "a-0")
    assert item == JournalItem(
        key="a-0",
        ordinal=0,
        kind="generate",
        state=S.PENDING,
        client_ref=None,
        run_id=None,
        estimate_usd=Decimal("0.006"),
        cost_usd=None,
        error_type=None,
        error=None,
        files=(),
        attempts=0,
        updated_at=item.updated_at,
        prior_cost_usd=Decimal(0),
        retries=0,
    )
    assert datetime.fromisoformat(item.updated_at).utcoffset() is not None
    assert item.updated_at.endswith("+00:00")
    assert journal.get("nope") is None


def test_full_lifecycle_to_success(journal: Journal) -> None:
    add(journal, "a-0")
    journal.mark_submitting("a-0", "ref-a")
    journal.mark_created("a-0", "run_1")
    journal.mark_created("a-0", "run_1")  # the same run again: no-op
    journal.mark_succeeded("a-0", cost_usd=Decimal("0.006291"), files=['{"file": "a-0-0.png"}'])
    item = entry(journal, "a-0")
    assert item.state is S.SUCCEEDED
    assert (item.client_ref, item.run_id, item.attempts) == ("ref-a", "run_1", 1)
    assert item.cost_usd == Decimal("0.006291")
    assert item.files == ('{"file": "a-0-0.png"}',)


def test_client_ref_is_written_ahead_and_kept_across_attempts(journal: Journal) -> None:
    add(journal, "a-0")
    journal.mark_submitting("a-0", "ref-first")
    journal.mark_submitting("a-0", "ref-second")  # a retried or resumed create
    journal.mark_not_submitted("a-0", reason="budget")
    item = entry(journal, "a-0")
    assert (item.state, item.client_ref, item.error, item.error_type) == (
        S.NOT_SUBMITTED,
        "ref-first",
        "budget",
        None,
    )
    journal.mark_submitting("a-0", "ref-third")
    item = entry(journal, "a-0")
    assert (item.state, item.client_ref, item.attempts, item.error) == (
        S.SUBMITTING,
        "ref-first",
        3,
        None,
    )


def test_failed_run_keeps_its_run_and_cost(journal: Journal) -> None:
    add(journal, "a-0", "b-0")
    journal.mark_submitting("a-0", "ref-a")
    journal.mark_created("a-0", "run_1")
    journal.mark_failed("a-0", error_type="RunFailedError", error="nsfw", cost_usd=Decimal("0.01"))
    journal.mark_failed("b-0", error_type="OSError", error="upload failed")  # before any create
    a, b = journal.items()
    assert (a.state, a.run_id, a.error_type, a.error, a.cost_usd) == (
        S.FAILED,
        "run_1",
        "RunFailedError",
        "nsfw",
        Decimal("0.01"),
    )
    assert (b.state, b.cost_usd, b.client_ref) == (S.FAILED, None, None)


def test_reset_for_retry_forgets_a_created_run_but_keeps_its_cost(journal: Journal) -> None:
    add(journal, "a-0", estimate="0.01")
    journal.mark_submitting("a-0", "ref-a")
    journal.mark_created("a-0", "run_1")
    journal.mark_failed("a-0", error_type="RunFailedError", error="boom", cost_usd=Decimal("0.01"))
    journal.reset_for_retry("a-0")
    item = entry(journal, "a-0")
    assert (item.state, item.client_ref, item.run_id, item.cost_usd) == (
        S.PENDING,
        None,
        None,
        None,
    )
    assert (item.error, item.error_type, item.attempts, item.retries) == (None, None, 1, 1)
    assert item.prior_cost_usd == Decimal("0.01")
    journal.mark_submitting("a-0", "ref-new")
    journal.mark_created("a-0", "run_2")
    journal.mark_succeeded("a-0", cost_usd=Decimal("0.01"), files=[])
    assert entry(journal, "a-0").client_ref == "ref-new"
    assert journal.summary()["spent_usd"] == Decimal("0.02")


def test_reset_for_retry_without_a_run_keeps_the_client_ref(journal: Journal) -> None:
    add(journal, "a-0", "b-0")
    journal.mark_submitting("a-0", "ref-a")
    journal.mark_failed("a-0", error_type="UnprocessableEntityError", error="bad input")
    journal.mark_submitting("b-0", "ref-b")
    journal.mark_not_submitted("b-0", reason="insufficient_credit")
    journal.reset_for_retry("a-0")
    journal.reset_for_retry("b-0")
    a, b = journal.items()
    assert (a.state, a.client_ref, a.prior_cost_usd) == (S.PENDING, "ref-a", Decimal(0))
    assert (b.state, b.client_ref, b.error) == (S.PENDING, "ref-b", None)
    assert (a.retries, b.retries) == (0, 0)  # no failed run: the same create may yet be found


def test_items_filters_by_state_in_input_order(journal: Journal) -> None:
    journal.add_items([("z-0", 0, "generate", Decimal(1)), ("a-0", 1, "generate", Decimal(1))])
    journal.add_items([("m-0", 2, "edit", Decimal(1))])
    journal.mark_not_submitted("a-0", reason="fail_fast")
    assert [i.key for i in journal.items()] == ["z-0", "a-0", "m-0"]
    assert [i.key for i in journal.items(states=[S.PENDING])] == ["z-0", "m-0"]
    assert [i.key for i in journal.items(states={S.NOT_SUBMITTED, S.FAILED})] == ["a-0"]
    assert journal.items(states=[]) == []


def test_summary_counts_every_state_and_adds_money_exactly(journal: Journal) -> None:
    keys = [f"k{n}-0" for n in range(7)]
    add(journal, *keys, estimate="0.1")
    for key in keys[:5]:
        journal.mark_submitting(key, f"ref-{key}")
    for key in keys[:4]:
        journal.mark_created(key, f"run-{key}")
    journal.mark_succeeded(keys[0], cost_usd=Decimal("0.1"), files=[])
    journal.mark_succeeded(keys[1], cost_usd=Decimal("0.2"), files=[])
    # Its cost was not reported: it counts as it was reserved (0.1 at factor 1.5).
    journal.mark_succeeded(keys[2], cost_usd=None, files=[], reserved_usd=Decimal("0.15"))
    journal.mark_failed(keys[3], error_type="RunFailedError", error="x", cost_usd=Decimal("0.7"))
    journal.mark_not_submitted(keys[5], reason="budget")
    summary = journal.summary()
    assert summary["counts"] == {
        "pending": 1,
        "submitting": 1,
        "created": 0,
        "succeeded": 3,
        "failed": 1,
        "not_submitted": 1,
    }
    assert summary["total"] == 7
    # 0.1 + 0.2 + 0.15 + 0.7 is exactly 1.15 in decimal (not 1.1499999999999999 as floats).
    assert summary["spent_usd"] == Decimal("1.15")
    assert str(summary["spent_usd"]) == "1.15"
    assert (summary["unknown_cost_runs"], summary["unknown_cost_usd"]) == (1, Decimal("0.15"))
    assert summary["estimated_usd"] == Decimal("0.3")  # pending, submitting, not submitted


def test_a_cost_reported_late_replaces_what_the_run_was_reserved_at(journal: Journal) -> None:
    add(journal, "a-0", "b-0", "c-0", estimate="0.1")
    for key in ("a-0", "b-0", "c-0"):
        journal.mark_created(key, f"run-{key}")
    journal.mark_succeeded("a-0", cost_usd=None, files=["row"], reserved_usd=Decimal("0.15"))
    journal.mark_succeeded("b-0", cost_usd=None, files=[])  # an older journal: no reservation
    # A known cost keeps no reservation.
    journal.mark_succeeded("c-0", cost_usd=Decimal("0.1"), files=[], reserved_usd=Decimal("9"))
    assert entry(journal, "c-0").reserved_usd is None
    assert journal.summary()["spent_usd"] == Decimal("0.35")  # b-0 at its estimate
    assert journal.record_cost("a-0", cost_usd=Decimal("0.3"), files=["row, costed"])
    a = entry(journal, "a-0")
    assert (a.cost_usd, a.reserved_usd, a.files) == (Decimal("0.3"), None, ("row, costed",))
    assert not journal.record_cost("a-0", cost_usd=Decimal("1"), files=[])  # known already
    assert not journal.record_cost("c-0", cost_usd=Decimal("1"), files=[])
    summary = journal.summary()
    assert summary["spent_usd"] == Decimal("0.5")
    assert (summary["unknown_cost_runs"], summary["unknown_cost_usd"]) == (1, Decimal("0.1"))


def test_summary_of_an_empty_journal(journal: Journal) -> None:
    summary = journal.summary()
    assert summary["total"] == 0
    assert set(summary["counts"].values()) == {0}
    assert summary["spent_usd"] == summary["estimated_usd"] == Decimal(0)


def test_money_is_stored_as_exact_text(journal: Journal) -> None:
    journal.add_items([("a-0", 0, "generate", Decimal("0.000001234567890123456789"))])
    assert entry(journal, "a-0").estimate_usd == Decimal("0.000001234567890123456789")
    with pytest.raises(ValueError, match="not an amount of money"):
        journal.add_items([("b-0", 1, "generate", Decimal("NaN"))])
    assert journal.get("b-0") is None


def test_meta_values_round_trip(journal: Journal) -> None:
    assert journal.get_meta("dataset_id") is None
    journal.set_meta("dataset_id", "abc")
    journal.set_meta("dataset_id", "def")
    journal.set_meta("input", "/data/prompts.txt")
    assert journal.get_meta("dataset_id") == "def"
    assert journal.get_meta("input") == "/data/prompts.txt"


@pytest.mark.parametrize(
    "call",
    [
        lambda j: j.mark_submitting("nope", "ref"),
        lambda j: j.mark_created("nope", "run"),
        lambda j: j.mark_succeeded("nope", cost_usd=None, files=[]),
        lambda j: j.mark_failed("nope", error_type="X", error="y"),
        lambda j: j.mark_not_submitted("nope", reason="budget"),
        lambda j: j.reset_for_retry("nope"),
    ],
)
def test_unknown_keys_raise_key_error(journal: Journal, call: Callable[[Journal], object]) -> None:
    with pytest.raises(KeyError, match="no item 'nope' in the journal"):
        call(journal)


def test_transitions_that_would_lose_a_run_are_refused(journal: Journal) -> None:
    add(journal, "a-0")
    with pytest.raises(JournalStateError, match="'a-0' is pending; it cannot become pending"):
        journal.reset_for_retry("a-0")
    journal.mark_submitting("a-0", "ref")
    journal.mark_created("a-0", "run_1")
    with pytest.raises(JournalStateError, match="is created; it cannot become created"):
        journal.mark_created("a-0", "run_2")  # a second run for one item is a bug
    with pytest.raises(JournalStateError, match="is created; it cannot become not_submitted"):
        journal.mark_not_submitted("a-0", reason="budget")  # a run exists
    with pytest.raises(JournalStateError, match="is created; it cannot become submitting"):
        journal.mark_submitting("a-0", "ref")
    journal.mark_succeeded("a-0", cost_usd=None, files=[])
    with pytest.raises(JournalStateError, match="is succeeded; it cannot become failed"):
        journal.mark_failed("a-0", error_type="X", error="y")
    assert issubclass(JournalStateError, RunflowError)
    assert entry(journal, "a-0").state is S.SUCCEEDED


def test_reopen_after_close_sees_everything(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        add(journal, "a-0", "b-0")
        journal.mark_submitting("a-0", "ref-a")
        journal.mark_created("a-0", "run_1")
        journal.set_meta("dataset_id", "d1")
    journal.close()  # closing twice is harmless
    with Journal.open(tmp_path) as again:
        assert entry(again, "a-0").run_id == "run_1"
        assert entry(again, "b-0").state is S.PENDING
        assert again.get_meta("dataset_id") == "d1"
        assert add(again, "a-0", "b-0") == 0


def test_a_second_journal_sees_every_write_without_a_close(tmp_path: Path) -> None:
    crashed = Journal.open(tmp_path)
    try:
        add(crashed, "a-0")
        crashed.mark_submitting("a-0", "ref-a")
        with Journal.open(tmp_path) as survivor:
            item = entry(survivor, "a-0")
            assert (item.state, item.client_ref) == (S.SUBMITTING, "ref-a")
            crashed.mark_created("a-0", "run_1")
            assert entry(survivor, "a-0").run_id == "run_1"
    finally:
        crashed.close()


def test_every_write_survives_kill_9(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, signal, sys
        from decimal import Decimal
        from pathlib import Path
        from runflow_async._dataset.journal import Journal

        journal = Journal.open(Path(sys.argv[1]))
        journal.add_items([("a-0", 0, "generate", Decimal("0.006"))])
        journal.mark_submitting("a-0", "ref-a")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script, str(tmp_path)],
        check=False,
        capture_output=True,
        cwd=PACKAGE_ROOT,  # `-c` imports from the working directory
    )
    assert proc.returncode == -9, proc.stderr
    with Journal.open(tmp_path) as journal:
        item = entry(journal, "a-0")
        assert (item.state, item.client_ref, item.attempts) == (S.SUBMITTING, "ref-a", 1)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Journal.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / JOURNAL_PATH)
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    newer = rf"journal schema {SCHEMA_VERSION + 1}; .* up to {SCHEMA_VERSION}\)"
    with pytest.raises(JournalError, match=rf"newer runflow-async \({newer}"):
        Journal.open(tmp_path)


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_PATH).parent.mkdir()
    (tmp_path / JOURNAL_PATH).write_bytes(b"this is not a database, it is text" * 100)
    with pytest.raises(JournalError, match="is not a usable journal"):
        Journal.open(tmp_path)


def test_the_journal_never_holds_the_api_key(tmp_path: Path) -> None:
    api_key = "rf_live_sk_0123456789abcdefSECRET"
    with Journal.open(tmp_path) as journal:
        journal.set_meta("dataset_id", "d1")
        journal.set_meta("input", str(tmp_path / "prompts.txt"))
        add(journal, "a-0", "b-0", "c-0")
        for key in ("a-0", "b-0", "c-0"):
            journal.mark_submitting(key, f"rfa-d1-{key}")
        journal.mark_created("a-0", "run_1")
        journal.mark_succeeded("a-0", cost_usd=Decimal("0.006"), files=['{"sha256": "00"}'])
        journal.mark_created("b-0", "run_2")
        journal.mark_failed(
            "b-0", error_type="AuthenticationError", error="HTTP 401: invalid API key"
        )
        journal.mark_not_submitted("c-0", reason="budget")
    stored = b"".join(p.read_bytes() for p in (tmp_path / ".runflow").iterdir())
    assert b"rfa-d1-a-0" in stored  # the check can see what was written
    assert api_key.encode() not in stored
    assert b"SECRET" not in stored


def test_a_run_found_later_is_adopted_whatever_the_item_was_marked(journal: Journal) -> None:
    # A create whose answer was lost, then refused on the resend (402, or a 429
    # given up when the batch stopped): "not submitted", though the server made
    # it. A later lookup by client_ref finds it: adopted, never JournalStateError.
    add(journal, "n-0", "p-0", "f-0", "s-0")
    for key in ("n-0", "p-0", "f-0", "s-0"):
        journal.mark_submitting(key, f"ref-{key}")
        journal.mark_not_submitted(key, reason="insufficient_credit")
    journal.reset_for_retry("p-0")  # --retry-failed of an item without a run keeps its ref
    journal.mark_created("n-0", "run_n")
    journal.mark_created("p-0", "run_p")
    journal.mark_failed("f-0", error_type="UnprocessableEntityError", error="bad upload")
    journal.mark_succeeded("s-0", cost_usd=Decimal("0.01"), files=["{}"])
    n, p, f, s = (entry(journal, k) for k in ("n-0", "p-0", "f-0", "s-0"))
    assert (n.state, n.run_id, n.client_ref) == (S.CREATED, "run_n", "ref-n-0")
    assert (p.state, p.run_id, p.client_ref) == (S.CREATED, "run_p", "ref-p-0")
    assert (f.state, s.state) == (S.FAILED, S.SUCCEEDED)
    journal.mark_succeeded("n-0", cost_usd=Decimal("0.02"), files=[])
    assert journal.summary()["spent_usd"] == Decimal("0.03")  # what the server billed


def test_a_version_1_journal_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_PATH
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:  # the schema runflow-async wrote before retries
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute(
            "CREATE TABLE items (key TEXT PRIMARY KEY, ordinal INTEGER NOT NULL, kind TEXT"
            " NOT NULL, state TEXT NOT NULL, client_ref TEXT, run_id TEXT, estimate_usd TEXT,"
            " cost_usd TEXT, error_type TEXT, error TEXT, files TEXT NOT NULL DEFAULT '[]',"
            " attempts INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL,"
            " prior_cost_usd TEXT NOT NULL DEFAULT '0')"
        )
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute(
            "INSERT INTO items (key, ordinal, kind, state, client_ref, run_id, updated_at)"
            " VALUES ('a-0', 0, 'generate', 'failed', 'ref-a', 'run_1', 'now')"
        )
    conn.close()
    with Journal.open(tmp_path) as journal:
        item = entry(journal, "a-0")
        assert (item.state, item.run_id, item.retries) == (S.FAILED, "run_1", 0)
        journal.reset_for_retry("a-0")
        assert entry(journal, "a-0").retries == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_the_journal_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    import os
    import stat

    old = os.umask(umask)
    try:
        with Journal.open(tmp_path) as journal:
            add(journal, "a-0")  # WAL mode: the -wal and -shm files exist while it is open
            path = journal.path
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
    finally:
        os.umask(old)
    assert set(modes.values()) == {0o600}, modes


def test_a_journal_an_older_version_left_readable_is_made_private(tmp_path: Path) -> None:
    import os
    import stat

    Journal.open(tmp_path).close()
    path = tmp_path / JOURNAL_PATH
    os.chmod(path, 0o644)
    Journal.open(tmp_path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
