"""The HTTP hot path does only what it must (issue 12); counted, never timed.

A successful read never enters the retry loop; a poll answer that is not
terminal builds no model; a create's body is serialised once whatever the
attempts; per-run polling learns run durations and reads near the expected
finish.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

import runflow_async._http.create as create_module
import runflow_async._http.runs as runs_module
import runflow_async._http.transport as transport_module
from runflow_async import GenerateRequest, PollPolicy, RetryPolicy, Run, RunflowClient
from runflow_async._waiting.durations import LEARNED_AFTER, QUANTILES, DurationStats
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY, Handler, make_client

Start = Callable[[Handler], Awaitable[str]]
SCALE = 0.002


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any, str], list[int]]:
    """Wrap ``module.name`` so that each call is counted (the wrapped code still runs)."""

    def count(module: Any, name: str) -> list[int]:
        calls = [0]
        real = getattr(module, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
        return calls

    return count


async def test_a_successful_read_never_enters_the_retry_loop(
    inline_server: Start, counted: Callable[[Any, str], list[int]]
) -> None:
    entered = counted(transport_module, "with_retries")
    failures = [1]  # the last read is answered 503 once

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/flaky") and failures[0]:
            failures[0] -= 1
            return web.json_response({"code": "UNAVAILABLE"}, status=503)
        return web.json_response({"id": request.path.rsplit("/", 1)[-1], "status_code": "running"})

    url = await inline_server(handler)
    async with make_client(url) as client:
        for _ in range(5):
            assert (await client.get_run("r1")).status_code == "running"
        assert entered[0] == 0
        assert (await client.get_run("flaky")).id == "flaky"
    assert entered[0] == 1  # a retryable status, and only then


async def test_a_poll_answer_that_is_not_terminal_builds_no_model(
    counted: Callable[[Any, str], list[int]],
) -> None:
    built = counted(runs_module, "parse_response")
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE, median_duration=5.0) as emu,
        make_client_scaled(emu.url) as client,
    ):
        run = await client.submit(GenerateRequest(prompt="a"))
        final = await client.wait(run.id)
        reads = emu.counters.requests_by_route["get_run"]
    assert final.succeeded
    assert reads > 1  # it was read while running
    assert built[0] == 1  # only the finished answer became a Run


async def test_a_create_body_is_serialised_once_whatever_the_attempts(
    inline_server: Start, counted: Callable[[Any, str], list[int]]
) -> None:
    dumped = counted(create_module, "dump_json")
    bodies: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.read())
        if len(bodies) < 3:  # provably not created: sent again
            return web.json_response({"code": "RATE_LIMITED"}, status=429)
        ref = (await request.json())["client_ref"]
        return web.json_response(
            {"id": "run-1", "client_ref": ref, "status_code": "queued"}, status=201
        )

    url = await inline_server(handler)
    async with make_client_scaled(url) as client:
        run = await client.submit(GenerateRequest(prompt="once"))
    assert run.id == "run-1"
    assert len(bodies) == 3
    assert len(set(bodies)) == 1
    assert dumped[0] == 1


def make_client_scaled(
    url: str, *, wait_strategy: Any = "auto", scale: float = SCALE
) -> RunflowClient:
    return RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=scale),
        poll=PollPolicy(time_scale=scale),
        wait_strategy=wait_strategy,
    )


async def test_per_run_polling_learns_durations_and_reads_near_the_finish() -> None:
    # Every run takes 20 s: before anything is learned a read comes after 2 s,
    # then at growing gaps (about ten reads a run); once learned, one or two.
    options: dict[str, Any] = {"median_duration": 20.0, "duration_sigma": 0.0, "seed": 5}
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=0.005, **options) as emu,
        make_client_scaled(emu.url, wait_strategy="per_run", scale=0.005) as client,
    ):
        async with client.batch(max_concurrency=LEARNED_AFTER) as batch:
            batch.submit_many(GenerateRequest(prompt=f"learn {i}") for i in range(LEARNED_AFTER))
        assert all(o.ok for o in await batch.gather())
        learning = emu.counters.requests_by_route["get_run"]
        async with client.batch(max_concurrency=10) as batch:
            batch.submit_many(GenerateRequest(prompt=f"learned {i}") for i in range(20))
        assert all(o.ok for o in await batch.gather())
        learned = emu.counters.requests_by_route["get_run"] - learning
    # Counts only: a loaded machine delays reads (the loop lags, so fewer fit in a
    # run), never brings them forward. So the lower bound on the learning phase is
    # loose (about ten reads a run when idle, four seen on a loaded CI machine),
    # and the learned phase's upper bound is the sharp one.
    assert learned <= 2 * 20  # once learned: one or two reads a run
    assert learning >= 2 * LEARNED_AFTER  # before: reads while the runs still ran
    assert learned / 20 < learning / LEARNED_AFTER  # the default guess (2 s) was far off


def _stats(durations: Iterator[float]) -> DurationStats:
    stats = DurationStats(default=2.0)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for seconds in durations:
        stats.add(Run(id="r", created_at=start, completed_at=start + timedelta(seconds=seconds)))
    return stats


def test_the_schedule_reads_at_the_learned_quantiles_then_grows() -> None:
    stats = _stats(iter([float(s) for s in range(1, 81)] * 2))  # 1..80 s, evenly
    policy = PollPolicy(max_interval=60.0)
    gaps = stats.schedule(policy)
    marks = [next(gaps) for _ in QUANTILES]
    # (The quantiles are recomputed every 16th run, so the latest run or so may be missing.)
    reads_at = [sum(marks[: i + 1]) for i in range(len(marks))]
    assert reads_at == pytest.approx([41, 57, 69, 75, 78], abs=1.01)
    later = [next(gaps) for _ in range(3)]
    assert later[0] < later[1] < later[2] <= policy.max_interval
    # A run already 60 s along skips the quantiles it is past.
    assert next(stats.schedule(policy, elapsed=60.0)) == pytest.approx(9, abs=1.01)


def test_before_enough_runs_the_schedule_reads_at_the_median() -> None:
    stats = _stats(iter([4.0] * (LEARNED_AFTER - 1)))
    gaps = stats.schedule(PollPolicy())
    assert next(gaps) == 4.0
    assert next(gaps) == pytest.approx(0.6)  # 15% of the median, then growing
