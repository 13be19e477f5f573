"""Creates cost money: every retry path ends with exactly one billed run, or a clear error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from runflow_async import (
    APIConnectionError,
    ConfigurationError,
    CreateOutcomeUnknownError,
    GenerateRequest,
    InsufficientCreditError,
    RateLimitError,
    RetryPolicy,
    RunflowClient,
    ServerError,
    Timeouts,
    UnprocessableEntityError,
)
from runflow_async._http.create import client_ref_query
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY, TIME_SCALE, Handler, make_client
from tests.test_http import unused_port

Start = Callable[[Handler], Awaitable[str]]
REQUEST = GenerateRequest(prompt="a red kite over hills", image_size="square")


async def finish_all(client: RunflowClient, emulator: Emulator) -> None:
    for run in emulator.runs():
        await client.wait(run["id"], check=False)


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(429, code="RATE_LIMITED", retry_after=1),
        Fault.status(429, code="RATE_LIMITED"),
        Fault.status(503, code="MODEL_UNAVAILABLE"),
    ],
    ids=["429-retry-after", "429-bare", "503-model-unavailable"],
)
async def test_create_refused_by_the_server_is_retried_and_billed_once(
    client: RunflowClient, emulator: Emulator, fault: Fault
) -> None:
    emulator.faults.next("create", fault, times=2)
    run = await client.submit(REQUEST)
    await client.wait(run.id)
    counters = emulator.counters
    assert counters.requests_by_route["create"] == 3
    assert counters.runs_created == 1
    assert counters.runs_billed == 1
    # Provably not created: no need to look anything up.
    assert counters.requests_by_route.get("list_runs", 0) == 0


@pytest.mark.parametrize("honour_key", [True, False], ids=["key-honoured", "key-ignored"])
@pytest.mark.parametrize(
    "lost",
    [Fault.lost_response(502), Fault.lost_response(None)],
    ids=["html-502", "dropped"],
)
async def test_ambiguous_create_ends_with_exactly_one_billed_run(
    honour_key: bool, lost: Fault
) -> None:
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, honour_idempotency_key=honour_key
    ) as emulator:
        emulator.faults.next("create", lost)
        async with make_client(emulator.url) as client:
            run = await client.submit(REQUEST)
            await client.wait(run.id)
        counters = emulator.counters
    assert counters.runs_created == 1
    assert counters.runs_billed == 1
    assert counters.requests_by_route["list_runs"] >= 1
    assert counters.requests_by_route["create"] == 1  # adopted, not resent
    assert [r["id"] for r in emulator.runs()] == [run.id]


@pytest.mark.parametrize("honour_key", [True, False], ids=["key-honoured", "key-ignored"])
async def test_create_that_timed_out_is_adopted_not_recreated(honour_key: bool) -> None:
    async with Emulator(
        api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, honour_idempotency_key=honour_key
    ) as emulator:
        # The server takes 20 ms; the client gives up reading after 5 ms and
        # backs off 100 ms (no jitter) before it looks the run up.
        emulator.faults.next("create", Fault.slow(20))
        policy = RetryPolicy(jitter=False, initial_wait=100, time_scale=TIME_SCALE)
        async with make_client(emulator.url, retry=policy, timeouts=Timeouts(read=0.005)) as c:
            run = await c.submit(REQUEST)
            await c.wait(run.id)
        assert emulator.counters.runs_created == 1
        assert emulator.counters.runs_billed == 1


async def test_ambiguous_5xx_with_no_run_is_resubmitted_with_the_same_key(
    inline_server: Start,
) -> None:
    posts: list[dict[str, Any]] = []
    keys: list[str] = []
    created: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            posts.append(await request.json())
            keys.append(request.headers["Idempotency-Key"])
            if len(posts) == 1:
                return web.json_response({"code": "INTERNAL"}, status=500)
            created.update(id="run-9", status_code="queued", client_ref=posts[-1]["client_ref"])
            return web.json_response(created, status=201)
        return web.json_response({"items": [], "next_pq": None})

    url = await inline_server(handler)
    async with make_client(url) as client:
        run = await client.submit(REQUEST)
    assert run.id == "run-9"
    assert len(posts) == 2
    assert posts[0] == posts[1]
    assert posts[0]["client_ref"].startswith("rfa-")
    assert keys[0] == keys[1]


def lookup_server(
    *,
    post: Callable[[dict[str, Any]], web.StreamResponse],
    listing: Callable[[str], web.StreamResponse],
) -> tuple[Handler, list[str]]:
    calls: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.method)
        if request.method == "POST":
            return post(await request.json())
        return listing(request.query.get("q", ""))

    return handler, calls


async def test_lookup_that_ignores_the_filter_never_resubmits(inline_server: Start) -> None:
    handler, calls = lookup_server(
        post=lambda body: web.Response(status=502, text="<html>bad gateway</html>"),
        listing=lambda q: web.json_response({"items": [{"id": "x", "client_ref": "other"}]}),
    )
    url = await inline_server(handler)
    async with make_client(url) as client:
        with pytest.raises(CreateOutcomeUnknownError, match="ignored the client_ref filter") as e:
            await client.submit(REQUEST)
    # The fallback (the newest runs) is tried once: a run without created_at contradicts it.
    assert calls == ["POST", "GET", "GET"]
    assert "newest: a listed run has no usable created_at" in str(e.value)
    assert e.value.client_ref.startswith("rfa-")
    assert e.value.idempotency_key


async def test_lookup_that_fails_never_resubmits(inline_server: Start) -> None:
    handler, calls = lookup_server(
        post=lambda body: web.json_response({"code": "INTERNAL"}, status=500),
        listing=lambda q: web.json_response({"code": "INVALID_QUERY"}, status=400),
    )
    url = await inline_server(handler)
    async with make_client(url) as client:
        with pytest.raises(CreateOutcomeUnknownError, match="refused it \\(400\\)"):
            await client.submit(REQUEST)
    assert calls == ["POST", "GET", "GET"]  # by client_ref, then the newest runs: both refused


async def test_unreadable_2xx_create_is_recovered_by_lookup(inline_server: Start) -> None:
    refs: list[str] = []

    def post(body: dict[str, Any]) -> web.StreamResponse:
        refs.append(body["client_ref"])
        return web.Response(status=201, text="{truncated", content_type="application/json")

    handler, calls = lookup_server(
        post=post,
        listing=lambda q: web.json_response(
            {"items": [{"id": "run-7", "client_ref": refs[0], "status_code": "queued"}]}
        ),
    )
    url = await inline_server(handler)
    async with make_client(url) as client:
        run = await client.submit(REQUEST)
    assert run.id == "run-7"
    assert calls == ["POST", "GET"]


async def test_unreadable_2xx_create_that_cannot_be_found_is_unknown(inline_server: Start) -> None:
    handler, calls = lookup_server(
        post=lambda body: web.json_response({"not": "a run"}, status=201),
        listing=lambda q: web.json_response({"items": []}),
    )
    url = await inline_server(handler)
    async with make_client(url) as client:
        with pytest.raises(CreateOutcomeUnknownError, match="unreadable"):
            await client.submit(REQUEST)
    # Looked up over the whole visibility window, never sent again.
    assert calls[0] == "POST"
    assert calls.count("POST") == 1
    assert len(calls) > 2


async def test_conflict_on_a_repeat_adopts_the_first_attempt(inline_server: Start) -> None:
    refs: list[str] = []
    answers = iter([web.Response(status=504), web.json_response({"code": "CONFLICT"}, status=409)])

    def post(body: dict[str, Any]) -> web.StreamResponse:
        refs.append(body["client_ref"])
        return next(answers)

    seen_lookups: list[int] = []

    def listing(q: str) -> web.StreamResponse:
        seen_lookups.append(1)
        # Not visible over the first attempt's window, visible after the 409.
        items = [{"id": "run-5", "client_ref": refs[0]}] if len(refs) > 1 else []
        return web.json_response({"items": items})

    handler, calls = lookup_server(post=post, listing=listing)
    url = await inline_server(handler)
    async with make_client(url) as client:
        run = await client.submit(REQUEST)
    assert run.id == "run-5"
    second = calls.index("POST", 1)
    assert calls[0] == "POST"
    assert calls[1:second] == ["GET"] * (second - 1)
    assert second > 2  # the first window took several lookups
    assert calls[second:] == ["POST", "GET"]


async def test_rate_limits_until_attempts_run_out_raise_and_bill_nothing(
    client: RunflowClient, emulator: Emulator
) -> None:
    emulator.faults.next("create", Fault.status(429), times=5)
    with pytest.raises(RateLimitError):
        await client.submit(REQUEST)
    assert emulator.counters.requests_by_route["create"] == 5
    assert emulator.counters.runs_created == 0


async def test_persistent_5xx_looks_up_each_time_bills_nothing_and_stays_unknown(
    client: RunflowClient, emulator: Emulator
) -> None:
    # Each 502 may have created the run: a lookup that misses proves nothing (a
    # list may lag), so the create ends unknown, never "not created".
    emulator.faults.next("create", Fault.status(502, html=True), times=5)
    with pytest.raises(CreateOutcomeUnknownError) as info:
        await client.submit(REQUEST)
    assert isinstance(info.value.__cause__, ServerError)
    counters = emulator.counters
    assert counters.requests_by_route["create"] == 5
    assert counters.requests_by_route["list_runs"] > 5  # each window takes several lookups
    assert counters.runs_created == 0


async def test_create_to_a_refused_port_is_retried_without_lookups() -> None:
    policy = RetryPolicy(max_attempts=2, time_scale=TIME_SCALE)
    async with make_client(f"http://127.0.0.1:{unused_port()}", retry=policy) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.submit(REQUEST)
    assert info.value.sent is False


async def test_validation_and_credit_errors_are_not_retried(
    client: RunflowClient, emulator: Emulator
) -> None:
    emulator.faults.next("create", Fault.status(422, code="VALIDATION_ERROR"))
    with pytest.raises(UnprocessableEntityError):
        await client.submit(REQUEST)
    emulator.faults.next("create", Fault.status(402, code="INSUFFICIENT_CREDIT"))
    with pytest.raises(InsufficientCreditError):
        await client.submit(REQUEST)
    assert emulator.counters.requests_by_route["create"] == 2
    assert emulator.counters.runs_created == 0


def test_client_ref_queries_quote_only_when_needed() -> None:
    assert client_ref_query("rfa-0af.x_1") == "client_ref:rfa-0af.x_1"
    assert client_ref_query('my "ref" \\ 1') == 'client_ref:"my \\"ref\\" \\\\ 1"'


async def test_a_quoted_client_ref_is_found_by_the_emulator(
    client: RunflowClient, emulator: Emulator
) -> None:
    request = GenerateRequest(prompt="p", client_ref='batch "7" item 1')
    emulator.faults.next("create", Fault.lost_response(502))
    run = await client.submit(request)
    assert run.client_ref == 'batch "7" item 1'
    assert emulator.counters.runs_created == 1


def test_api_key_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNFLOW_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="RUNFLOW_API_KEY"):
        RunflowClient()
    with pytest.raises(ConfigurationError, match="whitespace"):
        RunflowClient("bad key")
    monkeypatch.setenv("RUNFLOW_API_KEY", "rf_env")
    monkeypatch.setenv("RUNFLOW_BASE_URL", "http://127.0.0.1:9/")
    assert RunflowClient().base_url == "http://127.0.0.1:9"
    with pytest.raises(ConfigurationError, match="http"):
        RunflowClient(base_url="ftp://x")


async def test_last_attempt_that_is_ambiguous_is_still_looked_up(emulator: Emulator) -> None:
    emulator.faults.next("create", Fault.status(500))
    emulator.faults.next("create", Fault.lost_response(502))
    policy = RetryPolicy(max_attempts=2, time_scale=TIME_SCALE)
    async with make_client(emulator.url, retry=policy) as client:
        run = await client.submit(REQUEST)
    assert emulator.counters.runs_created == 1
    assert [r["id"] for r in emulator.runs()] == [run.id]


async def test_an_ambiguous_create_is_never_made_not_submitted_by_a_later_answer() -> None:
    # The server stores the run and loses the answer; its list lags, so the
    # lookup misses; the resend is answered 402. The run exists and is billed:
    # the create must end unknown (its client_ref to look up), not "not created".
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, list_lag=60) as emu:
        emu.faults.next("create", Fault.lost_response())
        emu.faults.next("create", Fault.status(402, "INSUFFICIENT_CREDIT"))
        async with make_client(emu.url) as client:
            with pytest.raises(CreateOutcomeUnknownError) as info:
                await client.submit(REQUEST)
        runs = emu.runs()
    assert isinstance(info.value.__cause__, InsufficientCreditError)
    assert len(runs) == 1
    assert info.value.client_ref == runs[0]["client_ref"]


async def test_a_lagging_list_hides_new_runs_but_reads_by_id_see_them() -> None:
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, list_lag=60) as emu,
        make_client(emu.url) as client,
    ):
        run = await client.submit(REQUEST)
        assert (await client.get_run(run.id)).id == run.id
        assert (await client.list_runs()).items == []
    with pytest.raises(ValueError, match="list_lag"):
        Emulator(list_lag=-1)


async def test_a_create_sent_again_under_its_client_ref_reuses_its_key() -> None:
    # A create is stored and its answer lost; the list lags, so the lookup
    # misses and the create ends unknown. Resumed later with the same client_ref
    # (as a dataset does), it sends the same Idempotency-Key: the server replays
    # the run instead of billing a second one.
    policy = RetryPolicy(max_attempts=1, time_scale=TIME_SCALE)
    request = REQUEST.model_copy(update={"client_ref": "rfa-dataset-item-7"})
    async with (
        Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, list_lag=60) as emu,
        make_client(emu.url, retry=policy) as client,
    ):
        emu.faults.next("create", Fault.lost_response(status=None))
        with pytest.raises(CreateOutcomeUnknownError):
            await client.submit(request)
        again = await client.submit(request)
        runs = emu.runs()
    assert [run["id"] for run in runs] == [again.id]
