"""The listing walks of a ``client_ref`` lookup (``_http.lookup``): pages, bounds, odd answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

from runflow_async import GenerateRequest, RetryPolicy, Run, RunflowClient
from runflow_async._http.lookup import LookupRefused, find
from runflow_async._http.transport import Transport
from runflow_async._http.visibility import LookupFailed
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY, TIME_SCALE, Handler, make_client

Start = Callable[[Handler], Awaitable[str]]
STAMP = "2026-01-01T00:00:00+00:00"


@asynccontextmanager
async def emulated(**overrides: Any) -> AsyncIterator[tuple[Emulator, RunflowClient]]:
    keys = frozenset({API_KEY})
    emulator = Emulator(api_keys=keys, time_scale=TIME_SCALE, seed=3, **overrides)
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=2)
    async with emulator as emu, make_client(emu.url, retry=retry) as client:
        yield emu, client


async def made(client: RunflowClient, n: int) -> list[Run]:
    return [await client.submit(GenerateRequest(prompt=f"p{i}")) for i in range(n)]


def learned(transport: Transport, run: Run, *refused: str) -> None:
    """As if earlier lookups had refused ``refused`` and listed ``run``."""
    for form in refused:
        transport.visibility.forms.refuse(form, "refused before")
    assert run.created_at is not None
    transport.visibility.forms.observe(run.created_at.timestamp(), transport.clock.now())


async def test_the_newest_runs_are_paged_back_to_the_bound_and_no_further() -> None:
    # About 19 background runs per run of ours: 30 of ours span two pages, and
    # the newest 15 (made 100 s after the others) fit on the first.
    async with emulated(list_filters="none", background_runs=0.95) as (emu, client):
        runs = await made(client, 15)
        emu.advance(100.0)
        runs += await made(client, 15)
        transport = client._transport
        learned(transport, runs[-1], "client_ref", "created_at")

        def pages() -> int:
            return emu.counters.list_requests_by_filter["none"]

        start = pages()
        sent_at = transport.clock.now() - 10_000.0  # long before every run
        oldest = await find(transport, runs[0].client_ref or "", sent_at)
        deep = pages() - start
        newest = await find(transport, runs[-1].client_ref or "", sent_at)
        found_at_once = pages() - start - deep
        missing = await find(transport, "rfa-not-made", transport.clock.now())
        past_the_bound = pages() - start - deep - found_at_once
    assert oldest is not None
    assert oldest.id == runs[0].id
    assert deep >= 2  # the oldest run is beyond the first page
    assert newest is not None
    assert newest.id == runs[-1].id
    assert found_at_once == 1  # everything wanted was on the first page
    assert missing is None
    assert past_the_bound == 1  # the first page already reaches before the bound


async def test_an_ignored_created_at_filter_is_contradicted_then_the_newest_runs_are_read() -> None:
    async with emulated(list_ignores_filter=True, background_runs=0.5) as (emu, client):
        runs = await made(client, 3)
        emu.advance(30.0)  # the runs above are 30 s older than the bound
        runs += await made(client, 3)
        transport = client._transport
        learned(transport, runs[-1], "client_ref")
        found = await find(transport, runs[-1].client_ref or "", transport.clock.now())
        forms = transport.visibility.forms
    assert found is not None
    assert found.id == runs[-1].id
    assert forms.refused["created_at"] == "the API listed runs created before the created_at bound"
    assert "newest" not in forms.refused


@pytest.mark.parametrize(("fault", "error"), [(Fault.status(503), "503"), (Fault.drop(), None)])
async def test_a_walk_that_fails_is_a_failed_lookup_not_a_refused_form(
    fault: Fault, error: str | None
) -> None:
    async with emulated(list_filters="no-id") as (emu, client):
        runs = await made(client, 1)
        transport = client._transport
        learned(transport, runs[0], "client_ref")
        emu.faults.next("list_runs", fault, times=4)
        with pytest.raises(LookupFailed, match=error):
            await find(transport, runs[0].client_ref or "", transport.clock.now())
        assert transport.visibility.forms.usable() == ["created_at", "newest"]


def answering(body: object) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(body)

    return handle


@pytest.mark.parametrize(
    ("body", "raised", "message"),
    [
        ({"items": "none"}, LookupFailed, "no items array"),
        ({"items": [{"id": "r1", "client_ref": "rfa-x", "created_at": "soon"}]}, None, ""),
        ({"items": [{"id": 5, "client_ref": "rfa-x", "created_at": STAMP}]}, LookupFailed, "id"),
        ({"items": [{"id": "", "client_ref": "rfa-x", "created_at": STAMP}]}, LookupRefused, "id"),
    ],
)
async def test_odd_list_answers_on_the_newest_walk(
    inline_server: Start, body: object, raised: type[Exception] | None, message: str
) -> None:
    url = await inline_server(answering(body))
    async with make_client(url) as client:
        transport = client._transport
        transport.visibility.forms.refuse("client_ref", "refused before")
        if raised is None:  # a created_at that does not parse contradicts the form
            with pytest.raises(LookupRefused, match="no usable created_at"):
                await find(transport, "rfa-x", transport.clock.now())
            return
        with pytest.raises(raised, match=message):
            await find(transport, "rfa-x", transport.clock.now())


async def test_an_unreadable_client_ref_answer_is_a_failed_lookup(inline_server: Start) -> None:
    url = await inline_server(answering({"items": [{"status_code": 7}]}))
    async with make_client(url) as client:
        with pytest.raises(LookupFailed):
            await find(client._transport, "rfa-x", None)


async def test_a_refused_client_ref_filter_is_not_worked_around_without_a_send_time() -> None:
    # A create sent by an earlier process: no bound, so only the filter could find it.
    async with emulated(list_filters="no-id") as (emu, client):
        with pytest.raises(LookupRefused, match=r"refused it \(400\)"):
            await find(client._transport, "rfa-x", None)
        with pytest.raises(LookupRefused, match=r"refused it \(400\)"):
            await find(client._transport, "rfa-x", None)  # learned: not asked again
        assert emu.counters.list_requests_by_filter["client_ref"] == 1


async def test_a_cancelled_leader_hands_the_walk_to_a_waiting_lookup(inline_server: Start) -> None:
    # The first lookup leads a walk whose page hangs; the second waits for it.
    # Cancelling the leader must not strand the waiter: it walks itself.
    release = anyio.Event()
    asked: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        asked.append(request.query.get("sort_by", ""))
        if len(asked) == 1:
            await release.wait()
        item = {"id": "r1", "client_ref": "rfa-b", "created_at": STAMP, "status_code": "queued"}
        return web.json_response({"items": [item]})

    url = await inline_server(handle)
    async with make_client(url) as client:
        transport = client._transport
        forms = transport.visibility.forms
        forms.refuse("client_ref", "refused before")
        found: list[Run | None] = []
        leader = anyio.CancelScope()

        async def first() -> None:
            with leader:
                await find(transport, "rfa-a", transport.clock.now())

        async def second() -> None:
            found.append(await find(transport, "rfa-b", transport.clock.now()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await until(lambda: len(asked) == 1)
            tg.start_soon(second)
            await until(lambda: len(forms.queue) == 1)  # the second waits for the walk
            leader.cancel()
        release.set()
    assert [run.id if run else None for run in found] == ["r1"]
    assert len(asked) == 2
    assert forms.queue == []
    assert not forms.walking


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(5000):
        if condition():
            return
        await anyio.sleep(0.001)
    raise AssertionError("the condition never held")
