"""Run ids from a create's answer are checked once; one id answered twice still settles both."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aiohttp import web

from runflow_async import (
    APIResponseError,
    CreateOutcomeUnknownError,
    GenerateRequest,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
)
from runflow_async._core.models import run_id_problem
from runflow_async._http.create import find_by_client_ref
from runflow_async._waiting.list_poller import WaitStrategy
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY
from tests.test_create import Start, lookup_server

SCALE = 0.002
REQUEST = GenerateRequest(prompt="a lighthouse at dusk", image_size="square")


def client_for(url: str, *, wait_strategy: WaitStrategy = "auto") -> RunflowClient:
    return RunflowClient(
        API_KEY,
        base_url=url,
        retry=RetryPolicy(time_scale=SCALE),
        poll=PollPolicy(time_scale=SCALE),
        wait_strategy=wait_strategy,
    )


def emulator(**overrides: Any) -> Emulator:
    return Emulator(api_keys=frozenset({API_KEY}), time_scale=SCALE, seed=5, **overrides)


BAD_IDS: list[str | int | None] = ["a/../b", "run?x=1", "run 7", "", "x" * 201, ".hidden", 42, None]


@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda v: repr(v)[:12])
async def test_a_create_answered_with_a_bad_id_is_outcome_unknown_with_its_money_held(
    bad: str | int | None,
) -> None:
    # The run exists (and bills) under its real id, but the list lags past the
    # window: the item is unknown, listed, its money held; nothing is resent.
    async with emulator(list_lag=500.0) as emu, client_for(emu.url) as client:
        emu.faults.next("create", Fault.bad_run_id(bad))
        async with client.batch() as batch:
            batch.submit(REQUEST)
        (outcome,) = await batch.gather()
        committed = batch._engine.snapshot().committed_usd
        (run,) = emu.runs()
        creates = emu.counters.requests_by_route["create"]
    error = outcome.error
    assert isinstance(error, CreateOutcomeUnknownError)
    cause = error.__cause__
    assert isinstance(cause, APIResponseError)
    assert cause.raw_id == bad
    assert cause.body_excerpt is not None
    assert run["client_ref"] in cause.body_excerpt
    assert creates == 1
    assert batch.uncertain_client_refs == [run["client_ref"]]
    assert committed >= outcome.estimated_usd > 0  # held, never released


async def test_a_bad_id_whose_run_the_list_shows_is_adopted_under_its_real_id() -> None:
    async with emulator() as emu, client_for(emu.url) as client:
        emu.faults.next("create", Fault.bad_run_id("../../v1/assets"))
        async with client.batch() as batch:
            batch.submit(REQUEST)
        (outcome,) = await batch.gather()
        (run,) = emu.runs()
    assert outcome.ok
    assert outcome.run_id == run["id"]


async def test_the_raw_id_and_the_excerpt_never_show_the_key(inline_server: Start) -> None:
    def post(body: dict[str, Any]) -> web.StreamResponse:
        echoed = {"id": f"{API_KEY}/x", "client_ref": body["client_ref"], "auth": API_KEY}
        return web.json_response(echoed, status=201)

    handler, calls = lookup_server(post=post, listing=lambda q: web.json_response({"items": []}))
    url = await inline_server(handler)
    async with client_for(url) as client:
        with pytest.raises(CreateOutcomeUnknownError) as info:
            await client.submit(REQUEST)
    cause = info.value.__cause__
    assert isinstance(cause, APIResponseError)
    assert cause.raw_id == "<redacted>/x"
    assert cause.body_excerpt is not None
    assert API_KEY not in cause.body_excerpt
    assert API_KEY not in str(cause) + str(info.value)
    assert calls.count("POST") == 1


async def test_a_run_id_inside_an_object_is_quoted_redacted(inline_server: Start) -> None:
    def post(body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"id": {"value": API_KEY}}, status=201)

    handler, _ = lookup_server(post=post, listing=lambda q: web.json_response({"items": []}))
    url = await inline_server(handler)
    async with client_for(url) as client:
        with pytest.raises(CreateOutcomeUnknownError) as info:
            await client.submit(REQUEST)
    cause = info.value.__cause__
    assert isinstance(cause, APIResponseError)
    assert cause.raw_id == '{"value": "<redacted>"}'


async def test_a_lookup_that_lists_a_bad_id_ends_unknown(inline_server: Start) -> None:
    refs: list[str] = []

    def post(body: dict[str, Any]) -> web.StreamResponse:
        refs.append(body["client_ref"])
        return web.Response(status=502)

    def listing(q: str) -> web.StreamResponse:
        return web.json_response({"items": [{"id": "a/b", "client_ref": refs[0]}]})

    handler, calls = lookup_server(post=post, listing=listing)
    url = await inline_server(handler)
    async with client_for(url) as client:
        with pytest.raises(CreateOutcomeUnknownError, match="not usable"):
            await client.submit(REQUEST)
    assert calls == ["POST", "GET"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("019b76da-a800-782f-b728-b4fa42485e3a", None),
        ("run_7.v2~x", None),
        (None, "missing"),
        (7, "int"),
        ("", "empty"),
        ("x" * 201, "201 characters"),
        ("a b", "not allowed"),
        ("a/b", "not allowed"),
        ("a?b", "not allowed"),
        ("..", "not allowed"),
    ],
)
def test_run_id_problems_are_named(value: object, problem: str | None) -> None:
    found = run_id_problem(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


@pytest.mark.parametrize("strategy", ["auto", "list", "per_run"])
async def test_two_creates_answered_with_one_run_id_both_settle(strategy: WaitStrategy) -> None:
    # A buggy server answers the second create with the first one's run id; it
    # made a run for each. Both items settle, each on its own run (the second
    # found by its client_ref): none hangs, no paid run is left behind.
    async with emulator() as emu, client_for(emu.url, wait_strategy=strategy) as client:
        emu.faults.next("create", Fault.reused_run_id(), times=2)
        with anyio.fail_after(10):
            async with client.batch(max_concurrency=2) as batch:
                batch.submit_many([REQUEST, REQUEST.model_copy(update={"prompt": "another"})])
            outcomes = await batch.gather()
        created = emu.counters.runs_created
        made = {run["id"] for run in emu.runs()}
    assert [o.ok for o in outcomes] == [True, True]
    assert outcomes[0].run_id != outcomes[1].run_id
    assert {o.run_id for o in outcomes} == made
    assert created == 2


async def test_a_create_answered_with_a_good_id_but_not_a_run_is_unknown(
    inline_server: Start,
) -> None:
    def post(body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"id": "run-1", "metadata": "not an object"}, status=201)

    handler, calls = lookup_server(post=post, listing=lambda q: web.json_response({"items": []}))
    url = await inline_server(handler)
    async with client_for(url) as client:
        with pytest.raises(CreateOutcomeUnknownError) as info:
            await client.submit(REQUEST)
    cause = info.value.__cause__
    assert isinstance(cause, APIResponseError)
    assert "not a run" in str(cause)
    assert cause.raw_id == "run-1"
    assert calls.count("POST") == 1


async def test_a_single_lookup_that_the_server_refuses_is_unknown(inline_server: Start) -> None:
    handler, _ = lookup_server(
        post=lambda body: web.Response(status=500),
        listing=lambda q: web.json_response({"code": "INVALID_QUERY"}, status=400),
    )
    url = await inline_server(handler)
    async with client_for(url) as client:
        with pytest.raises(CreateOutcomeUnknownError, match="refused") as info:
            await find_by_client_ref(client._transport, "rfa-x", idempotency_key="k")
    assert info.value.client_ref == "rfa-x"
