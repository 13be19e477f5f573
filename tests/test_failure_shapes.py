"""A failed run's reason in either shape: the documented ``failure_*`` and the older ``error{}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from runflow_async import Run, RunFailedError
from tests.conftest import make_client

Server = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]

DOCUMENTED = {"failure_code": "MODEL_ERROR", "failure_message": "the model crashed"}
OLDER = {"error": {"message": "upstream said no", "code": "UPSTREAM_REFUSED"}}


@pytest.mark.parametrize(
    ("shape", "reason", "fields"),
    [
        (
            DOCUMENTED,
            "the model crashed (MODEL_ERROR)",
            ("MODEL_ERROR", "the model crashed", None, None),
        ),
        (
            OLDER,
            "upstream said no (UPSTREAM_REFUSED)",
            ("UPSTREAM_REFUSED", "upstream said no", "UPSTREAM_REFUSED", "upstream said no"),
        ),
        (
            {**DOCUMENTED, **OLDER},
            "the model crashed (MODEL_ERROR); error: upstream said no (UPSTREAM_REFUSED)",
            ("MODEL_ERROR", "the model crashed", "UPSTREAM_REFUSED", "upstream said no"),
        ),
        (
            {**DOCUMENTED, "error": {"message": "the model crashed", "code": "MODEL_ERROR"}},
            "the model crashed (MODEL_ERROR)",  # said once
            ("MODEL_ERROR", "the model crashed", "MODEL_ERROR", "the model crashed"),
        ),
        (
            {"failure_code": "MODEL_ERROR", "error": {"message": "upstream said no"}},
            "upstream said no (MODEL_ERROR)",
            ("MODEL_ERROR", "upstream said no", None, "upstream said no"),
        ),
        ({"error": "plain text"}, "plain text", (None, None, None, "plain text")),
        ({}, "no reason given", (None, None, None, None)),
    ],
)
async def test_a_failed_run_names_its_reason_in_either_shape(
    inline_server: Server,
    shape: dict[str, Any],
    reason: str,
    fields: tuple[str | None, ...],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return web.json_response({"id": "run-1", "status_code": "queued"}, status=201)
        return web.json_response({"id": "run-1", "status_code": "failed", **shape})

    async with make_client(await inline_server(handler)) as client:
        with pytest.raises(RunFailedError) as caught:
            await client.generate("a fox")
        run = await client.get_run("run-1")
    error = caught.value
    assert str(error) == f"Run run-1 failed: {reason}."
    assert (error.failure_code, error.failure_message, error.error_code, error.error_message) == (
        fields
    )
    assert (run.failure_code, run.failure_message, run.error_code, run.error_message) == fields
    assert run.failure_reason == (None if reason == "no reason given" else reason)


def test_a_malformed_error_object_adds_nothing() -> None:
    run = Run.model_validate({"id": "r", "status_code": "failed", "error": {"message": 5}})
    assert (run.error_code, run.error_message, run.failure_reason) == (None, None, None)
