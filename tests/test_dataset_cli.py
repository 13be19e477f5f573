"""Datasets from the command line, end to end against the emulator (issue 4's done-means)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from runflow_async._cli.main import main
from runflow_async.emulator import Emulator, Fault, FaultRates
from tests.conftest import API_KEY

ROOT = Path(__file__).resolve().parent.parent
SCALE = 0.001


def prompts_file(tmp_path: Path, n: int, name: str = "prompts.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"a tiny test image number {i}\n" for i in range(n)))
    return path


def cli_args(inp: Path, out: Path, url: str, *extra: str, scale: float = SCALE) -> list[str]:
    return [
        "generate", str(inp), "--out", str(out), "--base-url", url, "--api-key", API_KEY,
        "--yes", "--time-scale", str(scale), "--image-size", "64x64", *extra,
    ]  # fmt: skip


async def run_cli(argv: list[str]) -> int:
    """``main`` in a worker thread: its own event loop; ours keeps serving the emulator."""
    return await anyio.to_thread.run_sync(main, argv)


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def failures(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]


async def test_200_prompts_under_faults_all_end_as_images_or_failures(tmp_path: Path) -> None:
    faults = FaultRates(rate_429=0.05, rate_5xx=0.05, rate_drop=0.01, rate_lost_create=0.02)
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=SCALE, seed=5, failure_rate=0.03, faults=faults
    ) as emu:
        out = tmp_path / "out"
        code = await run_cli(cli_args(prompts_file(tmp_path, 200), out, emu.url, "--json"))
        counters = emu.counters
    rows, failed = manifest(out), failures(out)
    keys = {r["key"] for r in rows} | {f["key"] for f in failed}
    assert len(keys) == 200  # every prompt is accounted for
    assert len(rows) + len(failed) == 200
    assert failed  # a few runs failed on purpose
    assert {f["error_type"] for f in failed} == {"RunFailedError"}
    assert code == 1
    billed = sum(Decimal(r["cost_usd"]) for r in rows)
    assert billed == counters.billed_usd  # to the cent, and finer
    assert counters.runs_created == 200  # no create billed twice
    assert counters.credentials_on_presigned == 0
    for row in rows:
        assert (out / row["file_name"]).stat().st_size > 0


def journal_counts(out: Path) -> dict[str, int]:
    path = out / ".runflow" / "journal.sqlite3"
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()
    except sqlite3.Error:
        return {}
    return dict(rows)


async def kill_when(
    args: list[str],
    out: Path,
    state: str,
    count: int,
    *,
    also: Callable[[], bool] = lambda: True,
) -> None:
    """Run the CLI ``args`` in its own process; ``kill -9`` it once the journal holds
    ``count`` items in ``state`` (and ``also()`` is true). It must not finish first."""
    argv = [sys.executable, "-m", "runflow_async", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    quiet = subprocess.DEVNULL
    proc = await anyio.open_process(argv, env=env, stdin=quiet, stdout=quiet, stderr=quiet)
    try:
        with anyio.fail_after(60):
            while journal_counts(out).get(state, 0) < count or not also():
                assert proc.returncode is None, "finished before the kill point"
                await anyio.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        await proc.wait()


async def test_kill_minus_nine_at_any_point_never_bills_twice(tmp_path: Path) -> None:
    n = 60
    inp = prompts_file(tmp_path, n)
    out = tmp_path / "out"
    # Kill once runs exist, once some finished, once most finished.
    points = [("created", 1), ("succeeded", 10), ("succeeded", 40)]
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=0.01, median_duration=5.0, seed=9
    ) as emu:
        args = cli_args(inp, out, emu.url, scale=0.01)
        for state, count in points:
            await kill_when(args, out, state, count)
        code = await run_cli(args)
        counters = emu.counters
    assert code == 0
    rows = manifest(out)
    assert len(rows) == n
    assert len({r["key"] for r in rows}) == n
    assert counters.runs_created == n  # exactly one run per item, whatever the kills
    assert sum(Decimal(r["cost_usd"]) for r in rows) == counters.billed_usd


async def test_adding_prompts_generates_only_the_new_ones(tmp_path: Path) -> None:
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        out = tmp_path / "out"
        inp = prompts_file(tmp_path, 5)
        assert await run_cli(cli_args(inp, out, emu.url)) == 0
        with inp.open("a") as fh:
            fh.write("one more prompt\nand another\n")
        assert await run_cli(cli_args(inp, out, emu.url)) == 0
        assert emu.counters.runs_created == 7
    assert len(manifest(out)) == 7


@pytest.mark.parametrize("problem", ["malformed", "unreadable_image", "huge_image", "no_key"])
async def test_bad_input_is_one_clear_line_and_no_request(
    tmp_path: Path,
    problem: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RUNFLOW_API_KEY", raising=False)
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        if problem == "malformed":
            inp = tmp_path / "p.jsonl"
            inp.write_text('{"prompt": "ok"}\n{"prompt": \n')
            argv = cli_args(inp, out, emu.url)
        elif problem == "no_key":
            argv = cli_args(prompts_file(tmp_path, 2), out, emu.url)
            argv.remove("--api-key")
            argv.remove(API_KEY)
        else:
            image = tmp_path / "in.png"
            if problem == "huge_image":
                image.write_bytes(b"\x89PNG")
                os.truncate(image, 50 * 1024 * 1024 + 1)
            inp = tmp_path / "jobs.jsonl"
            line = {"prompt": "x", "image_urls": [str(image)]}
            inp.write_text(json.dumps(line) + "\n")
            argv = ["edit", *cli_args(inp, out, emu.url)[1:]]
        code = await run_cli(argv)
        requests = sum(emu.counters.requests_by_route.values())
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert requests == 0
    assert len(err) == 1
    assert err[0].startswith("runflow-async: ")
    expected = {"malformed": "line 2", "unreadable_image": "No such file",
                "huge_image": "50 MiB", "no_key": "RUNFLOW_API_KEY"}[problem]  # fmt: skip
    assert expected in err[0]


async def test_downloads_never_carry_the_key_and_survive_an_expired_url(tmp_path: Path) -> None:
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        emu.faults.next("file", Fault.status(403, code="URL_EXPIRED"))
        out = tmp_path / "out"
        assert await run_cli(cli_args(prompts_file(tmp_path, 3), out, emu.url)) == 0
        counters = emu.counters
    assert counters.credentials_on_presigned == 0
    assert counters.faults_injected["status_403"] == 1
    assert counters.requests_by_route["file"] == 4  # one retried after a fresh read
    assert len(manifest(out)) == 3


async def test_the_folder_loads_with_the_datasets_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        out = tmp_path / "out"
        assert await run_cli(cli_args(prompts_file(tmp_path, 6), out, emu.url)) == 0
    import datasets  # heavy: imported only here

    def load() -> Any:
        return datasets.load_dataset(
            "imagefolder", data_dir=str(out), split="train", cache_dir=str(out.parent / "hf-cache")
        )

    table = await anyio.to_thread.run_sync(load)
    rows = {r["file_name"]: r for r in manifest(out)}
    assert table.num_rows == len(rows) == 6
    for record in table:
        row = next(r for r in rows.values() if r["run_id"] == record["run_id"])
        assert record["prompt"] == row["prompt"]
        assert record["image"].size == (row["width"], row["height"]) == (64, 64)
        assert record["cost_usd"] == row["cost_usd"]


async def test_estimate_and_status_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = prompts_file(tmp_path, 4)
    assert await run_cli(["estimate", str(inp), "--image-size", "square_hd", "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)
    assert estimate["total_usd"] == "0.024000"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        out = tmp_path / "out"
        assert await run_cli(cli_args(inp, out, emu.url)) == 0
    capsys.readouterr()
    assert await run_cli(["status", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["succeeded"] == 4
    assert await run_cli(["status", str(tmp_path / "nowhere")]) == 2


async def test_without_a_terminal_and_without_yes_it_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        argv = cli_args(prompts_file(tmp_path, 2), tmp_path / "out", emu.url)
        argv.remove("--yes")
        assert await run_cli(argv) == 2
        assert await run_cli([*argv, "--max-cost", "1"]) == 0  # within budget: no question
        assert emu.counters.runs_created == 2
    assert "--yes" in capsys.readouterr().err


async def test_edit_dataset_uploads_local_images_and_bills_them_by_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    local = tmp_path / "photo.png"
    Image.new("RGB", (512, 256), (10, 120, 200)).save(local)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"prompt": "make it night", "image_urls": [str(local)], "metadata": {"a": 1}})
        + "\n"
        + json.dumps({"prompt": "add fog", "image_urls": ["photo.png"], "num_images": 2})
        + "\n"
    )
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        argv = ["edit", *cli_args(jobs, out, emu.url, "--json")[1:]]
        argv[argv.index("--image-size") : argv.index("--image-size") + 2] = []
        assert await run_cli(argv) == 0
        counters = emu.counters
    summary = json.loads(capsys.readouterr().out)
    assert summary["succeeded"] == 2
    assert summary["images"] == 3
    assert counters.requests_by_route["upload_put"] == 2
    assert counters.credentials_on_presigned == 0
    rows = manifest(out)
    assert {(r["width"], r["height"]) for r in rows} == {(512, 256)}  # output follows the input
    assert json.loads(rows[0]["metadata"]) in ({"a": 1}, {})
    # 512x256 input = 0.125 MP, same-size output: (0.125 + 0.125) x $0.011, then 0.125 + 2 x 0.125.
    assert counters.billed_usd == Decimal("0.002750") + Decimal("0.004125")
    assert sum(Decimal(r["cost_usd"]) for r in rows) == counters.billed_usd
    # The reservations are the confirmed estimates, local images measured (not
    # assumed 1 MP, which would give $0.022 and $0.033).
    from runflow_async._dataset.journal import Journal

    with Journal.open(out) as journal:
        reserved = {e.estimate_usd for e in journal.items()}
    assert reserved == {Decimal("0.002750"), Decimal("0.004125")}


async def test_the_embedded_emulator_runs_a_whole_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = prompts_file(tmp_path, 3)
    out = tmp_path / "out"
    argv = ["generate", str(inp), "--out", str(out), "--emulator", "--yes", "--json"]
    assert await run_cli(argv) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3


async def test_an_uncertain_create_is_reconciled_on_the_next_run(tmp_path: Path) -> None:
    inp = prompts_file(tmp_path, 4)
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        # The run is stored but its answer is lost, and the lookup fails too (by
        # client_ref, then by the newest runs): the item must stay "submitting",
        # never be created a second time.
        emu.faults.next("create", Fault.lost_response(502))
        emu.faults.next("list_runs", Fault.status(400), times=2)
        first = await run_cli(cli_args(inp, out, emu.url, "--concurrency", "1"))
        assert journal_counts(out).get("submitting") == 1
        assert emu.counters.runs_created == 4  # the lost one exists on the server
        emu.faults.clear()
        second = await run_cli(cli_args(inp, out, emu.url))
        counters = emu.counters
    assert (first, second) == (1, 0)
    assert counters.runs_created == 4
    assert len(manifest(out)) == 4


class Terminal(io.StringIO):
    """A stdin that says it is a terminal, with the user's answer in it."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "code", "created"), [("y\n", 0, 2), ("n\n", 1, 0)])
async def test_on_a_terminal_the_user_is_asked_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str, code: int, created: int
) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(answer))
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        argv = cli_args(prompts_file(tmp_path, 2), tmp_path / "out", emu.url)
        argv.remove("--yes")
        assert await run_cli(argv) == code
        assert emu.counters.runs_created == created


async def test_ctrl_c_exits_130_and_the_next_run_finishes_the_job(tmp_path: Path) -> None:
    n = 40
    inp = prompts_file(tmp_path, n)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=0.01, median_duration=5.0, seed=4
    ) as emu:
        args = cli_args(inp, out, emu.url, "--json", scale=0.01)
        quiet = subprocess.DEVNULL
        proc = await anyio.open_process(
            [sys.executable, "-m", "runflow_async", *args],
            env=env, stdin=quiet, stdout=subprocess.PIPE, stderr=quiet,
        )  # fmt: skip
        with anyio.fail_after(60):
            while journal_counts(out).get("succeeded", 0) < 5:
                assert proc.returncode is None, "finished before the interrupt"
                await anyio.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        assert proc.stdout is not None
        printed = (await proc.stdout.receive()).decode()
        await proc.wait()
        assert proc.returncode == 130
        assert json.loads(printed)["interrupted"] is True
        assert 5 <= len(manifest(out)) < n  # the folder matches what finished
        assert await run_cli(cli_args(inp, out, emu.url, scale=0.01)) == 0
        assert emu.counters.runs_created == n
    assert len(manifest(out)) == n


def test_progress_lines_live_and_plain() -> None:
    from runflow_async._cli.progress import ProgressPrinter
    from runflow_async._dataset.pipeline import DatasetProgress

    progress = DatasetProgress(total=10, done=4, failed=1, in_flight=3)
    assert ProgressPrinter.line(progress).startswith("4/10 done  1 failed  5 pending  3 running")
    live, plain = io.StringIO(), io.StringIO()
    for stream, is_live in ((live, True), (plain, False)):
        printer = ProgressPrinter(stream, live=is_live, every=0.0, width=80)
        printer(progress)
        printer.close()
    assert live.getvalue().startswith("\r")
    assert live.getvalue().endswith("\n")
    assert plain.getvalue().count("\n") == 1
    assert DatasetProgress(total=3).eta_seconds() is None


async def test_a_budget_covers_the_whole_folder_across_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = prompts_file(tmp_path, 4)  # 64x64 images: $0.000023 each
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        assert await run_cli(cli_args(inp, out, emu.url)) == 0
        with inp.open("a") as fh:
            fh.write("".join(f"one more {i}\n" for i in range(4)))
        capsys.readouterr()
        # $0.000092 already spent; a $0.000144 cap leaves room for two more only
        # (the second is reserved at the 1.25 margin: $0.000115 + $0.00002875).
        code = await run_cli(cli_args(inp, out, emu.url, "--max-cost", "0.000144"))
        counters = emu.counters
    assert "4 of 8 items already finished" in capsys.readouterr().err
    assert code == 1
    assert counters.runs_created == 6
    assert counters.billed_usd <= Decimal("0.000144")
    assert len(manifest(out)) == 6


async def test_a_cancelled_dataset_ends_cleanly_and_resumes(tmp_path: Path) -> None:
    # Ctrl-C under asyncio.run is a cancellation: the pipeline must end without
    # an ExceptionGroup (its outcome reader must not outlive the engine's stream).
    from runflow_async._dataset.input import Defaults, read_generate_file
    from runflow_async._dataset.pipeline import run_dataset
    from tests.conftest import make_client

    n = 200
    items = read_generate_file(prompts_file(tmp_path, n), Defaults())
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001, seed=8) as emu:
        async with make_client(emu.url) as client:
            # As the CLI's SIGINT handler does: cancel the one task, natively.
            task = asyncio.get_running_loop().create_task(
                run_dataset(client, out, items, concurrency=32, on_progress=lambda p: stop(p))
            )

            def stop(p: Any) -> None:
                if p.done >= 10 and not task.cancelling():
                    task.cancel()

            with pytest.raises(asyncio.CancelledError):
                await task
            assert 10 <= len(manifest(out)) < n
            summary = await run_dataset(client, out, items, concurrency=32)
        assert summary.succeeded == n
        assert emu.counters.runs_created == n


async def test_a_succeeded_run_shown_without_images_is_collected_not_recreated(
    tmp_path: Path,
) -> None:
    # The server bills the runs but keeps reading them back with "output": null:
    # no item is "done" without its images; the next run reads them again (by
    # run id, never creating them twice) and gets every image.
    from runflow_async._dataset.input import Defaults, read_generate_file
    from runflow_async._dataset.pipeline import run_dataset
    from tests.conftest import make_client

    n = 6
    items = read_generate_file(prompts_file(tmp_path, n), Defaults())
    out = tmp_path / "out"
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=0.001, seed=8) as emu,
        make_client(emu.url) as client,
    ):
        for route in ("get_run", "list_runs"):
            emu.faults.next(route, Fault.null_output(), times=10_000)
        first = await run_dataset(client, out, items, concurrency=n)
        assert (first.succeeded, first.failed, first.pending) == (0, 0, n)
        assert manifest(out) == []
        emu.faults.clear()
        second = await run_dataset(client, out, items, concurrency=n)
        created = emu.counters.runs_created
    assert second.succeeded == n
    assert len(manifest(out)) == n
    assert created == n


async def test_a_wrong_key_stops_at_once_and_the_rerun_with_the_right_one_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 100
    inp = prompts_file(tmp_path, n)
    out = tmp_path / "out"
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        wrong = cli_args(inp, out, emu.url, "--json")
        wrong[wrong.index(API_KEY)] = "rf_wrong_key_000000000000"
        assert await run_cli(wrong) == 1
        refused = emu.counters.requests_by_route["create"]
        report = json.loads(capsys.readouterr().out)
        assert report["not_finished"] == {"authentication": n}
        assert refused <= 16  # stopped after the first 401, within the window
        assert await run_cli(cli_args(inp, out, emu.url)) == 0
        assert emu.counters.runs_created == n
    assert len(manifest(out)) == n


async def test_an_unreachable_api_leaves_items_to_submit_on_the_next_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    n = 10
    inp = prompts_file(tmp_path, n)
    out = tmp_path / "out"
    assert await run_cli(cli_args(inp, out, dead, "--json")) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == 0
    assert report["not_finished"] == {"server": n}
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        assert await run_cli(cli_args(inp, out, emu.url)) == 0
        assert emu.counters.runs_created == n
    assert len(manifest(out)) == n


async def test_with_a_base_seed_inserting_a_line_bills_only_that_line(tmp_path: Path) -> None:
    inp = tmp_path / "prompts.txt"
    out = tmp_path / "out"
    lines = [f"prompt {i}" for i in range(8)]
    inp.write_text("\n".join(lines) + "\n")
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE) as emu:
        assert await run_cli(cli_args(inp, out, emu.url, "--seed", "42")) == 0
        seeds = {row["prompt"]: row["seed"] for row in manifest(out)}
        inp.write_text("\n".join(["a new first line", *lines]) + "\n")
        assert await run_cli(cli_args(inp, out, emu.url, "--seed", "42")) == 0
        assert emu.counters.runs_created == len(lines) + 1
    rows = {row["prompt"]: row["seed"] for row in manifest(out)}
    assert {p: rows[p] for p in lines} == seeds  # no earlier line's seed moved
