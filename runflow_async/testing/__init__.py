"""A pytest plugin for testing code that uses runflow_async, against the emulator.

Enable it in your ``conftest.py`` (install ``runflow-async[testing]``)::

    pytest_plugins = ["runflow_async.testing"]

Async tests run on **anyio's pytest plugin** (anyio is a dependency of runflow_async
and registers its plugin itself) on the asyncio backend: mark them
``pytest.mark.anyio``, or set ``anyio_mode = "auto"`` in your pytest configuration.
pytest-asyncio is not supported. Under anyio's trio backend the kit's fixtures skip
the test, since aiohttp runs on asyncio only. A test looks like::

    pytestmark = pytest.mark.anyio

    async def test_retried_create_is_billed_once(runflow_client, runflow):
        runflow.fail_next("create", 3, status=429)
        await runflow_client.generate("a cat")
        runflow.assert_billed(runs=1)
        runflow.assert_requests(create=4)

Fixtures (all per test):

* ``runflow_emulator``: a started :class:`~runflow_async.emulator.Emulator`.
* ``runflow_client``: an open :class:`~runflow_async.RunflowClient` bound to it,
  with retry and poll waits scaled to the emulator's clock.
* ``runflow``: a :class:`RunflowKit` to script faults and assert on the counters.
* ``runflow_emulator_config``: the :class:`~runflow_async.emulator.EmulatorConfig`
  used (time scale 0.001, seed 0); override it in a conftest or module.

One test can change fields with ``@pytest.mark.runflow_emulator(failure_rate=1.0)``.

PYTEST_DONT_REWRITE: the kit raises its own ``AssertionError`` messages, so pytest
need not rewrite it (nor warn when it was imported before the plugin was loaded).
"""

from runflow_async.testing._kit import DEFAULT_API_KEY, RunflowKit
from runflow_async.testing._plugin import (
    DEFAULT_SEED,
    DEFAULT_TIME_SCALE,
    MARKER,
    pytest_configure,
    runflow,
    runflow_client,
    runflow_emulator,
    runflow_emulator_config,
)

# pytest finds a plugin's fixtures among its module's attributes; this one is private.
from runflow_async.testing._plugin import _runflow_on_asyncio as _runflow_on_asyncio

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_SEED",
    "DEFAULT_TIME_SCALE",
    "MARKER",
    "RunflowKit",
    "pytest_configure",
    "runflow",
    "runflow_client",
    "runflow_emulator",
    "runflow_emulator_config",
]

RunflowKit.__module__ = __name__
