"""Late commits (a run stored seconds after its create), the key modes, and wrong run ids."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
import pytest

from runflow_async.emulator import EmulatorConfig, EmulatorCounters, Fault, FaultRates, FaultScript
from runflow_async.emulator._cli import _config, add_emulator_command
from tests.emulator.emulator_support import AUTH, FROZEN, GENERATE, Harness, running

URL = f"/v1/models/{GENERATE}/runs"


def body(client_ref: str = "rfa-1", prompt: str = "a red fox") -> dict[str, Any]:
    return {"input": {"prompt": prompt}, "client_ref": client_ref}


async def post(h: Harness, data: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    async with h.http.post(URL, json=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def listed(h: Harness, client_ref: str = "rfa-1") -> list[str]:
    page = await h.get("/v1/runs", params={"q": f'client_ref:"{client_ref}"'})
    return [item["id"] for item in page["items"]]


async def test_a_late_commit_drops_the_answer_and_stores_the_run_later() -> None:
    async with running(**FROZEN) as h:
        h.emu.faults.next("create", Fault.late_commit(3.0))
        with pytest.raises(aiohttp.ClientError):
            await post(h, body())
        before = h.emu.counters
        hidden = await listed(h)
        h.emu.advance(2.9)
        still = await listed(h)
        h.emu.advance(0.2)
        shown = await listed(h)
        after = h.emu.counters
    assert (before.runs_created, before.commits_pending) == (0, 1)
    assert hidden == still == []
    assert (after.runs_created, after.commits_pending) == (1, 0)
    assert len(shown) == 1
    assert after.faults_injected == {"late_commit": 1}


async def test_a_late_commit_is_read_by_id_at_once_and_listed_after_the_lag() -> None:
    async with running(**FROZEN, list_lag=2.0) as h:
        h.emu.faults.next("create", Fault.late_commit(3.0))
        with pytest.raises(aiohttp.ClientError):
            await post(h, body())
        assert h.emu.runs() == []
        h.emu.advance(3.1)
        (run,) = h.emu.runs()
        read = await h.get(f"/v1/runs/{run['id']}")
        lagging = await listed(h)
        h.emu.advance(2.0)
        shown = await listed(h)
    assert read["client_ref"] == "rfa-1"
    assert lagging == []
    assert shown == [run["id"]]


async def held(h: Harness, key: str, data: dict[str, Any]) -> asyncio.Task[tuple[int, Any]]:
    """Send a create that commits 3 s late and answers then; return once it is received."""
    h.emu.faults.next("create", Fault.late_commit(3.0, answer=True))
    task = asyncio.create_task(post(h, data, key))
    for _ in range(1000):
        if h.emu.counters.commits_pending:
            return task
        await asyncio.sleep(0.001)
    raise AssertionError("the create never arrived")


async def test_at_receipt_a_repeat_waits_for_the_first_and_gets_its_run() -> None:
    async with running(**FROZEN) as h:
        first = await held(h, "k", body())
        repeat = asyncio.create_task(post(h, body(), "k"))
        await asyncio.sleep(0.02)
        assert not repeat.done()
        conflict = await post(h, body(prompt="another"), "k")
        h.emu.advance(3.1)
        (status, run), (again, replay) = await first, await repeat
        counters = h.emu.counters
    assert (status, again) == (201, 201)
    assert replay == run
    assert conflict[0] == 409
    assert counters.runs_created == 1
    assert counters.idempotent_replays == 1


async def test_at_commit_a_repeat_before_the_commit_makes_a_second_run() -> None:
    async with running(**FROZEN, idempotency_mode="at_commit") as h:
        first = await held(h, "k", body())
        status, second = await post(h, body(), "k")
        h.emu.advance(3.1)
        _, late = await first
        _, third = await post(h, body(), "k")  # both stored now: the first stored wins
        runs = [run["id"] for run in h.emu.runs()]
    assert status == 201
    assert late["id"] != second["id"]
    assert runs == [second["id"], late["id"]]
    assert third["id"] == second["id"]


async def test_an_ignored_key_makes_a_run_per_create() -> None:
    async with running(**FROZEN, idempotency_mode="ignored") as h:
        first = await held(h, "k", body())
        await post(h, body(), "k")
        h.emu.advance(3.1)
        await first
        await post(h, body(), "k")
        assert h.emu.counters.runs_created == 3


async def test_two_runs_under_one_key_are_evicted_without_confusion() -> None:
    async with running(**FROZEN, idempotency_mode="at_commit", retain_runs=1) as h:
        first = await held(h, "k", body())
        _, early = await post(h, body(), "k")  # stored first: the key maps to it
        h.emu.advance(3.1)
        _, late = await first
        h.emu.advance(5000.0)  # both ended: the early one is forgotten, and its key
        kept = [run["id"] for run in h.emu.runs()]
        _, other = await post(h, body("rfa-2"))
        h.emu.advance(5000.0)  # the late one is forgotten too; the key was not its own
        left = [run["id"] for run in h.emu.runs()]
        _, fresh = await post(h, body(), "k")
    assert kept == [late["id"]]
    assert left == [other["id"]]
    assert fresh["id"] not in (early["id"], late["id"])


async def test_late_commits_are_drawn_at_random_on_creates_only() -> None:
    rates = FaultRates(
        rate_late_commit=1.0, late_commit_seconds=1.0, applies_to=frozenset({"create", "list_runs"})
    )
    async with running(**FROZEN, faults=rates) as h:
        with pytest.raises(aiohttp.ClientError):
            await post(h, body())
        listing = await listed(h)
        h.emu.advance(1.0)
        counters = h.emu.counters
    assert listing == []
    assert counters.runs_created == 1
    assert counters.faults_injected == {"late_commit": 1}


async def test_a_late_commit_with_a_callback_sends_it_when_the_run_ends() -> None:
    async with running(time_scale=0.001, median_duration=1.0, duration_sigma=0.0) as h:
        h.emu.faults.next("create", Fault.late_commit(1.0, answer=True))
        data = {**body(), "callback_url": "http://127.0.0.1:9/hook"}
        status, run = await post(h, data)
        for _ in range(2000):
            if h.emu.counters.callbacks_sent:
                break
            await asyncio.sleep(0.001)
        counters = h.emu.counters
    assert status == 201
    assert run["id"]
    assert counters.callbacks_sent >= 1


@pytest.mark.parametrize(
    ("run_id", "shown"), [("a/../b?c", "a/../b?c"), ("", ""), (42, 42), (None, "absent")]
)
async def test_a_bad_run_id_answer_hides_the_real_one(run_id: str | int | None, shown: Any) -> None:
    async with running(**FROZEN) as h:
        h.emu.faults.next("create", Fault.bad_run_id(run_id))
        status, answer = await post(h, body())
        (run,) = h.emu.runs()
    assert status == 201
    assert answer.get("id", "absent") == shown
    assert answer["client_ref"] == "rfa-1"
    assert run["id"] != shown


async def test_a_bad_run_id_leaves_a_refused_create_alone() -> None:
    async with running(**FROZEN) as h:
        h.emu.faults.next("create", Fault.bad_run_id("x/y"))
        status, answer = await post(h, {"input": {}})
    assert status == 422
    assert answer["code"] == "VALIDATION_ERROR"


async def test_a_reused_run_id_answers_the_previous_create_s_run() -> None:
    async with running(**FROZEN) as h:
        h.emu.faults.next("create", Fault.reused_run_id())
        _, first = await post(h, body("rfa-1"))  # no previous run: answered as usual
        h.emu.faults.next("create", Fault.reused_run_id())
        _, second = await post(h, body("rfa-2"))
        runs = h.emu.runs()
    assert second["id"] == first["id"]
    assert second["client_ref"] == "rfa-2"
    assert [run["client_ref"] for run in runs] == ["rfa-1", "rfa-2"]
    assert runs[1]["id"] != first["id"]


async def test_a_list_that_ignores_the_filter_lists_every_run() -> None:
    async with running(**FROZEN, list_ignores_filter=True) as h:
        await post(h, body("rfa-1"))
        await post(h, body("rfa-2"))
        assert len(await listed(h, "rfa-1")) == 2


def test_late_commit_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="late_commit_seconds"):
        FaultRates(late_commit_seconds=0)
    with pytest.raises(ValueError, match="rate_late_commit"):
        FaultRates(rate_late_commit=1.5)
    with pytest.raises(ValueError, match="add up to"):
        FaultRates(rate_late_commit=0.6, rate_drop=0.6)
    with pytest.raises(ValueError, match="positive"):
        Fault.late_commit(0)
    with pytest.raises(ValueError, match="idempotency_mode"):
        EmulatorConfig(idempotency_mode="sometimes")
    with pytest.raises(ValueError, match="contradicts"):
        EmulatorConfig(honour_idempotency_key=False, idempotency_mode="at_commit")
    for fault in (Fault.late_commit(), Fault.bad_run_id("x"), Fault.reused_run_id()):
        with pytest.raises(ValueError, match="only applies to the create route"):
            FaultScript().next("get_run", fault)
    assert EmulatorConfig(honour_idempotency_key=False).key_mode == "ignored"
    assert EmulatorConfig(idempotency_mode="at_commit").key_mode == "at_commit"


def test_the_flags_reach_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_emulator_command(parser.add_subparsers())
    flags = ["emulator", "--rate-late-commit", "0.2", "--late-commit-seconds", "4"]
    flags += ["--idempotency-mode", "at_commit", "--list-ignores-filter"]
    config = _config(parser.parse_args(flags))
    assert config.faults.rate_late_commit == 0.2
    assert config.faults.late_commit_seconds == 4.0
    assert config.idempotency_mode == "at_commit"
    assert config.list_ignores_filter


def test_pending_commits_survive_the_counters_round_trip() -> None:
    counters = EmulatorCounters(
        runs_created=1,
        runs_billed=0,
        billed_usd=0,  # type: ignore[arg-type]
        runs_failed=0,
        idempotent_replays=0,
        max_in_flight=1,
        in_flight=1,
        requests_by_route={},
        responses_by_status={},
        faults_injected={},
        commits_pending=2,
    )
    assert EmulatorCounters.from_json(counters.to_json()).commits_pending == 2
