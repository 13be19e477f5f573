"""Callback payloads whose ``output`` is null ("may be null or trimmed"): a seeded fraction."""

from __future__ import annotations

import math

import pytest

from runflow_async.emulator import EmulatorConfig, Fault
from tests.emulator.callback_receiver import QUICK, history, receiving
from tests.emulator.emulator_support import Harness, running


async def _secret(h: Harness) -> str:
    plain: str = (await h.post("/v1/callback-secrets", {"label": "x"}))["plain_secret"]
    return plain


async def test_at_rate_one_a_payload_has_null_output_and_is_still_signed() -> None:
    async with running(**QUICK, callback_null_output_rate=1.0) as h, receiving() as rx:
        secret = await _secret(h)
        created = await h.create(callback_url=rx.url)
        (got,) = await rx.wait_for(1)
        (delivery,) = await history(h, created["id"])
        run = await h.finish(created["id"])
    body = got.json
    assert "output" in body
    assert body["output"] is None
    assert (body["event"], body["status"], body["run_id"]) == (
        "run.completed",
        "succeeded",
        created["id"],
    )
    assert got.signed_with(secret)
    assert delivery["status_code"] == "delivered"
    assert run["output"] is not None  # only the callback leaves it out


async def test_at_rate_zero_a_payload_carries_the_output() -> None:
    async with running(**QUICK, callback_null_output_rate=0.0) as h, receiving() as rx:
        secret = await _secret(h)
        await h.create(callback_url=rx.url)
        (got,) = await rx.wait_for(1)
    assert got.signed_with(secret)
    assert got.json["output"]["outputs"][0]["url"].startswith(h.emu.url)


async def test_duplicates_share_the_null_body_and_a_redelivery_has_the_output() -> None:
    async with running(**QUICK, callback_null_output_rate=1.0) as h, receiving() as rx:
        secret = await _secret(h)
        h.emu.faults.next("callback", Fault.duplicate())
        created = await h.create(callback_url=rx.url)
        first, second = await rx.wait_for(2)
        await history(h, created["id"], count=2)
        await h.post(f"/v1/runs/{created['id']}/callback-redeliveries", None, expect=202)
        _, _, redelivered = await rx.wait_for(3)
    assert first.body == second.body
    assert first.json["output"] is None
    assert redelivered.json["output"]["outputs"]
    assert redelivered.signed_with(secret)


async def _null_pattern(seed: int, runs: int) -> list[bool]:
    """Which of ``runs`` sequential runs had a null-output callback, in creation order."""
    async with (
        running(**QUICK, seed=seed, callback_null_output_rate=0.5) as h,
        receiving() as rx,
    ):
        ids = []
        for i in range(runs):
            ids.append((await h.create(f"p{i}", callback_url=rx.url))["id"])
            await rx.wait_for(i + 1)  # one delivery at a time: the draws keep run order
    nulls = {got.json["run_id"]: got.json["output"] is None for got in rx.received}
    return [nulls[run_id] for run_id in ids]


async def test_a_fractional_rate_is_a_seeded_draw_per_delivery() -> None:
    first = await _null_pattern(seed=3, runs=12)
    again = await _null_pattern(seed=3, runs=12)
    assert first == again
    assert True in first
    assert False in first


@pytest.mark.parametrize("rate", [1.5, -0.1, math.nan])
def test_a_rate_outside_zero_to_one_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="callback_null_output_rate must be between 0 and 1"):
        EmulatorConfig(callback_null_output_rate=rate)
