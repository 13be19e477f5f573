"""The budget ledger's arithmetic."""

from __future__ import annotations

from decimal import Decimal as D

from runflow_async._batch.budget import BudgetLedger


def test_reservations_are_scaled_until_a_run_settles_then_by_what_was_seen() -> None:
    ledger = BudgetLedger(D("1.0"))
    assert ledger.factor == D("1.5")
    assert ledger.try_reserve(D("0.4"))  # 0.6 committed
    assert not ledger.try_reserve(D("0.4"))  # 0.6 + 0.6 > 1.0 (and the probe is in flight)
    ledger.settle(D("0.4"), D("0.44"))  # billed 10% more
    assert ledger.factor == D("1.375")  # 1.1 seen, times the 1.25 margin
    assert ledger.spent == D("0.44")
    assert ledger.try_reserve(D("0.4"))  # 0.44 + 0.55 <= 1.0
    ledger.settle(D("0.4"), D("0.2"))  # cheaper runs never lower the factor below the max
    assert ledger.factor == D("1.375")


def test_unknown_bills_hold_the_reservation_and_releases_free_money() -> None:
    ledger = BudgetLedger(None)
    assert ledger.try_reserve(D("1"))
    assert ledger.settle(D("1"), None).billed_usd is None
    assert ledger.held == D("1")
    assert not ledger.calibrated
    assert ledger.try_reserve(D("2"))
    ledger.release(D("2"))
    assert ledger.reserved == 0
    assert ledger.committed == D("1.5")
    assert ledger.estimated_total == D("3")


async def test_reserve_waits_for_settlement_and_gives_up_when_nothing_can_free_room() -> None:
    import anyio

    ledger = BudgetLedger(D("1.0"))
    assert await ledger.reserve(D("0.5"))  # 0.75 committed
    got: list[bool] = []

    async def second() -> None:
        got.append(await ledger.reserve(D("0.4")))

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.lowlevel.checkpoint()
        assert got == []  # waiting: 0.75 + 0.6 > 1.0
        ledger.settle(D("0.5"), D("0.5"))  # factor 1.25, spent 0.5: 0.5 + 0.5 fits
    assert got == [True]
    ledger.hold(D("0.4"))  # timed out: kept, but never frees room
    assert not await ledger.reserve(D("0.2"))
