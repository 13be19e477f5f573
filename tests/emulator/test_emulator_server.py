"""The Emulator object, its configuration, the public namespace and ``serve()``."""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

import aiohttp
import anyio
import pytest

import runflow_async.emulator as emulator_pkg
from runflow_async.emulator import Emulator, EmulatorConfig, serve


def test_the_public_namespace_is_sorted_and_shows_the_public_module() -> None:
    names = emulator_pkg.__all__
    assert list(names) == sorted(names)
    assert set(names) == {
        "CallbackFaults",
        "Emulator",
        "EmulatorConfig",
        "EmulatorCounters",
        "Fault",
        "FaultRates",
        "FaultScript",
        "serve",
    }
    for name in names:
        obj = getattr(emulator_pkg, name)
        if isinstance(obj, type):
            assert obj.__module__ == "runflow_async.emulator"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"port": 70000}, "port"),
        ({"time_scale": 0.0}, "time_scale"),
        ({"median_duration": 0.0}, "median_duration"),
        ({"duration_sigma": -0.1}, "median_duration"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"url_ttl": -1.0}, "url_ttl"),
        ({"cost_multiplier": Decimal(-1)}, "cost_multiplier"),
        ({"cost_multiplier": Decimal("NaN")}, "cost_multiplier"),
        ({"credit_usd": Decimal("-0.01")}, "credit_usd"),
        ({"credit_usd": Decimal("Infinity")}, "credit_usd"),
        ({"time_scale": float("nan")}, "time_scale"),
        ({"time_scale": float("inf")}, "time_scale"),
        ({"median_duration": float("nan")}, "median_duration"),
        ({"url_ttl": float("nan")}, "url_ttl"),
    ],
)
def test_invalid_configuration_is_refused(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EmulatorConfig(**overrides)


def test_overrides_replace_fields_of_the_given_config() -> None:
    base = EmulatorConfig(seed=3, failure_rate=0.25)
    emu = Emulator(base, seed=9)
    assert emu.config.seed == 9
    assert emu.config.failure_rate == 0.25
    assert Emulator().config == EmulatorConfig()


async def test_lifecycle_guards_port_before_start_double_start_and_repeated_close() -> None:
    emu = Emulator()
    with pytest.raises(RuntimeError, match="not been started"):
        _ = emu.port
    async with emu:
        assert emu.url == f"http://127.0.0.1:{emu.port}"
        with pytest.raises(RuntimeError, match="only once"):
            await emu.start()
    await emu.aclose()
    with pytest.raises(RuntimeError, match="only once"):
        await emu.start()


def test_an_ipv6_host_is_bracketed_in_urls() -> None:
    emu = Emulator(host="::1", port=8787)
    assert emu.runs() == []
    emu._port = 8787  # as start() would set it
    assert emu.url == "http://[::1]:8787"


def test_the_clock_only_moves_forward() -> None:
    with pytest.raises(ValueError, match="forward"):
        Emulator().advance(-1.0)


async def test_serve_runs_until_cancelled() -> None:
    ready: list[Emulator] = []
    started = anyio.Event()

    def on_ready(emu: Emulator) -> None:
        ready.append(emu)
        started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(serve, EmulatorConfig(seed=1), on_ready=on_ready))
        await started.wait()
        (emu,) = ready
        async with aiohttp.ClientSession() as http, http.get(f"{emu.url}/v1/health") as resp:
            assert resp.status == 200
        tg.cancel_scope.cancel()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(f"{emu.url}/v1/health"):
            pass


async def test_serve_without_a_ready_hook_also_stops_on_cancel() -> None:
    with anyio.move_on_after(0.01):
        await serve(EmulatorConfig())
