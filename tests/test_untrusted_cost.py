"""A server that bills the true price but reports a cost we cannot trust (emulator fault)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from runflow_async import GenerateRequest, NotSubmittedError, PollPolicy, RetryPolicy, RunflowClient
from runflow_async._batch.budget import BudgetLedger
from runflow_async.emulator import Emulator

CAP = Decimal("0.05")


@pytest.mark.parametrize("reported", ["negative", "nan", "missing", "huge"])
async def test_a_cost_that_cannot_be_trusted_never_lowers_spending(reported: str) -> None:
    # 40 runs of $0.0045 would bill $0.18: the cap must hold on what the server
    # really billed, and every run that succeeded keeps its images.
    async with (
        Emulator(time_scale=0.001, seed=4, reported_cost=reported) as emu,
        RunflowClient(
            "k", base_url=emu.url, retry=RetryPolicy(time_scale=0.001),
            poll=PollPolicy(time_scale=0.001),
        ) as client,
        client.batch(max_concurrency=8, max_cost_usd=CAP) as batch,
    ):  # fmt: skip
        for i in range(40):
            batch.submit(GenerateRequest(prompt=f"p{i}"))
        outcomes = await batch.gather()
        billed = emu.counters.billed_usd
    assert billed <= CAP
    ok = [o for o in outcomes if o.ok]
    assert ok
    assert all(o.result is not None and o.result.images for o in ok)
    assert all(isinstance(o.error, NotSubmittedError) for o in outcomes if not o.ok)
    assert all(o.billed_usd is None or o.billed_usd >= 0 for o in outcomes)


def test_the_ledger_ignores_negative_amounts() -> None:
    ledger = BudgetLedger(Decimal(1))
    assert ledger.try_reserve(Decimal("0.1"))
    settled = ledger.settle(Decimal("0.1"), Decimal("-5"))
    assert settled.billed_usd is None  # unknown: the reservation stays, held
    ledger.add_spent(Decimal("-3"))
    assert ledger.spent == 0
    assert ledger.committed == Decimal("0.15")  # the estimate at the initial margin


def test_the_emulator_refuses_an_unknown_reported_cost() -> None:
    from runflow_async.emulator import EmulatorConfig

    with pytest.raises(ValueError, match="reported_cost"):
        EmulatorConfig(reported_cost="free")
