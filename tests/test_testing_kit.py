"""The pytest kit: the example as users run it, the fixtures, the fault and assertion helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

import runflow_async
import runflow_async.testing
from runflow_async import (
    GenerateRequest,
    RateLimitError,
    RetryPolicy,
    RunFailedError,
    RunflowClient,
)
from runflow_async.emulator import Emulator, Fault
from runflow_async.testing import DEFAULT_API_KEY, DEFAULT_SEED, DEFAULT_TIME_SCALE, RunflowKit

# pytest 9 still honours ``pytest_plugins`` in a test module (only non-root conftests
# lost it), so tests/conftest.py stays as it is. Once this module is collected, both
# plugins are active for the rest of the session; their fixture names are namespaced.
pytest_plugins = ["pytester", "runflow_async.testing"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "test_with_the_kit.py"
CONFTEST = 'pytest_plugins = ["runflow_async.testing"]\n'
REQUEST = GenerateRequest(prompt="a red kite over hills", image_size="square_hd")
# Strict like a careful user: unknown markers fail, any warning (an unclosed session) fails.
STRICT = ("-p", "no:cacheprovider", "--strict-markers", "-W", "error")


def user_project(pytester: pytest.Pytester, test_file: str, conftest: str = CONFTEST) -> None:
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_user=test_file)


# -- the example, exactly as a user copies it --------------------------------------------


def test_the_example_passes_as_a_user_runs_it(pytester: pytest.Pytester) -> None:
    # In-process, so that coverage measures the kit as the example drives it: pytest-cov 7
    # measures a subprocess only with coverage's ``patch = subprocess``, which we do not set.
    pytester.makeconftest(CONFTEST)
    shutil.copy(EXAMPLE, pytester.path / EXAMPLE.name)
    result = pytester.runpytest_inprocess(*STRICT)
    result.assert_outcomes(passed=4)


def test_the_example_passes_in_a_fresh_interpreter(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new process imports the plugin from scratch, as `pytest` on a user's machine does.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    pytester.makeconftest(CONFTEST)
    shutil.copy(EXAMPLE, pytester.path / EXAMPLE.name)
    result = pytester.runpytest_subprocess(*STRICT)
    result.assert_outcomes(passed=4)


def test_the_package_imports_neither_the_kit_nor_pytest_and_the_kit_is_public() -> None:
    # pytest is no runtime dependency; a fresh interpreter shows what ``import`` pulls in.
    code = (
        "import sys, runflow_async; print({'pytest', 'runflow_async.testing'} & set(sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(  # noqa: S603 (our own interpreter, a constant script)
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "set()"
    assert "testing" not in runflow_async.__all__
    names = runflow_async.testing.__all__
    assert list(names) == sorted(names)
    assert RunflowKit.__module__ == "runflow_async.testing"


# -- configuration: the fixture, the marker, the backend ---------------------------------


async def test_the_defaults_scale_the_clock_and_accept_the_clients_key(
    runflow_emulator: Emulator, runflow_client: RunflowClient, runflow: RunflowKit
) -> None:
    config = runflow_emulator.config
    assert (config.time_scale, config.seed) == (DEFAULT_TIME_SCALE, DEFAULT_SEED) == (0.001, 0)
    assert config.api_keys == frozenset({DEFAULT_API_KEY})
    assert runflow.emulator is runflow_emulator
    assert runflow_client.base_url == runflow.url == runflow_emulator.url
    assert runflow_client.poll_policy.time_scale == runflow.time_scale
    assert (await runflow_client.health())["status"]
    runflow.assert_requests(health=1)
    assert runflow.responses(200) == 1
    assert runflow.responses(401) == 0


@pytest.mark.parametrize(
    ("api_keys", "expected"),
    [(None, DEFAULT_API_KEY), (frozenset(), DEFAULT_API_KEY), (frozenset({"b", "a"}), "a")],
)
async def test_clients_send_a_key_the_emulator_accepts(
    api_keys: frozenset[str] | None, expected: str
) -> None:
    async with Emulator(api_keys=api_keys, time_scale=0.001) as emulator:
        kit = RunflowKit(emulator)
        assert kit.api_key == expected
        async with kit.client() as client:
            await client.health()
        async with kit.client(api_key="rf_given") as client:
            assert repr(client).startswith("<RunflowClient")


def test_a_marker_changes_one_test_and_the_closest_one_wins(pytester: pytest.Pytester) -> None:
    user_project(
        pytester,
        """
        import pytest

        pytestmark = [pytest.mark.anyio, pytest.mark.runflow_emulator(seed=5, median_duration=3)]

        async def test_module_mark(runflow_emulator):
            config = runflow_emulator.config
            assert (config.seed, config.median_duration) == (5, 3.0)

        @pytest.mark.runflow_emulator(seed=9)
        async def test_closest_mark(runflow_emulator):
            config = runflow_emulator.config
            assert (config.seed, config.median_duration, config.time_scale) == (9, 3.0, 0.001)
        """,
    )
    pytester.runpytest_inprocess(*STRICT).assert_outcomes(passed=2)


def test_a_marker_with_a_wrong_argument_says_so(pytester: pytest.Pytester) -> None:
    user_project(
        pytester,
        """
        import pytest

        pytestmark = pytest.mark.anyio

        @pytest.mark.runflow_emulator(sede=1)
        async def test_typo(runflow_emulator):
            pass

        @pytest.mark.runflow_emulator(0.01)
        async def test_positional(runflow_emulator):
            pass
        """,
    )
    result = pytester.runpytest_inprocess(*STRICT)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.runflow_emulator(...): unknown option 'sede'; did you mean 'seed'?*",
            "*@pytest.mark.runflow_emulator takes keyword arguments only*",
        ]
    )


def test_the_config_fixture_is_overridden_on_top_of_the_default(
    pytester: pytest.Pytester,
) -> None:
    user_project(
        pytester,
        """
        import pytest

        pytestmark = pytest.mark.anyio

        async def test_every_run_fails(runflow_client, runflow):
            assert runflow.time_scale == 0.001
            with pytest.raises(Exception, match="failed"):
                await runflow_client.generate("a cat")
            runflow.assert_billed(runs=0)
        """,
        conftest=CONFTEST
        + """
import dataclasses

import pytest

@pytest.fixture
def runflow_emulator_config(runflow_emulator_config):
    return dataclasses.replace(runflow_emulator_config, failure_rate=1.0)
""",
    )
    pytester.runpytest_inprocess(*STRICT).assert_outcomes(passed=1)


def test_tests_are_skipped_on_the_trio_backend(pytester: pytest.Pytester) -> None:
    user_project(
        pytester,
        """
        import pytest

        @pytest.mark.anyio
        async def test_needs_asyncio(runflow_client):
            pass
        """,
        conftest=CONFTEST
        + """
import pytest

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
""",
    )
    result = pytester.runpytest_inprocess(*STRICT, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*runflow_async runs on asyncio, not on anyio's trio backend*"])


def test_a_failing_kit_assertion_reads_well_in_the_users_report(
    pytester: pytest.Pytester,
) -> None:
    user_project(
        pytester,
        """
        import pytest

        pytestmark = pytest.mark.anyio

        async def test_billed_twice(runflow_client, runflow):
            await runflow_client.generate("a cat", image_size="square_hd")
            runflow.assert_billed(runs=2)
        """,
    )
    result = pytester.runpytest_inprocess(*STRICT)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">*runflow.assert_billed(runs=2)",
            "E*AssertionError: expected 2 runs billed, the emulator billed 1",
            "E*Runflow emulator: runs created=1 billed=1 failed=0, billed_usd=0.006*",
        ]
    )
    assert "_kit.py" not in result.stdout.str()  # the kit's own frames are hidden


# -- fault helpers change what the emulator does -----------------------------------------


async def test_fail_next_answers_the_status_to_the_next_requests(
    runflow_client: RunflowClient, runflow: RunflowKit
) -> None:
    runflow.fail_next("create", 3, status=429)
    run = await runflow_client.submit(REQUEST)
    await runflow_client.wait(run.id)
    runflow.assert_requests(create=4, list_runs=0)
    assert runflow.responses(429) == 3
    runflow.assert_created(runs=1)
    runflow.assert_billed(runs=1, usd=Decimal("0.006"))
    runflow.assert_all_faults_used()


async def test_fail_next_gives_up_like_the_client_would(runflow: RunflowKit) -> None:
    runflow.fail_next("create", status=429, code="RATE_LIMITED", retry_after=7)
    async with runflow.client(retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.submit(REQUEST)
    assert caught.value.retry_after == 7
    runflow.assert_created(runs=0)


async def test_fail_next_can_answer_an_html_page(runflow: RunflowKit) -> None:
    runflow.fail_next("health", status=502, html=True)
    headers = {"Authorization": f"Bearer {runflow.api_key}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{runflow.url}/v1/health", headers=headers) as response:
            assert response.status == 502
            assert response.content_type == "text/html"
        async with session.get(f"{runflow.url}/v1/health", headers=headers) as response:
            assert response.status == 200


async def test_drop_next_closes_the_connection_and_creates_nothing(
    runflow_client: RunflowClient, runflow: RunflowKit
) -> None:
    runflow.drop_next("create")
    await runflow_client.run(REQUEST)
    assert runflow.counters.faults_injected == {"drop": 1}
    runflow.assert_requests(create=2)  # looked up, proven absent, sent again
    runflow.assert_created(runs=1)
    runflow.assert_billed(runs=1)


async def test_slow_next_delays_but_serves(
    runflow_client: RunflowClient, runflow: RunflowKit
) -> None:
    runflow.slow_next("get_run", 2, seconds=5)
    await runflow_client.run(REQUEST)
    assert runflow.counters.faults_injected["slow"] >= 1
    runflow.assert_billed(runs=1)


@pytest.mark.parametrize("status", [502, None], ids=["gateway-page", "dropped"])
async def test_lose_next_create_stores_the_run_and_loses_the_answer(
    runflow_client: RunflowClient, runflow: RunflowKit, status: int | None
) -> None:
    runflow.lose_next_create(status=status)
    await runflow_client.run(REQUEST)
    runflow.assert_requests(create=1)  # found by its client_ref, never sent again
    assert runflow.requests("list_runs") >= 1
    runflow.assert_created(runs=1)
    runflow.assert_billed(runs=1)


async def test_fail_next_run_makes_the_run_fail_unbilled(
    runflow_client: RunflowClient, runflow: RunflowKit
) -> None:
    runflow.fail_next_run(code="NSFW", message="Blocked.")
    with pytest.raises(RunFailedError) as caught:
        await runflow_client.run(REQUEST)
    assert caught.value.run.failure_code == "NSFW"
    assert runflow.counters.runs_failed == 1
    runflow.assert_billed(runs=0, usd=0)


async def test_fault_helpers_refuse_what_the_script_refuses(runflow: RunflowKit) -> None:
    with pytest.raises(ValueError, match="unknown route 'creates'"):
        runflow.fail_next("creates")
    with pytest.raises(ValueError, match="times must be at least 1"):
        runflow.drop_next("get_run", 0)
    with pytest.raises(ValueError, match="400-599"):
        runflow.fail_next("create", status=200)
    runflow.faults.next("callback", Fault.duplicate())  # the rest is one call away
    assert runflow.faults.pending() == 1


# -- assertion helpers fail with a readable message --------------------------------------


async def test_assert_created_names_both_counts(runflow: RunflowKit) -> None:
    runflow.assert_created(runs=0)
    with pytest.raises(AssertionError, match=r"expected 1 run created, the emulator created 0"):
        runflow.assert_created(runs=1)
    with pytest.raises(AssertionError, match=r"expected 2 runs created"):
        runflow.assert_created(2)


async def test_assert_billed_names_what_differs(
    runflow_client: RunflowClient, runflow: RunflowKit
) -> None:
    await runflow_client.run(REQUEST)
    runflow.assert_billed(runs=1)
    runflow.assert_billed(usd=0.006)
    runflow.assert_billed(1, usd="0.006")
    with pytest.raises(AssertionError) as caught:
        runflow.assert_billed(runs=3, usd=1)
    message = str(caught.value)
    assert message.startswith(
        "expected 3 runs billed, the emulator billed 1; "
        "expected $1 billed, the emulator billed $0.006"
    )
    assert "\nRunflow emulator: runs created=1 billed=1 failed=0" in message
    with pytest.raises(AssertionError, match=r"^expected \$0.012 billed"):
        runflow.assert_billed(usd=0.012)
    with pytest.raises(TypeError, match="needs runs= or usd="):
        runflow.assert_billed()


async def test_assert_requests_lists_every_route_that_differs(
    runflow_client: RunflowClient, runflow: RunflowKit
) -> None:
    await runflow_client.health()
    runflow.assert_requests(health=1, create=0)
    with pytest.raises(AssertionError) as caught:
        runflow.assert_requests(health=2, create=1, get_run=0)
    assert str(caught.value).startswith(
        "requests by route differ: health: expected 2, got 1; create: expected 1, got 0\n"
    )
    with pytest.raises(ValueError, match=r"unknown route 'creates'; the emulator counts .*create"):
        runflow.assert_requests(creates=1)


async def test_assert_all_faults_used_says_how_many_are_left(runflow: RunflowKit) -> None:
    runflow.assert_all_faults_used()
    runflow.fail_next("create", 2, status=503)
    with pytest.raises(AssertionError, match="2 scripted faults never injected"):
        runflow.assert_all_faults_used()


async def test_the_summary_says_none_before_anything_happened(runflow: RunflowKit) -> None:
    assert runflow.summary() == (
        "runs created=0 billed=0 failed=0, billed_usd=0; requests: none; "
        "responses: none; faults injected: none"
    )
    assert repr(runflow) == f"<RunflowKit url={runflow.url!r} {runflow.summary()}>"


def test_the_marker_reaches_the_list_filters_and_background_runs(
    pytester: pytest.Pytester,
) -> None:
    user_project(
        pytester,
        """
        import aiohttp
        import pytest

        @pytest.mark.anyio
        @pytest.mark.runflow_emulator(list_filters="no-id", background_runs=0.5)
        async def test_lists(runflow):
            headers = {"Authorization": f"Bearer {runflow.api_key}"}
            async with aiohttp.ClientSession(runflow.url, headers=headers) as http:
                create = "/v1/models/black-forest-labs/flux-2-klein-9b/runs"
                async with http.post(create, json={"input": {"prompt": "a"}}) as resp:
                    assert resp.status == 201
                async with http.get("/v1/runs", params={"q": "id:x"}) as resp:
                    assert resp.status == 400
                async with http.get("/v1/runs") as resp:
                    assert len((await resp.json())["items"]) == 2
            counters = runflow.counters
            assert (counters.runs_created, counters.background_created) == (1, 1)
            assert (counters.list_refused, counters.listed_background) == (1, 1)
            runflow.assert_created(1)
        """,
    )
    pytester.runpytest_inprocess(*STRICT).assert_outcomes(passed=1)
