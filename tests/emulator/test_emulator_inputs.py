"""Edit inputs that are the emulator's own outputs are billed at their real size."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from runflow_async._pricing import PricingPolicy, Size
from tests.emulator.emulator_support import EDIT, FROZEN, Harness, running

POLICY = PricingPolicy()
PORTRAIT: Size = (576, 1024)  # portrait_16_9, a size the policy never assumes


async def _output_url(h: Harness, **fields: Any) -> str:
    """Create a text-to-image run, let it finish, and return its first output URL."""
    run = await h.create(input={"image_size": "portrait_16_9", **fields})
    h.emu.advance(1000.0)
    done = await h.get(f"/v1/runs/{run['id']}")
    url: str = done["output"]["outputs"][0]["url"]
    return url


async def _edit(h: Harness, urls: list[str], **fields: Any) -> tuple[Decimal, Size]:
    """Run an edit of ``urls`` to the end; return its cost and output size."""
    run = await h.create(model=EDIT, input={"image_urls": urls, **fields})
    h.emu.advance(1000.0)
    done = await h.get(f"/v1/runs/{run['id']}")
    out = done["output"]["outputs"][0]
    return Decimal(done["cost"]), (out["width"], out["height"])


async def test_an_edit_of_the_emulators_own_output_is_billed_with_that_size() -> None:
    async with running(**FROZEN) as h:
        url = await _output_url(h)
        cost, size = await _edit(h, [url])
    assert cost == POLICY.edit_cost([PORTRAIT], None)
    assert cost != POLICY.edit_cost([None], None)  # the assumption would bill otherwise
    assert size == POLICY.default_edit_output_size(PORTRAIT) == PORTRAIT


async def test_known_and_unknown_inputs_mix_and_the_query_is_ignored() -> None:
    async with running(**FROZEN) as h:
        url = await _output_url(h, num_images=2)
        second = url.split("?")[0].replace("/0.png", "/1.png")  # unsigned, other image
        urls = ["https://cdn.example/a.png", second, url]
        cost, size = await _edit(h, urls, image_size="square")
    assert cost == POLICY.edit_cost([None, PORTRAIT, PORTRAIT], (512, 512))
    assert size == (512, 512)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda url: url.replace("127.0.0.1", "localhost"),  # another host
        lambda url: url.replace("/0.png", "/1.png"),  # no such image
        lambda url: url.replace("/0.png", "/0.jpg"),  # wrong extension
        lambda url: url.replace("/files/", "/other/"),  # not a file path
        lambda url: url.replace("/files/0", "/files/f"),  # no such run
        lambda url: "http://[::1/files/x/0.png",  # does not even parse
    ],
)
async def test_anything_else_is_billed_as_the_policy_assumes(mangle: Any) -> None:
    async with running(**FROZEN) as h:
        url = await _output_url(h)
        cost, size = await _edit(h, [mangle(url)])
    assert cost == POLICY.edit_cost([None], None)
    assert size == POLICY.default_edit_output_size(None)


async def test_an_evicted_runs_output_is_billed_as_the_policy_assumes() -> None:
    async with running(**FROZEN, retain_runs=1) as h:
        url = await _output_url(h)
        await h.create()
        h.emu.advance(1000.0)  # the source run is evicted
        cost, _ = await _edit(h, [url])
    assert cost == POLICY.edit_cost([None], None)
