"""The fixtures and the marker: an emulator per test, a client bound to it, the kit."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runflow_async import RunflowClient
from runflow_async._keywords import unknown_names_message
from runflow_async.emulator import Emulator, EmulatorConfig
from runflow_async.testing._kit import DEFAULT_API_KEY, RunflowKit

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_TIME_SCALE",
    "MARKER",
    "pytest_configure",
    "runflow",
    "runflow_client",
    "runflow_emulator",
    "runflow_emulator_config",
]

DEFAULT_TIME_SCALE = 0.001
"""Real seconds per emulated second: a "2 s" run takes 2 ms."""
DEFAULT_SEED = 0
"""Seed of every random draw of the emulator (durations, ids, random faults)."""
MARKER = "runflow_emulator"
"""``@pytest.mark.runflow_emulator(**fields)``: ``EmulatorConfig`` fields for one test."""

_FIELDS = frozenset(f.name for f in dataclasses.fields(EmulatorConfig))


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, so that ``--strict-markers`` accepts it."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**fields): EmulatorConfig fields replacing those of "
        "runflow_emulator_config for this test (runflow_async.testing).",
    )


def _marked_overrides(node: pytest.Item) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    # Farthest first (module, class, function), so that the closest marker wins.
    for mark in reversed(list(node.iter_markers(MARKER))):
        if mark.args:
            pytest.fail(f"@pytest.mark.{MARKER} takes keyword arguments only", pytrace=False)
        where = f"@pytest.mark.{MARKER}(...)"
        if unknown := unknown_names_message(mark.kwargs, _FIELDS, where=where):
            pytest.fail(f"{unknown} (EmulatorConfig fields)", pytrace=False)
        overrides.update(mark.kwargs)
    return overrides


@pytest.fixture
def runflow_emulator_config() -> EmulatorConfig:
    """The emulator's configuration: override this fixture to change it for many tests.

    The default: a clock scaled by ``DEFAULT_TIME_SCALE`` (0.001), ``seed=0``, and
    only ``DEFAULT_API_KEY`` accepted. Build on it by requesting it in your override::

        @pytest.fixture
        def runflow_emulator_config(runflow_emulator_config):
            return dataclasses.replace(runflow_emulator_config, failure_rate=0.2)
    """
    return EmulatorConfig(
        api_keys=frozenset({DEFAULT_API_KEY}),
        seed=DEFAULT_SEED,
        time_scale=DEFAULT_TIME_SCALE,
    )


@pytest.fixture
def _runflow_on_asyncio(anyio_backend_name: str) -> None:
    # aiohttp runs on asyncio only; under trio the emulator could not even start.
    if anyio_backend_name != "asyncio":
        pytest.skip(f"runflow_async runs on asyncio, not on anyio's {anyio_backend_name} backend")


@pytest.fixture
async def runflow_emulator(
    runflow_emulator_config: EmulatorConfig,
    request: pytest.FixtureRequest,
    _runflow_on_asyncio: None,
) -> AsyncIterator[Emulator]:
    """A started emulator on 127.0.0.1 (a free port), stopped after the test.

    Its configuration is ``runflow_emulator_config`` with the fields of any
    ``@pytest.mark.runflow_emulator(...)`` marks applied, the closest mark last.
    """
    overrides = _marked_overrides(request.node)
    async with Emulator(runflow_emulator_config, **overrides) as emulator:
        yield emulator


@pytest.fixture
def runflow(runflow_emulator: Emulator) -> RunflowKit:
    """The kit: fault helpers and assertions on what ``runflow_emulator`` saw."""
    return RunflowKit(runflow_emulator)


@pytest.fixture
async def runflow_client(runflow: RunflowKit) -> AsyncIterator[RunflowClient]:
    """An open ``RunflowClient`` bound to ``runflow_emulator``, closed after the test.

    It sends a key the emulator accepts, and its retry and poll waits are scaled
    like the emulator's clock. For other client options use ``runflow.client(...)``.
    """
    async with runflow.client() as client:
        yield client
