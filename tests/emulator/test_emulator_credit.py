"""Credit: creates answer 402 once the billed total reaches it; a top-up lets them through."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import pytest

from runflow_async._pricing import PricingPolicy
from runflow_async.emulator import Emulator, Fault, FaultRates
from tests.emulator.emulator_support import FROZEN, Harness, running

PRICE = PricingPolicy().generate_cost(None)


async def _top_up(h: Harness, body: Any, *, expect: int = 200) -> dict[str, Any]:
    async with h.http.post("/_emulator/credit", json=body) as resp:  # no auth: control plane
        data: dict[str, Any] = await resp.json()
        assert resp.status == expect, data
        return data


async def test_a_top_up_through_the_control_route_lets_creates_through_again() -> None:
    async with running(**FROZEN, credit_usd=PRICE) as h:
        await h.create()
        h.emu.advance(1000.0)
        await h.create(expect=402)
        answer = await _top_up(h, {"credit_usd": str(PRICE * 2)})
        await h.create()
        h.emu.advance(1000.0)
        refused = await h.create(expect=402)
        lifted = await _top_up(h, {"credit_usd": None})
        await h.create()
        counters = h.emu.counters
    assert answer == {"credit_usd": str(PRICE * 2), "billed_usd": str(PRICE)}
    assert refused["message"] == f"Billed ${PRICE * 2} of ${PRICE * 2} credit; top up to run more."
    assert lifted["credit_usd"] is None
    assert counters.runs_created == 3
    assert counters.requests_by_route["credit"] == 2


@pytest.mark.parametrize(
    "body", [{"credit_usd": "-1"}, {"credit_usd": "NaN"}, {"credit_usd": "lots"}, {}, [1], "7"]
)
async def test_a_bad_credit_is_refused_and_changes_nothing(body: Any) -> None:
    async with running(credit_usd=Decimal(1)) as h:
        answer = await _top_up(h, body, expect=422)
        assert h.emu.config.credit_usd == Decimal(1)
        await h.create()
    assert answer["errors"][0]["field"] == "credit_usd"


async def test_a_credit_body_that_is_not_json_is_a_400() -> None:
    async with running() as h, h.http.post("/_emulator/credit", data=b"{") as resp:
        assert resp.status == 400


async def test_the_credit_route_is_never_faulted() -> None:
    rates = FaultRates(rate_5xx=1.0, applies_to=frozenset({"create"}))
    async with running(faults=rates) as h:
        h.emu.faults.next("any", Fault.drop(), times=3)
        assert (await _top_up(h, {"credit_usd": "3"}))["credit_usd"] == "3"


async def test_set_credit_tops_up_in_process() -> None:
    async with running(**FROZEN, credit_usd=0) as h:
        await h.create(expect=402)
        h.emu.set_credit("0.5")
        await h.create()
        h.emu.set_credit(None)
        await h.create()
    emu = Emulator()
    with pytest.raises(ValueError, match="credit_usd must be a finite amount"):
        emu.set_credit(-1)
    with pytest.raises(InvalidOperation):
        emu.set_credit("lots")
