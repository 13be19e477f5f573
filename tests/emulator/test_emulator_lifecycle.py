"""Run lifecycle on the scaled clock: phases, outcomes, cost, billing and concurrency."""

from __future__ import annotations

from decimal import Decimal

import pytest

from runflow_async._pricing import PRESET_SIZES, PricingPolicy
from runflow_async.emulator import Emulator
from tests.emulator.emulator_support import EDIT, FROZEN, running


async def test_a_run_walks_through_every_phase_as_the_clock_advances() -> None:
    async with running(**FROZEN) as h:
        run = await h.create(input={"seed": 5})
        seen = [run["status_code"]]
        for step in (150.0, 100.0, 749.0, 2.0):
            h.emu.advance(step)
            seen.append((await h.get(f"/v1/runs/{run['id']}"))["status_code"])
        running_run = await h.get(f"/v1/runs/{run['id']}")
    assert seen == ["queued", "dispatching", "running", "running", "succeeded"]
    assert running_run["started_at"] is not None
    assert running_run["completed_at"] is not None


async def test_a_succeeded_run_has_output_timings_and_cost() -> None:
    async with running(**FROZEN) as h:
        run = await h.create(input={"seed": 5, "num_images": 2, "output_format": "webp"})
        h.emu.advance(1000.0)
        done = await h.get(f"/v1/runs/{run['id']}")
    assert done["status_code"] == "succeeded"
    assert done["duration_ms"] == 1_000_000
    assert done["cost"] == "0.009000"  # 2 x 0.75 MP x $0.006
    output = done["output"]
    assert output["seed"] == 5
    assert output["model_data"] == {"prompt": "a red fox"}
    assert output["nsfw_detected"] is False
    assert output["timing"] == {"inference_ms": 800_000}
    assert [o["width"] for o in output["outputs"]] == [1024, 1024]
    assert {o["content_type"] for o in output["outputs"]} == {"image/webp"}
    assert {o["type"] for o in output["outputs"]} == {"image"}
    assert done["failure_code"] is None
    assert done["created_at"] < done["started_at"] < done["completed_at"]


async def test_a_run_without_a_seed_reports_a_drawn_one() -> None:
    async with running() as h:
        run = await h.finish((await h.create())["id"])
    assert isinstance(run["output"]["seed"], int)


async def test_failure_rate_one_fails_every_run_without_billing() -> None:
    async with running(failure_rate=1.0) as h:
        runs = [await h.finish((await h.create())["id"]) for _ in range(3)]
        counters = h.emu.counters
    for run in runs:
        assert run["status_code"] == "failed"
        assert run["failure_code"] == "PROVIDER_ERROR"
        assert run["failure_message"]
        assert run["failure_stage_code"] == "execution"
        assert run["output"] is None
        assert run["cost"] == "0"
    assert counters.runs_failed == 3
    assert counters.runs_billed == 0
    assert counters.billed_usd == 0


@pytest.mark.parametrize(
    ("fields", "size", "images"),
    [
        ({}, PRESET_SIZES["landscape_4_3"], 1),
        ({"image_size": "square_hd", "num_images": 3}, (1024, 1024), 3),
        ({"image_size": {"width": 1920, "height": 1088}}, (1920, 1088), 1),
    ],
)
async def test_text_to_image_cost_is_the_pricing_policy_times_the_multiplier(
    fields: dict[str, object], size: tuple[int, int], images: int
) -> None:
    policy = PricingPolicy()
    async with running(cost_multiplier=Decimal("1.3")) as h:
        run = await h.finish((await h.create(input=fields))["id"])
        counters = h.emu.counters
    expected = policy.quantize(policy.generate_cost(size, images) * Decimal("1.3"))
    assert Decimal(run["cost"]) == expected
    assert counters.billed_usd == expected
    assert counters.runs_billed == 1
    assert (run["output"]["outputs"][0]["width"], run["output"]["outputs"][0]["height"]) == size


@pytest.mark.parametrize(
    ("fields", "size"),
    [({}, None), ({"image_size": "portrait_16_9", "num_images": 2}, (576, 1024))],
)
async def test_edit_cost_counts_unknown_inputs_as_the_policy_says(
    fields: dict[str, object], size: tuple[int, int] | None
) -> None:
    policy = PricingPolicy()
    urls = ["https://a.example/1.png", "https://a.example/2.png"]
    async with running() as h:
        run = await h.create(model=EDIT, input={"image_urls": urls, **fields})
        done = await h.finish(run["id"])
    images = int(str(fields.get("num_images", 1)))
    assert Decimal(done["cost"]) == policy.edit_cost([None, None], size, images)
    out = done["output"]["outputs"][0]
    expected = size or policy.default_edit_output_size(None)
    assert (out["width"], out["height"]) == expected


async def test_max_in_flight_is_exact_for_a_known_schedule() -> None:
    async with running(**FROZEN) as h:
        for _ in range(3):
            await h.create()
        h.emu.advance(1500.0)  # all three ended at 1000 s
        await h.create()
        h.emu.advance(200.0)
        for _ in range(4):
            await h.create()
        mid = h.emu.counters
        h.emu.advance(900.0)  # the fourth run ends; the last four are still going
        late = h.emu.counters
    assert mid.max_in_flight == 5
    assert mid.in_flight == 5
    assert late.in_flight == 4
    assert late.max_in_flight == 5
    assert late.runs_billed == 4


async def test_credit_runs_out_then_creates_answer_402_while_in_flight_runs_finish() -> None:
    price = PricingPolicy().generate_cost(None)
    async with running(**FROZEN, credit_usd=price * 2) as h:
        first = [await h.create() for _ in range(3)]
        h.emu.advance(1000.0)
        refused = await h.create(expect=402)
        states = [(await h.get(f"/v1/runs/{r['id']}"))["status_code"] for r in first]
        counters = h.emu.counters
    assert refused["code"] == "INSUFFICIENT_CREDIT"
    assert states == ["succeeded"] * 3
    assert counters.runs_created == 3
    assert counters.billed_usd == price * 3


async def test_the_same_seed_gives_the_same_runs() -> None:
    async def draw(seed: int) -> list[tuple[str, int, int]]:
        async with running(seed=seed, duration_sigma=0.5) as h:
            runs = [await h.finish((await h.create())["id"]) for _ in range(3)]
        return [(r["id"], r["duration_ms"], r["output"]["seed"]) for r in runs]

    assert await draw(11) == await draw(11)
    assert await draw(11) != await draw(12)


async def test_runs_snapshot_lists_runs_as_the_api_shows_them() -> None:
    emu = Emulator(**FROZEN)
    assert emu.runs() == []
    async with running(**FROZEN) as h:
        run = await h.create()
        assert h.emu.runs() == [await h.get(f"/v1/runs/{run['id']}")]


async def test_prices_are_right_when_the_price_memo_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runflow_async.emulator import _state

    monkeypatch.setattr(_state, "_MAX_PRICES", 0)
    async with running() as h:
        runs = [await h.finish((await h.create())["id"]) for _ in range(2)]
    assert [Decimal(r["cost"]) for r in runs] == [PricingPolicy().generate_cost(None)] * 2
