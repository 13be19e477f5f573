"""A dataset folder is consistent at every instant, and every re-run knows what to do next.

Issue 11: rows appended as items finish (an image is never on disk without its
row, even at a ``kill -9``), edit manifests name the real inputs, the journal
stays private, ``--retry-failed``, runs found later are adopted, and the
summary says why items are not finished and what to run next.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from runflow_async._dataset.journal import JOURNAL_PATH, ItemState, Journal
from runflow_async._dataset.manifest import IMAGE_SUFFIXES, MANIFEST, ready_path, reconcile
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY
from tests.test_dataset_cli import ROOT, SCALE, cli_args, manifest, prompts_file, run_cli


def images_on_disk(out: Path) -> set[str]:
    """The images a reader (``imagefolder``) sees: visible files with an image suffix, by
    their path from ``out`` (``00000/KEY-0.png``: in their shard's subfolder)."""
    if not out.is_dir():
        return set()
    found = (p.relative_to(out) for p in out.rglob("*") if p.suffix in IMAGE_SUFFIXES)
    return {p.as_posix() for p in found if not any(part.startswith(".") for part in p.parts)}


def check_folder(out: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """Assert the folder's invariant; return the rows and the rows still being renamed.

    Every image on disk has exactly one row; every row's image is on disk, or
    (between the append and the rename) complete under its ready name.
    """
    path = out / MANIFEST
    text = path.read_text() if path.exists() else ""
    assert text == "" or text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]
    names = [row["file_name"] for row in rows]
    assert len(names) == len(set(names)), "a row is duplicated"
    images = images_on_disk(out)
    assert images <= set(names), f"images without a row: {sorted(images - set(names))}"
    renaming = set(names) - images
    for row in rows:
        if row["file_name"] in renaming:
            ready = ready_path(out, row["file_name"]).read_bytes()
            assert hashlib.sha256(ready).hexdigest() == row["sha256"]
    return rows, renaming


def datasets_available() -> bool:
    try:
        import datasets  # noqa: F401
    except ImportError:  # pragma: no cover - installed in the dev venv
        return False
    return True


async def load_with_datasets(out: Path) -> dict[str, tuple[str, str]]:
    """``datasets.load_dataset("imagefolder")``: each image's prompt and sha256, by file name."""
    import datasets

    def load() -> dict[str, tuple[str, str]]:
        table = datasets.load_dataset(
            "imagefolder", data_dir=str(out), split="train", cache_dir=str(out.parent / "hf-cache")
        )
        table = table.cast_column("image", datasets.Image(decode=False))
        seen = {}
        for record in table:
            path = Path(record["image"]["path"])
            name = path.relative_to(out).as_posix()  # its file_name: the subfolder too
            seen[name] = (record["prompt"], hashlib.sha256(path.read_bytes()).hexdigest())
        return seen

    return await anyio.to_thread.run_sync(load)


def as_loaded(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {row["file_name"]: (row["prompt"], row["sha256"]) for row in rows}


async def test_at_every_kill_each_image_on_disk_has_exactly_one_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = 50
    inp = prompts_file(tmp_path, n)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=0.01, median_duration=5.0, seed=12
    ) as emu:
        args = cli_args(inp, out, emu.url, scale=0.01)
        argv = [sys.executable, "-m", "runflow_async", *args]
        # Killed as soon as this many images are in the folder: right after a
        # rename, while other items download, append and rename around it.
        for count in (2, 9, 17, 30):
            quiet, log = subprocess.DEVNULL, tmp_path / f"stderr-{count}.txt"
            with log.open("wb") as err:
                proc = await anyio.open_process(
                    argv, env=env, stdin=quiet, stdout=quiet, stderr=err
                )
            try:
                with anyio.fail_after(60):
                    while len(images_on_disk(out)) < count:
                        assert proc.returncode is None, log.read_text()[-2000:]
                        await anyio.sleep(0.001)
                proc.send_signal(signal.SIGKILL)
            finally:
                await proc.wait()
            rows, renaming = check_folder(out)
            assert len(rows) >= count
            # Between a row's append and its image's rename (microseconds) the
            # image is only under its ready name; else datasets sees it all.
            if datasets_available() and not renaming:
                assert await load_with_datasets(out) == as_loaded(rows)
        assert await run_cli(args) == 0
        counters = emu.counters
    rows, renaming = check_folder(out)
    assert renaming == set()
    assert len(rows) == n == len(images_on_disk(out))  # exactly one row per image
    assert len({row["key"] for row in rows}) == n
    assert not list(out.rglob(".*.rfa-*"))  # nothing half-published is left
    assert counters.runs_created == n
    assert sum(Decimal(row["cost_usd"]) for row in rows) == counters.billed_usd
    if datasets_available():
        assert await load_with_datasets(out) == as_loaded(rows)


def published(
    out: Path, journal: Journal, key: str, n: int, *, cost: str | None = "1"
) -> list[dict[str, Any]]:
    """What ``publish`` leaves for item ``key`` after its rows were appended (ready files)."""
    rows = []
    for i in range(n):
        name = f"{key}-{i}.png"
        data = f"image {key} {i}".encode()
        ready_path(out, name).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        rows.append(
            {"file_name": name, "key": key, "run_id": f"run-{key}", "sha256": sha, "cost_usd": cost}
        )
    with (out / MANIFEST).open("a") as fh:
        fh.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    return rows


def test_a_kill_between_the_row_and_the_journal_is_rolled_forward(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        journal.add_items((k, i, "generate", Decimal(1)) for i, k in enumerate(["a-0", "b-0"]))
        for key in ("a-0", "b-0"):
            journal.mark_submitting(key, f"ref-{key}")
            journal.mark_created(key, f"run-{key}")
        published(tmp_path, journal, "a-0", 2)  # killed before either rename
        rows_b = published(tmp_path, journal, "b-0", 2, cost=None)
        ready_path(tmp_path, rows_b[0]["file_name"]).rename(tmp_path / rows_b[0]["file_name"])
        with (tmp_path / MANIFEST).open("a") as fh:
            fh.write("[]\n")  # not a row of ours: ignored
        (tmp_path / "notes.png").write_bytes(b"the user's own file")  # not ours: kept
        assert reconcile(tmp_path, journal) == 4
        a, b = journal.get("a-0"), journal.get("b-0")
        assert a is not None
        assert b is not None
        assert (a.state, b.state) == (ItemState.SUCCEEDED, ItemState.SUCCEEDED)
        assert (a.cost_usd, b.cost_usd) == (Decimal(2), None)  # the rows' costs, if known
    (tmp_path / "notes.png").unlink()
    rows, renaming = check_folder(tmp_path)
    assert (len(rows), renaming) == (4, set())
    assert images_on_disk(tmp_path) == {"a-0-0.png", "a-0-1.png", "b-0-0.png", "b-0-1.png"}


@pytest.mark.parametrize(
    "damage",
    ["torn_last_line", "wrong_sha", "other_run", "image_gone", "twice", "not_its_name", "binary"],
)
def test_rows_that_cannot_be_proven_whole_are_rolled_back(tmp_path: Path, damage: str) -> None:
    with Journal.open(tmp_path) as journal:
        journal.add_items([("a-0", 0, "generate", Decimal(1)), ("b-0", 1, "generate", Decimal(1))])
        for key in ("a-0", "b-0"):
            journal.mark_submitting(key, f"ref-{key}")
            journal.mark_created(key, f"run-{key}")
        journal.mark_succeeded("b-0", cost_usd=None, files=[json.dumps({"file_name": "x.png"})])
        (tmp_path / "x.png").write_bytes(b"b's image")
        rows = published(tmp_path, journal, "a-0", 1)
        name = rows[0]["file_name"]
        ready_path(tmp_path, name).rename(tmp_path / name)
        if damage == "torn_last_line":
            with (tmp_path / MANIFEST).open("a") as fh:
                fh.write('{"file_name": "a-0-1.png", "ke')  # a write cut short by the kill
        elif damage == "wrong_sha":
            (tmp_path / name).write_bytes(b"something else")
        elif damage == "other_run":
            with sqlite3.connect(journal.path) as db:
                db.execute("UPDATE items SET run_id = 'another' WHERE key = 'a-0'")
            db.close()
        elif damage == "image_gone":
            (tmp_path / name).unlink()
        elif damage == "binary":
            with (tmp_path / MANIFEST).open("ab") as fh:
                fh.write(b"\xff\xfe\n")
        else:
            row = {**rows[0], "file_name": "x.png"} if damage == "not_its_name" else rows[0]
            with (tmp_path / MANIFEST).open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        assert reconcile(tmp_path, journal) == 1
        item = journal.get("a-0")
        assert item is not None
        assert item.state is ItemState.CREATED  # downloaded again
    assert images_on_disk(tmp_path) == {"x.png"}  # a's image went first, then its row
    assert [row["file_name"] for row in manifest(tmp_path)] == ["x.png"]


def test_the_summary_names_every_reason_with_its_next_step() -> None:
    from runflow_async._dataset.outputs import DatasetSummary

    summary = DatasetSummary(
        out_dir=Path("out"),
        total=9,
        succeeded=2,
        failed=3,
        pending=4,
        images=2,
        spent_usd=Decimal(0),
        reasons={"to collect": 1, "outcome unknown": 1, "budget": 1, "server": 1},
        failures={"RunFailedError": 2, "UnprocessableEntityError": 1},
    )
    steps = summary.next_steps
    assert steps[0] == "raise --max-cost and run the same command"  # what needs the user first
    assert any("looked up by client_ref" in step for step in steps)
    assert any("collected by id" in step for step in steps)
    assert any("run the same command again" in step for step in steps)  # server
    assert "--retry-failed to create the 3 failed item(s)" in steps[-1]
    assert "2 failed server-side (failed runs are not billed)" in steps[-1]
    assert summary.to_json()["next_steps"] == steps
    other = DatasetSummary(Path("o"), 1, 0, 1, 0, 0, Decimal(0), failures={"BadRequestError": 1})
    assert "server-side" not in other.next_steps[0]


async def test_edit_manifests_record_the_inputs_as_given(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "photo.png")
    url = "https://images.example/reference.png"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "night", "image_urls": ["photo.png", url]}) + "\n")
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        argv = ["edit", *cli_args(jobs, out, emu.url)[1:]]
        assert await run_cli(argv) == 0
    (row,) = manifest(out)
    assert json.loads(row["parameters"])["image_urls"] == ["photo.png", url]
    assert "local.invalid" not in (out / MANIFEST).read_text()


def folder_modes(out: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The modes of what a reader gets (images, manifest, failures), and of the journal's files."""
    shown = [out / MANIFEST, out / "failures.jsonl", *(out / n for n in images_on_disk(out))]
    private = (out / JOURNAL_PATH).parent.glob(f"{JOURNAL_PATH.name}*")
    return (
        {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in shown},
        {p.name: stat.S_IMODE(p.stat().st_mode) for p in private},
    )


@pytest.mark.parametrize(("umask", "public"), [(0o002, 0o664), (0o077, 0o600)])
async def test_images_and_manifest_honour_the_umask_the_journal_stays_private(
    tmp_path: Path, umask: int, public: int
) -> None:
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        old = os.umask(umask)
        try:
            code = await run_cli(cli_args(prompts_file(tmp_path, 3), out, emu.url))
        finally:
            os.umask(old)
    assert code == 0

    shown, private = folder_modes(out)
    assert len(shown) == 5  # metadata.jsonl, failures.jsonl and three images
    assert set(shown.values()) == {public}
    assert set(private.values()) == {0o600}, private


def journal_rows(out: Path) -> dict[str, tuple[str, str | None, int]]:
    with sqlite3.connect(out / JOURNAL_PATH) as db:
        rows = db.execute("SELECT key, state, client_ref, retries FROM items").fetchall()
    db.close()
    return {key: (state, ref, retries) for key, state, ref, retries in rows}


async def test_runs_that_failed_server_side_are_created_again_only_with_retry_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 20
    inp = prompts_file(tmp_path, n)
    out = tmp_path / "out"
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=SCALE, failure_rate=0.3, seed=21
    ) as emu:
        assert await run_cli(cli_args(inp, out, emu.url, "--json")) == 1
        first = json.loads(capsys.readouterr().out)
        failed = first["failed"]
        assert failed > 0
        assert first["failed_by_type"] == {"RunFailedError": failed}
        assert any("--retry-failed" in step for step in first["next_steps"])
        before = journal_rows(out)
        # Without the flag: failed items stay failed, nothing is created, the
        # summary counts them and says how to retry them.
        assert await run_cli(cli_args(inp, out, emu.url)) == 1
        err = capsys.readouterr().err
        assert f"failed: RunFailedError: {failed}" in err
        assert "--retry-failed" in err
        assert emu.counters.runs_created == n
        # With it: each failed item is created again, under a new client_ref (the
        # old one names the failed run: sent again, it would be answered with it).
        assert await run_cli(cli_args(inp, out, emu.url, "--retry-failed", "--json")) in (0, 1)
        retried = json.loads(capsys.readouterr().out)
        counters = emu.counters
        refs = [run["client_ref"] for run in emu.runs()]
    assert counters.runs_created == n + failed
    assert counters.idempotent_replays == 0
    after = journal_rows(out)
    again = [key for key, (state, _, _) in before.items() if state == "failed"]
    assert len(again) == failed
    for key in again:
        old_ref = before[key][1]
        assert old_ref is not None
        assert after[key][2] == 1
        assert f"{old_ref}-r1" in refs  # the new create, numbered by the retry count
    assert len(set(refs)) == n + failed
    assert retried["succeeded"] + retried["failed"] == n
    assert len(manifest(out)) == retried["succeeded"]
    assert retried["succeeded"] > first["succeeded"]


@pytest.mark.parametrize("resend", ["402", "429_then_credit_ran_out"])
async def test_a_lost_create_refused_on_the_resend_is_adopted_on_the_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], resend: str
) -> None:
    # The first create is stored but its answer is lost; the lookup misses (the
    # list lags); the resend is refused: 402 at once, or 429 and, while it waits,
    # the next item's 402 stops the batch. The server made (and bills) the run.
    n = 4
    inp = prompts_file(tmp_path, n)
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE, list_lag=200.0) as emu:
        emu.faults.next("create", Fault.lost_response(502))
        if resend != "402":
            # The cool-down (50 ms real) is what lets the next item take the one
            # slot and meet the 402 first; the retry then finds the batch stopped.
            emu.faults.next("create", Fault.status(429, retry_after=50))
        emu.faults.next("create", Fault.status(402, code="INSUFFICIENT_CREDIT"))
        args = cli_args(inp, out, emu.url, "--json")
        assert await run_cli([*args, "--concurrency", "1"]) == 1
        first = json.loads(capsys.readouterr().out)
        assert emu.counters.runs_created >= 1
        emu.advance(200.0)  # the list catches up: a lookup now finds the lost run
        assert await run_cli(args) == 0
        second = json.loads(capsys.readouterr().out)
        counters = emu.counters
    if resend == "402":
        assert first["not_finished"] == {"outcome unknown": 1}
        assert "looked up by client_ref" in first["next_steps"][0]
    else:  # the 429 given up after the lost answer proves nothing either
        assert first["not_finished"] == {"outcome unknown": 1, "insufficient_credit": n - 1}
        assert "add credit, then run the same command" in first["next_steps"]
    assert second["succeeded"] == n
    assert counters.runs_created == n  # the lost run was adopted, never created twice
    rows = manifest(out)
    assert len(rows) == n
    assert sum(Decimal(row["cost_usd"]) for row in rows) == counters.billed_usd
    assert Decimal(second["spent_usd"]) == counters.billed_usd  # nothing paid for is lost
