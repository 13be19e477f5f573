"""The odd paths of waiting by callback, against a tiny inline API and a real receiver.

The inline handler plays an API whose reads lag, fail, or ignore the list
filter; deliveries are POSTed to the receiver by hand, signed as Runflow signs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from runflow_async import (
    SIGNATURE_HEADER,
    APIResponseError,
    CallbackReceiver,
    PollPolicy,
    RequestValidationError,
    RetryPolicy,
    RunflowClient,
    sign,
)
from runflow_async._callbacks.waiter import CallbackWaiter
from runflow_async._waiting.costs import CostLookup
from runflow_async._waiting.list_poller import DurationStats
from tests.conftest import API_KEY, TIME_SCALE

pytestmark = pytest.mark.anyio

SECRET = "whsec_paths"
RUN = "0192f0e4-7c1a-7b7e-9a52-3f1f5e0c2d11"
OUTPUT = {"outputs": [{"url": "https://files.example/a.png"}]}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeAPI:
    """Answers ``GET /v1/runs/{id}`` and ``GET /v1/runs`` from scripted replies."""

    def __init__(self) -> None:
        self.runs: list[Any] = []  # successive replies to GET /v1/runs/{id}
        self.listing: list[Any] = []  # successive replies to GET /v1/runs
        self.seen: Counter[str] = Counter()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/runs":
            self.seen["list"] += 1
            reply = self.listing.pop(0) if len(self.listing) > 1 else self.listing[0]
        else:
            self.seen["get"] += 1
            reply = self.runs.pop(0) if len(self.runs) > 1 else self.runs[0]
        if isinstance(reply, int):
            return web.json_response({"code": "NOPE", "message": "scripted"}, status=reply)
        return web.json_response(reply)


@pytest.fixture
async def api(
    inline_server: Callable[[Handler], Awaitable[str]],
) -> AsyncIterator[tuple[FakeAPI, RunflowClient]]:
    fake = FakeAPI()
    url = await inline_server(fake)
    retry = RetryPolicy(time_scale=TIME_SCALE, max_attempts=2)
    async with RunflowClient(API_KEY, base_url=url, retry=retry) as client:
        yield fake, client


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    async with CallbackReceiver([SECRET]) as rx:
        yield rx


def policy() -> PollPolicy:
    return PollPolicy(
        time_scale=TIME_SCALE, callback_fallback_after=20.0, callback_fallback_interval=5.0
    )


def waiter(client: RunflowClient, rx: CallbackReceiver, *, shared: bool) -> CallbackWaiter:
    return CallbackWaiter(client._transport, rx, DurationStats(), policy(), shared=shared)


async def deliver(rx: CallbackReceiver, **fields: Any) -> None:
    body = json.dumps({"run_id": RUN, **fields}).encode()
    headers = {SIGNATURE_HEADER: sign(body, SECRET)}
    async with aiohttp.ClientSession() as s, s.post(rx.url, data=body, headers=headers) as r:
        assert r.status == 200


def run(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": RUN, "status_code": status, **fields}


async def wait_with(w: CallbackWaiter, *deliveries: dict[str, Any]) -> Any:
    """Wait for RUN (serving the shared loops) while ``deliveries`` are POSTed."""
    async with anyio.create_task_group() as tg:
        if w._loops:
            tg.start_soon(w.run)
        for fields in deliveries:
            await deliver(w.receiver, **fields)
        result = await w.wait(RUN)
        tg.cancel_scope.cancel()
    return result


async def test_a_trimmed_output_is_read_in_full(
    api: tuple[FakeAPI, RunflowClient], receiver: CallbackReceiver
) -> None:
    fake, client = api
    fake.runs = [run("succeeded", output=OUTPUT, cost="0.006")]
    trims: list[dict[str, Any]] = [{"outputs": []}, {"outputs": "not a list"}]
    for trimmed in trims:
        got = await wait_with(
            waiter(client, receiver, shared=False), {"status": "succeeded", "output": trimmed}
        )
        assert got.cost == Decimal("0.006")
        assert got.output.outputs[0].url == "https://files.example/a.png"
        receiver._delivered.clear()  # deliver the same run again
    assert fake.seen == {"get": 2}


async def test_a_read_that_lags_behind_a_signed_success_trusts_the_delivery(
    api: tuple[FakeAPI, RunflowClient], receiver: CallbackReceiver
) -> None:
    fake, client = api
    fake.runs = [run("running")]
    fake.listing = [{"items": []}]  # the cost lookup does not find it either
    got = await wait_with(
        waiter(client, receiver, shared=True), {"status": "succeeded", "output": OUTPUT}
    )
    assert got.status_code == "succeeded"
    assert got.cost is None  # unknown: the budget counts the estimate
    assert fake.seen == {"list": 1, "get": 1}


async def test_a_signed_non_terminal_delivery_leaves_the_run_to_the_fallback(
    api: tuple[FakeAPI, RunflowClient], receiver: CallbackReceiver
) -> None:
    fake, client = api
    fake.runs = [run("running"), run("running"), run("succeeded", output=OUTPUT, cost="0.01")]
    got = await wait_with(waiter(client, receiver, shared=False), {"status": "running"})
    assert got.status_code == "succeeded"
    assert fake.seen["get"] == 3  # one after the delivery, then the fallback schedule


async def test_a_failed_read_after_the_callback_falls_back(
    api: tuple[FakeAPI, RunflowClient], receiver: CallbackReceiver
) -> None:
    fake, client = api
    fake.runs = [404, run("failed", failure_code="NSFW")]
    got = await wait_with(waiter(client, receiver, shared=False), {"status": "failed"})
    assert got.failure_code == "NSFW"


async def test_a_closed_receiver_means_polling_on_the_fallback_schedule(
    api: tuple[FakeAPI, RunflowClient],
) -> None:
    fake, client = api
    fake.runs = [run("succeeded", output=OUTPUT)]
    rx = CallbackReceiver([SECRET])
    await rx.aclose()
    w = waiter(client, rx, shared=False)
    assert (await w.wait(RUN)).status_code == "succeeded"
    assert fake.seen == {"get": 1}


async def test_the_shared_fallback_polls_one_by_one_when_the_list_is_unusable(
    api: tuple[FakeAPI, RunflowClient], receiver: CallbackReceiver
) -> None:
    fake, client = api
    fake.listing = [400]  # the filter is refused: the poller falls back
    fake.runs = [run("queued"), run("succeeded", output=OUTPUT)]
    got = await wait_with(waiter(client, receiver, shared=True))
    assert got.status_code == "succeeded"
    assert fake.seen == {"list": 1, "get": 2}


async def cost_of(client: RunflowClient, *run_ids: str) -> list[tuple[bool, Decimal | None]]:
    lookup = CostLookup(client._transport, chunk_size=2)
    results: list[tuple[bool, Decimal | None]] = [(False, None)] * len(run_ids)

    async def one(i: int) -> None:
        results[i] = await lookup.cost(run_ids[i])

    async with anyio.create_task_group() as tg:
        tg.start_soon(lookup.run)
        async with anyio.create_task_group() as inner:
            for i in range(len(run_ids)):
                inner.start_soon(one, i)
        tg.cancel_scope.cancel()
    return results


async def test_costs_come_back_in_chunks(api: tuple[FakeAPI, RunflowClient]) -> None:
    fake, client = api
    fake.listing = [
        {"items": [{"id": "a", "cost": "0.5"}, {"id": "b", "cost": True}]},
        {"items": [{"id": "c", "cost": "bad"}]},
    ]
    got = await cost_of(client, "a", "b", "c")
    assert got == [(True, Decimal("0.5")), (True, None), (True, None)]
    assert fake.seen == {"list": 2}  # two chunks of at most two


@pytest.mark.parametrize(
    ("reply", "usable"),
    [(500, True), ({"items": [{"id": "other"}]}, False), ({"items": "x"}, False)],
)
async def test_a_cost_lookup_that_fails_says_read_it_yourself(
    api: tuple[FakeAPI, RunflowClient], reply: Any, usable: bool
) -> None:
    fake, client = api
    fake.listing = [reply]
    lookup = CostLookup(client._transport)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lookup.run)
        assert await lookup.cost("a") == (False, None)
        tg.cancel_scope.cancel()
    assert lookup.usable is usable
    if not usable:  # turned off for good: no more list requests
        assert await lookup.cost("b") == (False, None)
        assert fake.seen["list"] == 1


async def test_a_callback_secret_needs_a_label_and_a_plain_secret(
    api: tuple[FakeAPI, RunflowClient], inline_server: Callable[[Handler], Awaitable[str]]
) -> None:
    _, client = api
    for label in ("", "x" * 256):
        with pytest.raises(RequestValidationError):
            await client.create_callback_secret(label)

    async def no_secret(request: web.Request) -> web.StreamResponse:
        return web.json_response({"id": "s1"}, status=201)

    url = await inline_server(no_secret)
    async with RunflowClient(API_KEY, base_url=url) as other:
        with pytest.raises(APIResponseError, match="plain_secret"):
            await other.create_callback_secret("prod")
