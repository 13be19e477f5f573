"""``runflow-async emulator`` in its own process, with the limits and billing flags."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from runflow_async._cli.main import main
from runflow_async._pricing import PricingPolicy
from tests.emulator.emulator_support import AUTH, GENERATE

ROOT = Path(__file__).resolve().parents[2]
CREATE = f"/v1/models/{GENERATE}/runs"
BODY = {"input": {"prompt": "a red fox"}}


@asynccontextmanager
async def _cli_emulator(*flags: str) -> AsyncIterator[aiohttp.ClientSession]:
    """Start the command on a free port; yield a session bound to the URL it prints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "runflow_async", "emulator", "--port", "0", *flags]
    # A real process is the point (started once, not awaited); the arguments are our own.
    with subprocess.Popen(  # noqa: ASYNC220, S603
        command, stdout=subprocess.PIPE, env=env, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            url = line.split()[3]
            assert url.startswith("http://127.0.0.1:")
            assert not url.endswith(":0")
            async with aiohttp.ClientSession(url) as http:
                yield http
        finally:
            proc.send_signal(signal.SIGINT)
            await anyio.to_thread.run_sync(proc.wait, 10)
    assert proc.returncode == 0


async def _post(http: aiohttp.ClientSession) -> tuple[int, Any, str | None]:
    async with http.post(CREATE, json=BODY, headers=AUTH) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")


async def test_limit_flags_reach_the_emulator() -> None:
    flags = ["--time-scale", "1", "--median-duration", "1000", "--duration-sigma", "0"]
    flags += ["--max-in-flight-runs", "2", "--create-rate", "0.001", "--create-burst", "2"]
    flags += ["--rate-limit-retry-after", "0.5"]
    async with _cli_emulator(*flags) as http:
        statuses = [(await _post(http))[0] for _ in range(2)]
        status, body, retry_after = await _post(http)
        async with http.get("/_emulator/report") as resp:
            report = await resp.json()
    assert statuses == [201, 201]  # a burst of two
    assert (status, retry_after) == (429, "1")
    assert body["message"] == "Rate limit exceeded: 2 runs in flight, at most 2 allowed."
    assert report["time_scale"] == 1.0
    assert [row["duration"] for row in report["runs"]] == [1000.0, 1000.0]


async def test_billing_and_retention_flags_reach_the_emulator() -> None:
    price = PricingPolicy().generate_cost(None)
    flags = ["--time-scale", "0.0001", "--median-duration", "1", "--duration-sigma", "0"]
    flags += ["--cost-multiplier", "2", "--credit-usd", str(price * 3), "--retain-runs", "1"]
    async with _cli_emulator(*flags) as http:
        ids = [(await _post(http))[1]["id"] for _ in range(2)]
        await anyio.sleep(0.01)  # 100 emulated seconds: both runs have ended
        refused = await _post(http)
        async with http.get(f"/v1/runs/{ids[0]}", headers=AUTH) as resp:
            evicted = resp.status
        async with http.get(f"/v1/runs/{ids[1]}", headers=AUTH) as resp:
            kept = await resp.json()
    assert Decimal(kept["cost"]) == price * 2
    assert refused[0] == 402  # 4 prices billed, 3 of credit
    assert evicted == 404


def test_an_invalid_flag_value_exits_2_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["emulator", "--retain-runs", "0"]) == 2
    assert "retain_runs must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--cost-multiplier", "abc"], ["--credit-usd", "1,5"]])
def test_a_malformed_amount_is_a_usage_error(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["emulator", *flags])
    assert exit_info.value.code == 2
    assert "not a decimal number" in capsys.readouterr().err


def test_a_nan_credit_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emulator", "--credit-usd", "NaN"]) == 2
    assert "credit_usd must be a finite amount" in capsys.readouterr().err


def test_the_callback_null_output_rate_flag_is_validated_as_a_fraction(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["emulator", "--callback-null-output-rate", "1.5"]) == 2
    assert "callback_null_output_rate must be between 0 and 1" in capsys.readouterr().err


async def test_fault_flags_reach_the_emulator() -> None:
    flags = ["--time-scale", "1", "--median-duration", "1000", "--seed", "3"]
    flags += ["--rate-5xx", "1", "--rate-5xx-html", "0", "--fault-only", "5xx=list_runs"]
    flags += ["--rate-429", "0", "--fault-routes", "create,list_runs"]
    async with _cli_emulator(*flags) as http:
        created = [await _post(http) for _ in range(3)]
        async with http.get("/v1/runs", headers=AUTH) as resp:
            listed = resp.status
        async with http.get(f"/v1/runs/{created[0][1]['id']}", headers=AUTH) as resp:
            read = resp.status  # get_run draws nothing: not in --fault-routes
        async with http.post("/_emulator/credit", json={"credit_usd": "0"}) as resp:
            assert resp.status == 200
        refused, *_ = await _post(http)
        async with http.get("/_emulator/counters") as resp:
            counters = await resp.json()
    assert [status for status, *_ in created] == [201, 201, 201]
    assert (listed, read, refused) == (503, 200, 402)
    assert counters["faults_injected"] == {"status_503": 1}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rate-429", "0.7", "--rate-drop", "0.7"], "add up to"),
        (["--rate-lost-create", "2"], "rate_lost_create must be between 0 and 1"),
        (["--fault-routes", "create,counters"], "unknown routes in applies_to"),
        (["--fault-only", "5xx=health"], "names routes not in applies_to"),
        (["--fault-only", "teapot=create"], "only_on takes the kinds"),
    ],
)
def test_invalid_fault_flags_exit_2_with_the_reason(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["emulator", *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("scope", ["5xx", "=create", "5xx="])
def test_a_malformed_fault_scope_is_a_usage_error(
    scope: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["emulator", "--fault-only", scope])
    assert exit_info.value.code == 2
    assert "expected KIND=ROUTE" in capsys.readouterr().err


async def test_list_filter_and_background_flags_reach_the_emulator() -> None:
    flags = ["--time-scale", "1", "--median-duration", "1000", "--list-filters", "no-id"]
    flags += ["--background-runs", "0.5"]
    async with _cli_emulator(*flags) as http:
        created = [await _post(http) for _ in range(2)]
        async with http.get("/v1/runs", params={"q": "id:x"}, headers=AUTH) as resp:
            refused = resp.status, (await resp.json())["code"]
        async with http.get("/v1/runs", params={"q": "status_code:queued"}, headers=AUTH) as resp:
            listed = await resp.json()
        async with http.get("/_emulator/counters") as resp:
            counters = await resp.json()
    assert [status for status, *_ in created] == [201, 201]
    assert refused == (400, "INVALID_QUERY")
    assert len(listed["items"]) == 4
    assert (counters["runs_created"], counters["background_created"]) == (2, 2)
    assert counters["list_requests_by_filter"]["id"] == 1
    assert counters["list_requests_by_filter"]["documented"] == 1
    assert (counters["list_refused"], counters["list_pages"]) == (1, 1)
    assert (counters["listed_runs"], counters["listed_background"]) == (4, 2)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--background-runs", "1"], "background_runs must be in [0, 1)"),
        (["--list-filters", "no-id", "--list-ignores-filter"], "contradicts"),
    ],
)
def test_bad_list_flags_exit_2_with_the_reason(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["emulator", *flags]) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_list_filter_mode_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["emulator", "--list-filters", "some"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'some'" in capsys.readouterr().err
