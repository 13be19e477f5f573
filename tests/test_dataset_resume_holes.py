"""Issue 11, resume holes: unknown costs, one-lookup reconciliation, failures.jsonl at a kill.

* A run whose cost the server does not report (or reports only later) counts
  against ``--max-cost`` at the estimate it was reserved at, on resume too.
* A create a dead process may have sent is looked up over the visibility
  window (one window for the whole resume) before it is sent again.
* ``failures.jsonl`` lists failures as they happen, so a ``kill -9`` leaves it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from runflow_async import GenerateRequest, PollPolicy, RetryPolicy, RunflowClient
from runflow_async._batch.hooks import WorkItem
from runflow_async._dataset.input import Defaults, read_generate_file
from runflow_async._dataset.journal import ItemState, Journal
from runflow_async._dataset.pipeline import run_dataset
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY, TIME_SCALE, make_client
from tests.test_dataset_cli import ROOT, cli_args, failures, journal_counts, prompts_file, run_cli

# -- 2. resume trusts one lookup ----------------------------------------------


def journal_with_lost_creates(out: Path, refs: dict[str, str]) -> None:
    """What a process killed mid-create leaves: items submitting, no run id."""
    out.mkdir(parents=True, exist_ok=True)
    with Journal.open(out) as journal:
        journal.set_meta("dataset_id", "d1")
        journal.add_items((key, n, "generate", Decimal("0.01")) for n, key in enumerate(refs))
        for key, ref in refs.items():
            journal.mark_submitting(key, ref)


async def test_a_resume_finds_runs_the_list_does_not_show_yet(tmp_path: Path) -> None:
    # The dead process's creates were stored, but the list lags and the server
    # ignores Idempotency-Key: one empty lookup, then a resend, bills twice.
    n = 6
    items = read_generate_file(prompts_file(tmp_path, n), Defaults())
    refs = {item.key: f"rfa-d1-{item.key}" for item in items}
    out = tmp_path / "out"
    journal_with_lost_creates(out, refs)
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, list_lag=1e6,
        honour_idempotency_key=False, seed=3,
    ) as emu:  # fmt: skip
        async with make_client(emu.url) as dead:
            for item in items:
                await dead.submit(item.request.model_copy(update={"client_ref": refs[item.key]}))

        async def list_catches_up() -> None:
            # Only once the resume has looked and missed: the list shows them.
            while emu.counters.requests_by_route.get("list_runs", 0) < 1:
                await anyio.sleep(0.001)
            emu.advance(1e6)

        # A wide floor, so that a busy machine's delays stay inside the window.
        retry = RetryPolicy(time_scale=TIME_SCALE, visibility_floor=1000.0, visibility_cap=1000.0)
        async with make_client(emu.url, retry=retry) as client, anyio.create_task_group() as tg:
            tg.start_soon(list_catches_up)
            summary = await run_dataset(client, out, items, concurrency=n)
        per_ref = Counter(run["client_ref"] for run in emu.runs())
    assert per_ref == dict.fromkeys(refs.values(), 1)  # each found, none created again
    assert summary.succeeded == n


async def test_a_create_that_never_arrived_is_sent_once_after_one_shared_window() -> None:
    # The runs truly do not exist: each is created, once, only after the window
    # (10 s, counted from the engine's start), and items resumed one after the
    # other do not each wait a window of their own.
    n = 6
    async with (
        Emulator(
            api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, honour_idempotency_key=False
        ) as emu,
        RunflowClient(
            API_KEY, base_url=emu.url, retry=RetryPolicy(time_scale=TIME_SCALE),
            poll=PollPolicy(time_scale=TIME_SCALE), wait_strategy="per_run",  # lists: lookups only
        ) as client,
    ):  # fmt: skip
        start = emu.report(limit=0)["now"]
        async with client.engine(max_concurrency=1) as engine:
            for i in range(n):
                request = GenerateRequest(prompt=f"p{i}", client_ref=f"ref-{i}")
                engine.submit(WorkItem(i, request, maybe_created=True))
            await engine.end_input()
            outcomes = [outcome async for outcome in engine.outcomes]
        lookups = emu.counters.requests_by_route["list_runs"]
        created = [run["created"] for run in emu.report()["runs"]]
        per_ref = Counter(run["client_ref"] for run in emu.runs())
    assert all(outcome.ok for outcome in outcomes)
    assert per_ref == {f"ref-{i}": 1 for i in range(n)}
    assert min(created) >= start + 10.0  # not one create before the window passed
    assert lookups < 2 * n  # after the first window, each item looks up once


async def test_a_resume_that_cannot_prove_absence_never_sends(tmp_path: Path) -> None:
    # The list ignores the client_ref filter (it answers with another run): the
    # items end outcome-unknown, listed, their money held, and nothing is sent.
    n = 3
    items = read_generate_file(prompts_file(tmp_path, n), Defaults())
    refs = {item.key: f"rfa-d1-{item.key}" for item in items}
    out = tmp_path / "out"
    journal_with_lost_creates(out, refs)
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, list_ignores_filter=True)
        as emu,
        make_client(emu.url) as client,
    ):  # fmt: skip
        await client.submit(GenerateRequest(prompt="someone else's run"))
        summary = await run_dataset(client, out, items, concurrency=n)
        created = emu.counters.runs_created
    assert created == 1  # the other run only: the filter is ignored, absence unprovable
    assert summary.reasons == {"outcome unknown": n}
    with Journal.open(out) as journal:
        assert {e.state for e in journal.items()} == {ItemState.SUBMITTING}
