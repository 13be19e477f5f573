"""Issue 13: datasets created by batch: the journal records batch ids; kill -9 and resume."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from runflow_async._cli.main import main
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY
from tests.test_dataset_cli import cli_args, kill_when, manifest, prompts_file, run_cli

SCALE = 0.01


def batch_ids(out: Path) -> list[str | None]:
    path = out / ".runflow" / "journal.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [row[0] for row in db.execute("SELECT batch_id FROM items ORDER BY ordinal")]


async def test_a_dataset_by_batch_records_each_items_batch_id(tmp_path: Path) -> None:
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001, seed=3) as emu:
        out = tmp_path / "out"
        argv = cli_args(prompts_file(tmp_path, 150), out, emu.url, "--create-via", "batches")
        code = await run_cli([*argv, "--concurrency", "150"])
        counters = emu.counters
        batches = {run["batch_id"] for run in emu.runs()}
    assert code == 0
    assert len(manifest(out)) == 150
    assert counters.requests_by_route["create"] == 0
    assert counters.requests_by_route["batch_create"] == 2
    ids = batch_ids(out)
    assert None not in ids
    assert set(ids) == batches


async def test_kill_minus_nine_during_batch_creates_then_resume_makes_every_item_once(
    tmp_path: Path,
) -> None:
    n = 120
    inp = prompts_file(tmp_path, n)
    out = tmp_path / "out"
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=SCALE, median_duration=5.0, seed=9
    ) as emu:
        args = [*cli_args(inp, out, emu.url, scale=SCALE), "--create-via", "batches"]
        args += ["--concurrency", "50"]
        # 1: killed while its first batch create is held at the server (made, not answered);
        # 2: once some runs exist; 3: once some finished.
        emu.faults.next("batch_create", Fault.late_commit(20.0, answer=True))

        def sent() -> bool:  # the batch reached the server: killed while it waits there
            return emu.counters.requests_by_route["batch_create"] >= 1

        await kill_when(args, out, "submitting", 1, also=sent)
        await kill_when(args, out, "created", 20)
        await kill_when(args, out, "succeeded", 30)
        code = await run_cli(args)
        emu.advance(60.0)
        counters = emu.counters
        per_item = [run["client_ref"] for run in emu.runs()]
    assert code == 0
    rows = manifest(out)
    assert len(rows) == n
    assert len({r["key"] for r in rows}) == n
    assert counters.runs_created == n  # exactly one run per item, whatever the kills
    assert len(set(per_item)) == n
    assert counters.client_ref_duplicates == 0
    assert counters.requests_by_route["create"] == 0
    assert sum(Decimal(r["cost_usd"]) for r in rows) == counters.billed_usd
    assert None not in batch_ids(out)


def test_a_bad_create_via_is_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = cli_args(prompts_file(tmp_path, 2), out, "http://127.0.0.1:9", "--create-via", "x")
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2  # bad usage: nothing sent
    assert "--create-via" in capsys.readouterr().err
    assert not out.exists()
