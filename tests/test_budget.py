"""The budget ledger's arithmetic."""

from __future__ import annotations

from decimal import Decimal as D

from runflow_async._budget import BudgetLedger


def test_reservations_are_scaled_until_a_run_settles_then_by_what_was_seen() -> None:
    ledger = BudgetLedger(D("1.0"))
    assert ledger.factor == D("1.5")
    assert ledger.try_reserve(D("0.4"))  # 0.6 committed
    assert not ledger.try_reserve(D("0.4"))  # 0.6 + 0.6 > 1.0
    ledger.settle(D("0.4"), D("0.44"))  # billed 10% more
    assert ledger.factor == D("1.1")
    assert ledger.spent == D("0.44")
    assert ledger.try_reserve(D("0.4"))  # 0.44 + 0.44 <= 1.0
    ledger.settle(D("0.4"), D("0.2"))  # cheaper runs never lower the factor below the max
    assert ledger.factor == D("1.1")


def test_unknown_bills_count_the_scaled_estimate_and_releases_free_money() -> None:
    ledger = BudgetLedger(None)
    assert ledger.try_reserve(D("1"))
    assert ledger.settle(D("1"), None) == D("1.5")
    assert ledger.try_reserve(D("2"))
    ledger.release(D("2"))
    assert ledger.reserved == 0
    assert ledger.committed == D("1.5")
    assert ledger.estimated_total == D("3")
