"""Issue 12: ambiguous creates are looked up on servers that refuse the ``client_ref:`` filter.

The lookup falls back to documented listing (``created_at>=`` pages, else the
newest runs first), never to sending the create again while its run exists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

from runflow_async import CreateOutcomeUnknownError, GenerateRequest, RetryPolicy, RunflowClient
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY, TIME_SCALE, Handler, make_client

Start = Callable[[Handler], Awaitable[str]]
# The form each mode's lookups settle on, as the emulator counts list requests.
FORM_KIND = {"no-id": "documented", "none": "none"}
AMBIGUOUS = [Fault.lost_response(), Fault.lost_response(None), Fault.late_commit(3.0)]


@asynccontextmanager
async def emulated(**overrides: Any) -> AsyncIterator[tuple[Emulator, RunflowClient]]:
    keys = frozenset({API_KEY})
    emulator = Emulator(api_keys=keys, time_scale=TIME_SCALE, seed=5, **overrides)
    async with emulator as emu, make_client(emu.url) as client:
        yield emu, client


def per_item(emu: Emulator) -> Counter[str]:
    emu.advance(60.0)  # every late commit is stored by now
    return Counter(run["client_ref"] for run in emu.runs())


@pytest.mark.parametrize("background", [0.0, 0.5])
@pytest.mark.parametrize("mode", ["no-id", "none"])
async def test_ambiguous_creates_in_a_batch_are_found_by_listing_never_resent(
    mode: str, background: float
) -> None:
    # Three creates are stored but lose their answer (a 502, a reset, a late
    # commit). Old code: the client_ref lookup is refused, each ends unknown.
    async with emulated(list_filters=mode, background_runs=background) as (emu, client):
        for fault in AMBIGUOUS:
            emu.faults.next("create", fault)
        async with client.batch(max_concurrency=8) as batch:
            batch.submit_many([GenerateRequest(prompt=f"p{i}") for i in range(12)])
        outcomes = await batch.gather()
        counters = emu.counters
        runs = per_item(emu)
        forms = client._transport.visibility.forms
    assert [o.error for o in outcomes if not o.ok] == []
    assert counters.requests_by_route["create"] == 12  # nothing sent twice
    assert counters.runs_created == 12
    assert sorted(runs.values()) == [1] * 12
    assert {o.result.run.client_ref for o in outcomes if o.result} == set(runs)
    assert counters.list_requests_by_filter["client_ref"] >= 1
    assert counters.list_requests_by_filter[FORM_KIND[mode]] >= 1
    assert "client_ref" in forms.refused
    assert ("created_at" in forms.refused) == (mode == "none")
    assert counters.listed_background > 0 or background == 0


@pytest.mark.parametrize("mode", ["no-id", "none"])
async def test_a_create_refused_before_storing_is_resent_once_after_the_window(mode: str) -> None:
    # The 502 came before anything was stored: no form of listing shows it over
    # the window, so the create is sent again (same key), once.
    async with emulated(list_filters=mode) as (emu, client):
        await client.submit(GenerateRequest(prompt="first"))  # a run to learn the clock by
        emu.faults.next("create", Fault.status(502))
        run = await client.submit(GenerateRequest(prompt="second"))
        counters = emu.counters
        runs = emu.runs()
    assert counters.requests_by_route["create"] == 3
    assert counters.runs_created == 2
    assert [r["client_ref"] for r in runs] == [runs[0]["client_ref"], run.client_ref]
    assert counters.list_requests_by_filter[FORM_KIND[mode]] >= 1


async def test_the_first_lookup_of_a_fresh_client_reads_the_newest_runs() -> None:
    # No run listed yet: the server's time is unknown, so the first walk reads
    # the newest runs (and learns it); the next lookup uses created_at>=.
    async with emulated(list_filters="no-id", background_runs=0.5) as (emu, client):
        emu.faults.next("create", Fault.lost_response())
        await client.submit(GenerateRequest(prompt="a"))
        first = dict(emu.counters.list_requests_by_filter)
        emu.faults.next("create", Fault.lost_response())
        await client.submit(GenerateRequest(prompt="b"))
        then = emu.counters.list_requests_by_filter
        forms = client._transport.visibility.forms
        runs = emu.runs()
    assert (first.get("none", 0), first.get("documented", 0)) == (1, 0)
    assert (then["none"], then["documented"]) == (1, 1)
    assert forms.offset is not None
    assert emu.counters.requests_by_route["create"] == 2
    assert len(runs) == 2


async def test_concurrent_lookups_share_one_walk() -> None:
    # Twenty lookups starting together: one created_at>= page serves them all.
    from runflow_async._http.lookup import (
        find,
    )  # (new: imported here, so the other tests fail on the old code by behaviour)

    async with emulated(list_filters="no-id") as (emu, client):
        made = [await client.submit(GenerateRequest(prompt=f"p{i}")) for i in range(20)]
        transport = client._transport
        transport.visibility.forms.refuse("client_ref", "the API refused it (400)")
        assert made[0].created_at is not None
        transport.visibility.forms.observe(made[0].created_at.timestamp(), transport.clock.now())
        sent_at = transport.clock.now() - 60.0
        before = emu.counters.list_requests_by_filter["documented"]
        found: dict[str, str | None] = {}

        async def look(ref: str) -> None:
            run = await find(transport, ref, sent_at)
            found[ref] = None if run is None else run.id

        async with anyio.create_task_group() as tg:
            for run in made:
                tg.start_soon(look, run.client_ref or "")
            tg.start_soon(look, "rfa-never-made")
        walks = emu.counters.list_requests_by_filter["documented"] - before
    assert walks == 1
    assert found == {run.client_ref or "": run.id for run in made} | {"rfa-never-made": None}


def test_the_offset_keeps_the_largest_lower_bound() -> None:
    from runflow_async._http.visibility import LookupForms

    forms = LookupForms()
    forms.observe(1000.0, 10.0)
    forms.observe(995.0, 20.0)
    assert forms.offset == 990.0
    assert forms.usable() == ["client_ref", "created_at", "newest"]
    forms.refuse("created_at", "x")
    forms.refuse("created_at", "y")
    assert forms.refused == {"created_at": "x"}
    assert forms.usable() == ["client_ref", "newest"]


def _unsorted(now: str) -> Handler:
    """A server that refuses every filter and lists runs oldest first."""
    made: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            body = await request.json()
            made.append({"id": f"run_{len(made)}", "client_ref": body["client_ref"]})
            made[-1].update(status_code="queued", created_at=now, model="m")
            if len(made) == 2:
                return web.Response(status=502, text="bad gateway")
            return web.json_response(made[-1], status=201)
        if request.query.get("q"):
            return web.json_response({"code": "INVALID_QUERY", "message": "no"}, status=400)
        late = {**made[0], "created_at": "2020-01-01T00:00:00+00:00"}
        return web.json_response({"items": [late, *made], "next_pq": None})

    return handle


async def test_a_server_no_listing_form_works_on_ends_unknown_unsent(inline_server: Start) -> None:
    url = await inline_server(_unsorted("2026-01-01T00:00:00+00:00"))
    async with make_client(url, retry=RetryPolicy(time_scale=TIME_SCALE, max_attempts=3)) as c:
        await c.submit(GenerateRequest(prompt="a"))
        with pytest.raises(CreateOutcomeUnknownError, match="no form of lookup works"):
            await c.submit(GenerateRequest(prompt="b"))
        forms = c._transport.visibility.forms
    assert set(forms.refused) == {"client_ref", "created_at", "newest"}
