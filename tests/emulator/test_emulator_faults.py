"""Scripted and seeded faults: statuses, HTML pages, drops, delays, lost responses, failures."""

from __future__ import annotations

import json
import logging
import time

import aiohttp
import pytest
from multidict import CIMultiDict

from runflow_async.emulator import Fault, FaultRates, FaultScript
from tests.emulator.emulator_support import AUTH, FROZEN, GENERATE, Harness, running

CREATE = f"/v1/models/{GENERATE}/runs"
BODY = {"input": {"prompt": "a red fox"}}


async def _raw_create(h: Harness) -> tuple[int, str, str, CIMultiDict[str]]:
    async with h.http.post(CREATE, json=BODY, headers=AUTH) as resp:
        return resp.status, resp.content_type, await resp.text(), resp.headers.copy()


async def test_a_status_fault_answers_the_envelope_and_stores_nothing() -> None:
    async with running() as h:
        h.emu.faults.next("create", Fault.status(503, code="MODEL_UNAVAILABLE", retry_after=2))
        status, content_type, text, headers = await _raw_create(h)
        counters = h.emu.counters
    assert (status, content_type) == (503, "application/json")
    assert '"code":"MODEL_UNAVAILABLE"' in text
    assert headers["Retry-After"] == "2"
    assert headers["X-Request-Id"].startswith("req_")
    assert counters.runs_created == 0
    assert counters.faults_injected == {"status_503": 1}
    assert counters.responses_by_status == {503: 1}


HTTP_DATE = "Wed, 21 Oct 2026 07:28:00 GMT"


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(None, None), (1.5, "1.5"), (3.0, "3"), (HTTP_DATE, HTTP_DATE)],
)
async def test_retry_after_is_sent_as_given(
    retry_after: float | str | None, header: str | None
) -> None:
    async with running() as h:
        h.emu.faults.next("create", Fault.status(429, retry_after=retry_after))
        status, _, text, headers = await _raw_create(h)
    assert status == 429
    assert '"code":"RATE_LIMITED"' in text
    assert headers.get("Retry-After") == header


async def test_an_html_fault_looks_like_a_gateway_page() -> None:
    async with running() as h:
        h.emu.faults.next("get_run", Fault.status(502, html=True))
        async with h.http.get("/v1/runs/x", headers=AUTH) as resp:
            assert resp.status == 502
            assert resp.content_type == "text/html"
            assert "<h1>502 Bad Gateway</h1>" in await resp.text()


async def test_status_codes_without_a_usual_code_get_a_derived_one() -> None:
    async with running() as h:
        h.emu.faults.next("create", Fault.status(504))
        h.emu.faults.next("create", Fault.status(599))
        assert '"code":"GATEWAY_TIMEOUT"' in (await _raw_create(h))[2]
        status, _, text, _ = await _raw_create(h)
    assert status == 599
    assert '"code":"HTTP_599"' in text
    assert '"message":"Error"' in text


async def test_a_drop_closes_the_connection_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running() as h:
        h.emu.faults.next("create", Fault.drop())
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await _raw_create(h)
        status, *_ = await _raw_create(h)
        counters = h.emu.counters
    assert status == 201
    assert counters.runs_created == 1
    assert counters.faults_injected == {"drop": 1}
    assert counters.responses_by_status == {201: 1}
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_slow_fault_delays_by_emulated_seconds_then_serves() -> None:
    async with running(time_scale=0.001) as h:
        h.emu.faults.next("get_run", Fault.slow(5.0))
        started = time.monotonic()
        answer = await h.get("/v1/runs/nope", expect=404)
        elapsed = time.monotonic() - started
    assert answer["code"] == "RUN_NOT_FOUND"
    assert elapsed >= 0.005


@pytest.mark.parametrize("html", [True, False])
async def test_a_lost_response_stores_and_bills_the_run_but_answers_an_error(html: bool) -> None:
    async with running() as h:
        h.emu.faults.next("create", Fault.lost_response(502, html=html))
        status, content_type, _, _ = await _raw_create(h)
        run = await h.finish(h.emu.runs()[0]["id"])
        counters = h.emu.counters
    assert status == 502
    assert content_type == ("text/html" if html else "application/json")
    assert run["status_code"] == "succeeded"
    assert counters.runs_created == 1
    assert counters.runs_billed == 1
    assert counters.faults_injected == {"lost_response": 1}


async def test_a_lost_response_without_status_drops_after_creating() -> None:
    async with running() as h:
        h.emu.faults.next("create", Fault.lost_response(None))
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await _raw_create(h)
        assert h.emu.counters.runs_created == 1


async def test_fail_run_makes_the_created_run_fail_with_the_given_code() -> None:
    async with running() as h:
        h.emu.faults.next(
            "create", Fault.fail_run("NSFW_BLOCKED", "Blocked by the safety checker.")
        )
        run = await h.finish((await h.create())["id"])
        other = await h.finish((await h.create())["id"])
        counters = h.emu.counters
    assert run["status_code"] == "failed"
    assert (run["failure_code"], run["failure_message"]) == (
        "NSFW_BLOCKED",
        "Blocked by the safety checker.",
    )
    assert other["status_code"] == "succeeded"
    assert counters.runs_failed == 1
    assert counters.faults_injected["fail_run"] == 1


async def test_faults_apply_times_over_and_route_specific_before_any() -> None:
    async with running(**FROZEN) as h:
        h.emu.faults.next("any", Fault.status(500), times=2)
        h.emu.faults.next("health", Fault.status(503))
        assert h.emu.faults.pending() == 3
        statuses = []
        for _ in range(4):
            async with h.http.get("/v1/health") as resp:
                statuses.append(resp.status)
        async with h.http.get("/_emulator/counters") as resp:
            assert resp.status == 200  # the control plane is never faulted
        assert h.emu.faults.pending() == 0
    assert statuses == [503, 500, 500, 200]


async def test_clear_forgets_queued_faults() -> None:
    async with running() as h:
        h.emu.faults.next("create", Fault.drop(), times=3)
        h.emu.faults.clear()
        await h.create()


def test_fault_constructors_and_script_reject_misuse() -> None:
    script = FaultScript()
    with pytest.raises(ValueError, match="400-599"):
        Fault.status(200)
    with pytest.raises(ValueError, match="negative"):
        Fault.slow(-1)
    with pytest.raises(ValueError, match="unknown route"):
        script.next("counters", Fault.drop())
    with pytest.raises(ValueError, match="create route"):
        script.next("any", Fault.fail_run())
    with pytest.raises(ValueError, match="create route"):
        script.next("get_run", Fault.lost_response())
    with pytest.raises(ValueError, match="at least 1"):
        script.next("create", Fault.drop(), times=0)
    assert script.take("create") is None


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        (FaultRates(rate_429=1.0, rate_429_without_retry_after=0.0), {"status_429": 6}),
        (FaultRates(rate_5xx=1.0, rate_5xx_html=1.0), {"status_502": 6}),
        (FaultRates(rate_5xx=1.0, rate_5xx_html=0.0), {"status_503": 6}),
        # aiohttp resends a GET once when the server disconnects: 3 POST + 2 x 3 GET.
        (FaultRates(rate_drop=1.0), {"drop": 9}),
        (FaultRates(rate_slow=1.0, slow_seconds=0.1), {"slow": 6}),
        (FaultRates(rate_lost_create=1.0), {"lost_response": 3}),
    ],
)
async def test_seeded_rates_inject_each_fault_kind(
    rates: FaultRates, expected: dict[str, int]
) -> None:
    async with running(faults=rates) as h:
        for _ in range(3):
            for method, path in (("POST", CREATE), ("GET", "/v1/runs")):
                try:
                    async with h.http.request(method, path, json=BODY, headers=AUTH) as resp:
                        await resp.read()
                except aiohttp.ServerDisconnectedError:
                    pass
        async with h.http.get("/v1/health") as resp:
            assert resp.status == 200  # not in applies_to
        counters = h.emu.counters
    assert counters.faults_injected == expected


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        (FaultRates(rate_html_ok=1.0), {"html_ok": 4}),
        (FaultRates(rate_null_output=1.0), {"null_output": 4}),
        (FaultRates(rate_not_found=1.0), {"status_404": 2}),
    ],
)
async def test_read_fault_rates_hit_status_reads_only(
    rates: FaultRates, expected: dict[str, int]
) -> None:
    async with running(faults=rates) as h:
        run = await h.create()  # creates never draw a read fault
        for _ in range(2):
            for path in (f"/v1/runs/{run['id']}", "/v1/runs"):
                async with h.http.get(path, headers=AUTH) as resp:
                    body = await resp.read()
                    if "html_ok" in expected:
                        assert resp.status == 200
                        assert body.lstrip().startswith(b"<")
                    if "null_output" in expected:
                        assert resp.status == 200
                        assert json.loads(body)
        assert h.emu.counters.faults_injected == expected


async def test_seeded_rates_are_deterministic_and_mixed() -> None:
    rates = FaultRates(rate_429=0.2, rate_5xx=0.2, rate_slow=0.1, slow_seconds=0.0)

    async def statuses(seed: int) -> list[int]:
        async with running(faults=rates, seed=seed, **FROZEN) as h:
            out = []
            for _ in range(40):
                async with h.http.get("/v1/runs", headers=AUTH) as resp:
                    out.append(resp.status)
            return out

    first = await statuses(3)
    assert first == await statuses(3)
    assert {200, 429} <= set(first)
    assert {502, 503} & set(first)


def test_fault_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultRates(rate_429=1.5)
    with pytest.raises(ValueError, match="add up"):
        FaultRates(rate_429=0.6, rate_drop=0.6)
    with pytest.raises(ValueError, match="negative"):
        FaultRates(slow_seconds=-1.0)
    with pytest.raises(ValueError, match="unknown routes"):
        FaultRates(applies_to=frozenset({"counters"}))


async def test_only_on_confines_a_kind_to_some_routes_and_keeps_its_rate_there() -> None:
    rates = FaultRates(
        rate_5xx=1.0, rate_5xx_html=0.0, only_on={"5xx": frozenset({"get_run", "list_runs"})}
    )
    async with running(faults=rates) as h:
        created = [await h.create() for _ in range(5)]  # never a server error
        async with h.http.get("/v1/runs", headers=AUTH) as resp:
            listed = resp.status
        async with h.http.get(f"/v1/runs/{created[0]['id']}", headers=AUTH) as resp:
            read = resp.status
        counters = h.emu.counters
    assert (listed, read) == (503, 503)
    assert counters.runs_created == 5
    assert counters.faults_injected == {"status_503": 2}


@pytest.mark.parametrize("kind", ["429", "drop", "slow"])
async def test_only_on_confines_every_scoped_kind(kind: str) -> None:
    rates = FaultRates(
        rate_429=1.0 if kind == "429" else 0.0,
        rate_drop=1.0 if kind == "drop" else 0.0,
        rate_slow=1.0 if kind == "slow" else 0.0,
        slow_seconds=0.0,
        only_on={kind: frozenset({"get_run"})},
    )
    async with running(faults=rates) as h:
        await h.create()
        async with h.http.get("/v1/runs", headers=AUTH) as resp:
            assert resp.status == 200
        counters = h.emu.counters
    assert counters.faults_injected == {}
    assert counters.runs_created == 1


async def test_the_chaos_mix_hits_each_route_at_its_own_rates() -> None:
    # 429 and drops everywhere, server errors on status reads, lost answers on creates.
    rates = FaultRates(
        rate_429=0.25,
        rate_5xx=0.25,
        rate_drop=0.0,
        rate_lost_create=0.25,
        only_on={"5xx": frozenset({"get_run", "list_runs"})},
    )
    async with running(faults=rates, seed=4, **FROZEN) as h:
        creates: dict[int, int] = {}
        for _ in range(200):
            status, *_ = await _raw_create(h)
            creates[status] = creates.get(status, 0) + 1
        reads: dict[int, int] = {}
        for _ in range(200):
            async with h.http.get("/v1/runs", headers=AUTH) as resp:
                reads[resp.status] = reads.get(resp.status, 0) + 1
    assert set(creates) == {201, 429, 502}  # 502: the lost answers (HTML pages)
    assert set(reads) == {200, 429, 502, 503}
    assert 25 <= creates[429] <= 75
    assert 25 <= creates[502] <= 75
    assert 25 <= reads[502] + reads[503] <= 75


def test_only_on_is_validated_and_read_only() -> None:
    with pytest.raises(ValueError, match="only_on takes the kinds"):
        FaultRates(only_on={"lost_create": frozenset({"create"})})
    with pytest.raises(ValueError, match="not in applies_to"):
        FaultRates(only_on={"5xx": frozenset({"health"})})
    scopes = {"drop": {"create"}}
    rates = FaultRates(only_on=scopes)  # type: ignore[arg-type]
    scopes["drop"].add("get_run")
    assert rates.only_on == {"drop": frozenset({"create"})}
    assert rates.applies("drop", "create")
    assert not rates.applies("drop", "get_run")
    assert rates.applies("429", "get_run")
    with pytest.raises(TypeError):
        rates.only_on["5xx"] = frozenset()  # type: ignore[index]
