"""Batch switches: the body shape, which models take batches, and their CLI flags."""

from __future__ import annotations

import argparse
import dataclasses

import aiohttp
import pytest

from runflow_async.emulator import Emulator, EmulatorConfig
from runflow_async.emulator._cli import _config, add_emulator_command
from tests.emulator.emulator_support import AUTH, EDIT, FAST, GENERATE, running
from tests.emulator.test_emulator_batches import BATCHES, items

GUIDE_BODY = {"items": [{"input": {"prompt": f"p {i}"}, "client_ref": f"g-{i}"} for i in range(3)]}
OPENAPI_BODY = {"input": items(3)}


async def test_the_default_takes_the_openapi_body_and_refuses_the_guide_one() -> None:
    async with running() as h:
        refused = await h.post(BATCHES, GUIDE_BODY, expect=422)
        assert h.emu.counters.runs_created == 0
        created = await h.post(BATCHES, OPENAPI_BODY)
    (error,) = refused["errors"]
    assert error["field"] == "items"
    assert error["code"] == "unsupported_shape"
    assert '{"input": [{...}, ...]}' in error["message"]
    assert created["items_total"] == 3


async def test_the_guide_switch_takes_the_guide_body_and_answers_lean() -> None:
    async with running(batch_body="guide") as h:
        refused = await h.post(BATCHES, OPENAPI_BODY, expect=422)
        assert h.emu.counters.runs_created == 0
        body = {**GUIDE_BODY, "callback_url": None, "metadata": {"k": "v"}}
        created = await h.post(BATCHES, body)
        batch = await h.get(f"/v1/batches/{created['id']}")
        runs = h.emu.runs()
    assert refused["errors"][0]["field"] == "input"
    assert '{"items": [{"input": {...}}, ...]}' in refused["errors"][0]["message"]
    assert set(created) == {"id", "status_code", "items_total"}
    assert created["items_total"] == 3
    assert [item["client_ref"] for item in batch["items"]] == ["g-0", "g-1", "g-2"]
    assert [run["input"] for run in runs] == [{"prompt": f"p {i}"} for i in range(3)]
    assert {run["metadata"]["k"] for run in runs} == {"v"}


async def test_a_guide_item_may_carry_its_client_ref_inside_its_input() -> None:
    async with running(batch_body="guide") as h:
        body = {"items": [{"input": {"prompt": "a", "client_ref": "inner"}}]}
        created = await h.post(BATCHES, body)
        batch = await h.get(f"/v1/batches/{created['id']}")
        (run,) = h.emu.runs()
    assert batch["items"][0]["client_ref"] == "inner"
    assert run["input"] == {"prompt": "a"}


async def test_guide_item_errors_name_the_item() -> None:
    async with running(batch_body="guide") as h:
        body = {"items": [{"input": {"prompt": "ok"}}, {"input": {"prompt": 5}}, {}, "x"]}
        answer = await h.post(BATCHES, body, expect=422)
        assert h.emu.counters.runs_created == 0
    fields = {error["field"] for error in answer["errors"]}
    assert fields == {"items.1.input.prompt", "items.2.input", "items.3.input"}


async def test_either_takes_both_shapes_but_not_both_at_once() -> None:
    async with running(batch_body="either") as h:
        guide = await h.post(BATCHES, GUIDE_BODY)
        openapi = await h.post(BATCHES, OPENAPI_BODY)
        both = await h.post(BATCHES, {**GUIDE_BODY, **OPENAPI_BODY}, expect=422)
        neither = await h.post(BATCHES, {"metadata": {}}, expect=422)
        counters = h.emu.counters
    assert guide["items_total"] == openapi["items_total"] == 3
    assert "items" in guide  # the full batch object
    assert both["errors"][0]["code"] == "ambiguous_shape"
    assert neither["errors"][0] == {
        "field": "input",
        "message": "is required",
        "code": "required",
    }
    assert (counters.batches_created, counters.runs_created) == (2, 6)


@pytest.mark.parametrize(
    ("mode", "generate", "edit"),
    [("all", 201, 201), ("text-to-image", 201, 422), ("none", 422, 422)],
)
async def test_batch_models_says_which_models_take_batches(
    mode: str, generate: int, edit: int
) -> None:
    edit_item = {"prompt": "e", "image_urls": ["https://example.com/a.png"]}
    async with running(batch_models=mode) as h:
        first = await h.post(BATCHES, {"input": items(2)}, expect=generate)
        url = f"/v1/models/{EDIT}/batches"
        second = await h.post(url, {"input": [edit_item]}, expect=edit)
        counters = h.emu.counters
    refused = [answer for answer in (first, second) if "code" in answer]
    assert all(answer["code"] == "BATCH_NOT_SUPPORTED" for answer in refused)
    assert all("does not support batches" in answer["message"] for answer in refused)
    made = (generate == 201) * 2 + (edit == 201)
    assert counters.runs_created == counters.batch_runs_created == made
    assert counters.runs_billed + counters.in_flight == made


async def test_a_model_without_batches_still_creates_runs_one_by_one() -> None:
    async with running(batch_models="none") as h:
        await h.post(BATCHES, OPENAPI_BODY, expect=422)
        run = await h.create()
    assert run["batch_id"] is None


def test_bad_switch_values_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_body must be one of openapi, guide, either"):
        EmulatorConfig(batch_body="items")
    with pytest.raises(ValueError, match="batch_models must be one of"):
        EmulatorConfig(batch_models="edit")


def _parsed(*flags: str) -> EmulatorConfig:
    parser = argparse.ArgumentParser()
    add_emulator_command(parser.add_subparsers())
    return _config(parser.parse_args(["emulator", *flags]))


async def test_the_cli_flags_reach_the_emulator() -> None:
    config = _parsed("--batch-body", "guide", "--batch-models", "text-to-image", "--port", "0")
    assert (config.batch_body, config.batch_models) == ("guide", "text-to-image")
    defaults = _parsed()
    assert (defaults.batch_body, defaults.batch_models) == ("openapi", "all")
    assert defaults.batch_child_refs
    assert not _parsed("--batch-children-without-refs").batch_child_refs
    assert "batch_create" in defaults.faults.applies_to
    fast = dataclasses.replace(config, **FAST)
    async with Emulator(fast) as emu, aiohttp.ClientSession(emu.url) as http:
        async with http.post(BATCHES, json=GUIDE_BODY, headers=AUTH) as resp:
            assert resp.status == 201
            assert set(await resp.json()) == {"id", "status_code", "items_total"}
        url = f"/v1/models/{EDIT}/batches"
        async with http.post(url, json=GUIDE_BODY, headers=AUTH) as resp:
            assert resp.status == 422
    assert GENERATE in BATCHES
