"""Hypothesis profiles for the fuzz suites.

``ci`` (chosen when ``CI=true``): derandomized so a CI run is reproducible, no
example database (nothing written into the checkout), a bounded example count
so the whole folder stays far below a minute on two cores, and a reproduction
blob printed for any failure. ``dev`` (the default): more examples, and the
usual ``.hypothesis/`` database (git-ignored) so failures replay first.
``HYPOTHESIS_PROFILE`` picks either explicitly.

Async properties that start a server per example run a fifth as many examples
(see ``tests.fuzz.support.async_settings``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, settings

from tests.conftest import Handler
from tests.fuzz.support import Stage

settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None, print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev")
)


@pytest.fixture
async def stage(inline_server: Callable[[Handler], Awaitable[str]]) -> Stage:
    """An inline aiohttp server whose answers each example scripts (``inline_server`` stops it)."""
    served = Stage()
    served.url = await inline_server(served.handle)
    return served
