"""Test your own code against the emulator with the pytest kit.

Copy this file into your tests, and enable the kit in your conftest.py:

    pytest_plugins = ["runflow_async.testing"]

Install it with `pip install 'runflow-async[testing]'`, then run `pytest`.
"""

# ruff: noqa: S101  (asserts are how pytest tests check things)

from __future__ import annotations

import pytest

from runflow_async import RunFailedError, RunflowClient
from runflow_async.testing import RunflowKit

# The kit's fixtures are async: anyio's pytest plugin (installed with runflow_async) runs them.
pytestmark = pytest.mark.anyio


async def make_poster(client: RunflowClient, title: str) -> str:
    """The code under test: yours takes a client, so tests can hand it one."""
    result = await client.generate(f"a poster for {title}", image_size="square_hd", seed=1)
    return result.images[0].url


async def test_a_poster_is_one_billed_image(
    runflow_client: RunflowClient, runflow: RunflowKit
) -> None:
    url = await make_poster(runflow_client, "a jazz night")

    assert url.startswith(runflow.url)
    runflow.assert_billed(runs=1, usd="0.006")  # 1024x1024 is 1 MP at $0.006


async def test_rate_limited_creates_are_retried_and_billed_once(
    runflow_client: RunflowClient, runflow: RunflowKit
) -> None:
    runflow.fail_next("create", 3, status=429)  # the next 3 creates answer 429

    await make_poster(runflow_client, "a jazz night")

    runflow.assert_requests(create=4)
    runflow.assert_billed(runs=1)


async def test_a_lost_create_response_is_found_not_resent(
    runflow_client: RunflowClient, runflow: RunflowKit
) -> None:
    runflow.lose_next_create()  # the run is created, its answer is a 502 page

    await make_poster(runflow_client, "a jazz night")

    runflow.assert_created(runs=1)
    assert runflow.requests("list_runs") >= 1  # found by its client_ref
    runflow.assert_billed(runs=1)


@pytest.mark.runflow_emulator(failure_rate=1.0)  # every run fails, for this test only
async def test_a_failed_run_raises_and_costs_nothing(
    runflow_client: RunflowClient, runflow: RunflowKit
) -> None:
    with pytest.raises(RunFailedError):
        await make_poster(runflow_client, "a jazz night")

    runflow.assert_billed(runs=0, usd=0)
