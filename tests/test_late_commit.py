"""Issue 11: lagging lists and late commits never make a second run of one item.

An empty lookup right after an ambiguous create is no proof: the client looks
again over a visibility window and resends (same key) only once it passed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest
from aiohttp import web

from runflow_async import (
    CreateOutcomeUnknownError,
    GenerateRequest,
    InsufficientCreditError,
    NotSubmittedError,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
)
from runflow_async._core.clock import Clock
from runflow_async._http.visibility import LookupFailed, Visibility, search
from runflow_async.emulator import Emulator, Fault, FaultRates
from tests.conftest import API_KEY

SCALE = 0.002  # a 10 s window takes 20 ms
# The batch tests run slower, so that a busy machine's own delays (a few ms per
# request) stay small next to a 2-3 s lag: 1 emulated second is 10 ms.
BATCH_SCALE = 0.01
CREATES = frozenset({"create"})


def requests(n: int) -> list[GenerateRequest]:
    return [GenerateRequest(prompt=f"prompt {i}", image_size="square") for i in range(n)]


def client_for(url: str, *, scale: float = SCALE, **policy: Any) -> RunflowClient:
    return RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=scale, **policy),
        poll=PollPolicy(time_scale=scale),
        max_connections=64,
    )


def emulator(**overrides: Any) -> Emulator:
    options: dict[str, Any] = {"time_scale": SCALE, "median_duration": 2.0, "seed": 11}
    options.update(overrides)
    return Emulator(api_keys=frozenset({API_KEY}), **options)


def runs_per_item(emu: Emulator) -> Counter[str]:
    emu.advance(60.0)  # every late commit is stored by now
    assert emu.counters.commits_pending == 0
    return Counter(run["client_ref"] for run in emu.runs())


async def test_a_lagging_list_with_ambiguous_creates_and_an_ignored_key_bills_each_item_once() -> (
    None
):
    # The server: the list lags 2 s, 20% of creates lose their answer,
    # the key is ignored. A lookup at 0-1 s misses; resending then bills twice.
    faults = FaultRates(rate_lost_create=0.2, applies_to=CREATES)
    async with (
        emulator(
            list_lag=2.0, honour_idempotency_key=False, faults=faults, time_scale=BATCH_SCALE
        ) as emu,
        client_for(emu.url, scale=BATCH_SCALE) as client,
    ):
        async with client.batch(max_concurrency=50) as batch:
            batch.submit_many(requests(200))
        outcomes = await batch.gather()
        counters = emu.counters
        per_item = runs_per_item(emu)
    assert counters.faults_injected["lost_response"] >= 20
    assert all(o.ok for o in outcomes)
    assert counters.runs_created == 200
    assert max(per_item.values()) == 1


@pytest.mark.parametrize("mode", ["at_receipt", "at_commit", "ignored"])
async def test_runs_stored_3s_late_are_adopted_never_made_twice(mode: str) -> None:
    # The server stores a run 3 s after receiving the create and drops the
    # connection at once. at_receipt dedupes a resend, so it never doubled;
    # at_commit and ignored do not.
    faults = FaultRates(rate_late_commit=0.1, late_commit_seconds=3.0, applies_to=CREATES)
    async with (
        emulator(idempotency_mode=mode, faults=faults, time_scale=BATCH_SCALE) as emu,
        client_for(emu.url, scale=BATCH_SCALE) as client,
    ):
        async with client.batch(max_concurrency=50) as batch:
            batch.submit_many(requests(200))
        outcomes = await batch.gather()
        per_item = runs_per_item(emu)
        counters = emu.counters
    assert counters.faults_injected["late_commit"] >= 10
    assert [item for item, runs in per_item.items() if runs > 1] == []
    assert counters.runs_created == 200
    assert all(o.ok for o in outcomes)


async def test_a_server_that_ignores_the_filter_is_read_newest_first_and_never_resent() -> None:
    # The list lags 2 s: a lookup soon after the lost answer sees nothing at all
    # (not even other runs), which proves nothing. Looking on, the list shows
    # another item's run under our filter: the filter is ignored, so the lookup
    # reads the newest runs instead and finds the run there (issue 12).
    async with (
        emulator(list_lag=2.0, list_ignores_filter=True, honour_idempotency_key=False) as emu,
        client_for(emu.url) as client,
    ):
        await client.submit(requests(1)[0])
        emu.faults.next("create", Fault.lost_response(None))
        run = await client.submit(requests(2)[1])
        counters = emu.counters
        stored = emu.runs()
        forms = client._transport.visibility.forms
    assert counters.requests_by_route["create"] == 2
    assert counters.runs_created == 2
    assert (run.id, run.client_ref) == (stored[1]["id"], stored[1]["client_ref"])
    assert set(forms.refused) >= {"client_ref"}


async def test_an_ambiguous_create_resent_and_refused_402_stays_unknown_in_a_batch() -> None:
    # The list lags past the window: the lookups miss, the resend is answered 402.
    async with emulator(list_lag=500.0) as emu, client_for(emu.url) as client:
        emu.faults.next("create", Fault.lost_response())
        emu.faults.next("create", Fault.status(402, "INSUFFICIENT_CREDIT"))
        async with client.batch() as batch:
            batch.submit(requests(1)[0])
        (outcome,) = await batch.gather()
        runs = emu.runs()
    assert isinstance(outcome.error, CreateOutcomeUnknownError)
    assert isinstance(outcome.error.__cause__, InsufficientCreditError)
    assert batch.uncertain_client_refs == [runs[0]["client_ref"]]
    assert outcome.estimated_usd > 0


async def test_a_throttled_resend_given_up_after_an_ambiguous_attempt_stays_unknown() -> None:
    # Item 0's create loses its answer (it exists); while it looks over a long
    # window, item 1 is refused 402 and the batch stops. Item 0's resend is then
    # answered 429, and the stopped batch gives it up: it must stay unknown, its
    # money held, never "not submitted".
    async with (
        emulator(list_lag=5000.0, time_scale=0.001) as emu,
        client_for(emu.url, visibility_floor=100.0, scale=0.001) as client,
    ):
        emu.faults.next("create", Fault.lost_response())
        async with client.batch(max_concurrency=2) as batch:
            first = batch.submit(requests(1)[0])
            await wait_for_creates(emu, 1)
            emu.faults.next("create", Fault.status(402, "INSUFFICIENT_CREDIT"))
            second = batch.submit(requests(2)[1])
            await wait_for_creates(emu, 2)
            emu.faults.next("create", Fault.status(429), times=5)
        outcome, refused = await first.wait(), await second.wait()
        committed = batch._engine.snapshot().committed_usd
        assert emu.counters.requests_by_route["create"] >= 3
    assert isinstance(refused.error, NotSubmittedError)
    assert isinstance(outcome.error, CreateOutcomeUnknownError)
    assert batch.stop_reason == "insufficient_credit"
    assert len(batch.uncertain_client_refs) == 1
    assert committed >= outcome.estimated_usd > 0  # its money held, not given back


async def wait_for_creates(emu: Emulator, count: int) -> None:
    for _ in range(5000):
        if emu.counters.requests_by_route["create"] >= count:
            return
        await anyio.sleep(0.001)
    raise AssertionError(f"fewer than {count} creates arrived")


async def test_ambiguous_creates_found_late_widen_the_window() -> None:
    # Found after ~6 s (a late commit of 6 s): the next window is about twice that.
    async with emulator() as emu, client_for(emu.url) as client:
        emu.faults.next("create", Fault.late_commit(6.0))
        run = await client.submit(requests(1)[0])
        visibility = client._transport.visibility
        counters = emu.counters
        assert [r["id"] for r in emu.runs()] == [run.id]
    assert counters.requests_by_route["create"] == 1  # found, not resent
    assert visibility.largest >= 6.0
    assert visibility.window >= 12.0


async def test_the_list_poller_teaches_how_long_runs_take_to_show() -> None:
    async with emulator() as emu, client_for(emu.url) as client:
        async with client.batch(max_concurrency=10) as batch:
            batch.submit_many(requests(10))
        assert all(o.ok for o in await batch.gather())
        assert client._transport.visibility.largest > 0


def test_the_window_is_twice_the_longest_sighting_within_floor_and_cap() -> None:
    visibility = Visibility(RetryPolicy(visibility_floor=10.0, visibility_cap=120.0))
    assert visibility.window == 10.0
    visibility.observe(7.0)
    visibility.observe(3.0)
    assert visibility.window == 14.0
    visibility.observe(500.0)
    assert visibility.window == 120.0
    visibility.sighted("never-created", 1.0)  # not ours: ignored
    for n in range(10_001):
        visibility.created(f"run-{n}", 0.0)
    visibility.sighted("run-0", 1000.0)  # forgotten: the oldest went first
    visibility.sighted("run-10000", 600.0)
    assert visibility.largest == 600.0


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"visibility_floor": 20.0, "visibility_cap": 10.0}, "visibility_floor"),
        ({"visibility_floor": -1.0}, "visibility_floor"),
        ({"visibility_cap": float("inf")}, "finite"),
        ({"lookup_interval": 0.0}, "lookup_interval"),
    ],
)
def test_nonsensical_windows_are_refused(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**policy)


async def test_a_search_tolerates_failed_lookups_until_the_last_one() -> None:
    # A clock scaled to 0 does not wait: the gaps are counted, so it still ends.
    calls: list[int] = []

    async def find() -> str | None:
        calls.append(1)
        if len(calls) < 3:
            raise LookupFailed("a 503")
        return None

    visibility = Visibility(RetryPolicy(visibility_floor=10.0))
    clock = Clock(0)
    now = clock.now()
    found = await search(
        find, clock=clock, visibility=visibility, sent_at=now, failed_at=now, interval=0.25
    )
    assert found is None
    assert len(calls) == 7  # at 0, 0.25, 0.75, 1.75, 3.75, 7.75 and 10 s

    async def failing() -> str | None:
        raise LookupFailed("down")

    with pytest.raises(LookupFailed):
        await search(
            failing, clock=clock, visibility=visibility, sent_at=now, failed_at=now, interval=4.0
        )


async def test_a_budget_spent_while_proving_absence_ends_unknown_unsent(inline_server: Any) -> None:
    # The window (10 s = 50 ms here) outlasts max_time (30 ms): absence is
    # proven too late to send again, so the create ends unknown, sent once.
    posts: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            posts.append(1)
            return web.Response(status=500)
        return web.json_response({"items": []})

    url = await inline_server(handler)
    async with client_for(url, scale=0.005, max_time=0.03) as client:
        with pytest.raises(CreateOutcomeUnknownError):
            await client.submit(requests(1)[0])
    assert posts == [1]
