"""Per-organization rate limits on creates: the in-flight cap and the token bucket."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from runflow_async.emulator import EmulatorConfig, EmulatorCounters, Fault, FaultRates
from tests.emulator.emulator_support import AUTH, FROZEN, GENERATE, Harness, running

CREATE = f"/v1/models/{GENERATE}/runs"
BODY = {"input": {"prompt": "a red fox"}}


async def _post(
    h: Harness, body: Any = BODY, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
    async with h.http.post(CREATE, json=body, headers={**AUTH, **(headers or {})}) as resp:
        return resp.status, await resp.json(), resp.headers.copy()


async def test_a_create_beyond_max_in_flight_runs_is_429_and_creates_nothing() -> None:
    async with running(**FROZEN, max_in_flight_runs=2) as h:
        await h.create()
        await h.create()
        status, body, headers = await _post(h)
        counters = h.emu.counters
    assert status == 429
    assert body["code"] == "RATE_LIMITED"
    assert body["message"] == "Rate limit exceeded: 2 runs in flight, at most 2 allowed."
    assert "Retry-After" not in headers
    assert counters.runs_created == 2
    assert counters.rate_limited == 1
    assert counters.faults_injected == {}
    assert counters.responses_by_status == {201: 2, 429: 1}


async def test_a_create_refused_by_the_in_flight_cap_succeeds_once_a_run_finishes() -> None:
    async with running(**FROZEN, max_in_flight_runs=1) as h:
        first = await h.create()
        assert (await _post(h))[0] == 429
        h.emu.advance(1000.0)  # the first run ends
        second = await h.create()
        assert (await _post(h))[0] == 429
        assert (await h.get(f"/v1/runs/{first['id']}"))["status_code"] == "succeeded"
        counters = h.emu.counters
    assert second["status_code"] == "queued"
    assert (counters.runs_created, counters.rate_limited, counters.max_in_flight) == (2, 2, 1)


@pytest.mark.parametrize(("seconds", "header"), [(0.2, "1"), (3.0, "3"), (0.0, "0")])
async def test_rate_limit_retry_after_is_sent_in_whole_seconds_rounded_up(
    seconds: float, header: str
) -> None:
    async with running(**FROZEN, max_in_flight_runs=1, rate_limit_retry_after=seconds) as h:
        await h.create()
        status, _, headers = await _post(h)
    assert status == 429
    assert headers["Retry-After"] == header


async def test_the_token_bucket_allows_burst_creates_then_one_per_interval() -> None:
    async with running(**FROZEN, create_rate_per_second=0.5, create_burst=3) as h:
        statuses = [(await _post(h))[0] for _ in range(4)]
        h.emu.advance(1.9)  # 0.95 of a token
        statuses.append((await _post(h))[0])
        h.emu.advance(0.1)  # one token
        statuses += [(await _post(h))[0] for _ in range(2)]
        h.emu.advance(100.0)  # the bucket refills only up to the burst
        statuses += [(await _post(h))[0] for _ in range(4)]
        _, body, headers = await _post(h)
        counters = h.emu.counters
    assert statuses == [201, 201, 201, 429, 429, 201, 429, 201, 201, 201, 429]
    assert body["message"] == "Rate limit exceeded: at most 0.5 creates per second, 3 at once."
    assert "Retry-After" not in headers
    assert counters.runs_created == 7
    assert counters.rate_limited == 5


async def test_a_create_refused_by_the_cap_spends_no_token() -> None:
    limits = {"max_in_flight_runs": 1, "create_rate_per_second": 1e-6, "create_burst": 2}
    async with running(**FROZEN, **limits) as h:
        await h.create()  # one token left
        status, capped, _ = await _post(h)
        h.emu.advance(1000.0)
        await h.create()  # the token the capped create did not spend
        h.emu.advance(1000.0)
        _, limited, _ = await _post(h)
    assert status == 429
    assert "in flight" in capped["message"]
    assert "per second" in limited["message"]


async def test_invalid_creates_and_idempotent_replays_are_not_rate_limited() -> None:
    limits = {"max_in_flight_runs": 1, "create_rate_per_second": 1e-6, "create_burst": 1}
    async with running(**FROZEN, **limits) as h:
        assert (await _post(h, {"input": {}}))[0] == 422  # spends no token
        first = await h.create(headers={"Idempotency-Key": "k1"})
        replay = await h.create(headers={"Idempotency-Key": "k1"})
        assert (await _post(h))[0] == 429
        counters = h.emu.counters
    assert replay["id"] == first["id"]
    assert (counters.runs_created, counters.idempotent_replays, counters.rate_limited) == (1, 1, 1)


async def test_no_credit_is_402_before_any_rate_limit() -> None:
    async with running(**FROZEN, credit_usd=0, max_in_flight_runs=1) as h:
        status, body, _ = await _post(h)
        counters = h.emu.counters
    assert (status, body["code"]) == (402, "INSUFFICIENT_CREDIT")
    assert counters.rate_limited == 0


async def test_injected_429s_still_work_and_are_counted_as_faults_not_rate_limits() -> None:
    rates = FaultRates(
        rate_429=1.0, rate_429_without_retry_after=1.0, applies_to=frozenset({"create"})
    )
    async with running(**FROZEN, faults=rates, max_in_flight_runs=1) as h:
        seeded = await _post(h)
        h.emu.faults.next("create", Fault.status(429))
        scripted = await _post(h)
        counters = h.emu.counters
    for status, body, headers in (seeded, scripted):
        assert (status, body["code"]) == (429, "RATE_LIMITED")
        assert "Retry-After" not in headers
    assert counters.faults_injected == {"status_429": 2}
    assert counters.rate_limited == 0
    assert counters.runs_created == 0


async def test_counters_json_carries_rate_limited_and_reads_older_payloads() -> None:
    async with running(**FROZEN, max_in_flight_runs=1) as h:
        await h.create()
        await _post(h)
        async with h.http.get("/_emulator/counters") as resp:
            data = await resp.json()
    assert data["rate_limited"] == 1
    assert EmulatorCounters.from_json(data).to_json() == data
    older = {key: value for key, value in data.items() if key != "rate_limited"}
    assert EmulatorCounters.from_json(older).rate_limited == 0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"max_in_flight_runs": 0}, "max_in_flight_runs"),
        ({"retain_runs": 0}, "retain_runs"),
        ({"create_rate_per_second": 0.0}, "create_rate_per_second"),
        ({"create_rate_per_second": float("nan")}, "create_rate_per_second"),
        ({"create_burst": 0}, "create_burst"),
        ({"rate_limit_retry_after": -1.0}, "rate_limit_retry_after"),
        ({"rate_limit_retry_after": float("inf")}, "rate_limit_retry_after"),
    ],
)
def test_invalid_limits_are_refused(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EmulatorConfig(**overrides)
