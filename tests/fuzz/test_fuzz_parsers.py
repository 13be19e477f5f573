"""The pure parsers, fuzzed fast: only pydantic's ValidationError or our typed errors come out."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict

from runflow_async import (
    TERMINAL_STATUSES,
    APIResponseError,
    APIStatusError,
    CallbackPayload,
    GenerationResult,
    Run,
    RunError,
    RunPage,
    RunStatus,
)
from runflow_async._core.models import parse_error_body
from runflow_async._http.errors import error_for_status, status_error
from runflow_async._http.jsonio import parse_json as _parse_json
from runflow_async._http.runs import check_outcome
from tests.fuzz.support import (
    STATUS_CODES,
    bodies,
    dumps,
    good_runs,
    json_values,
    run_dicts,
    statuses,
    wild_json,
)


def exercise(run: Run) -> None:
    """Touch every derived property; none may raise."""
    assert isinstance(run.id, str)
    known = {status.value for status in RunStatus}
    assert run.status == (run.status_code if run.status_code in known else None)
    assert run.is_terminal == (run.status in TERMINAL_STATUSES)
    assert not (run.succeeded and run.canceled)
    assert run.failure_stage is None or isinstance(run.failure_stage, str)
    assert all(isinstance(image.url, str) for image in run.images)
    assert repr(run).startswith("Run(id=")
    result = GenerationResult(run)
    assert (result.run_id, result.cost_usd, result.images) == (run.id, run.cost, run.images)
    assert result.seed is None or isinstance(result.seed, int)
    if run.is_terminal:
        try:
            outcome: Run | RunError = check_outcome(run)
        except RunError as exc:
            outcome = exc
        if isinstance(outcome, Run):
            assert outcome.succeeded
        else:
            assert outcome.run_id == run.id
            assert run.id in str(outcome)


@given(st.one_of(wild_json, run_dicts))
def test_any_json_is_a_run_or_a_validation_error(data: Any) -> None:
    try:
        run = Run.model_validate(data)
    except pydantic.ValidationError:
        return
    exercise(run)
    if run.cost is not None:
        assert run.cost.is_finite()


@given(good_runs)
def test_well_formed_runs_parse_to_what_was_sent(data: dict[str, Any]) -> None:
    run = Run.model_validate(data)
    assert (run.id, run.status_code, run.client_ref) == (
        data["id"],
        data["status_code"],
        data["client_ref"],
    )
    if "cost" in data:
        assert run.cost == Decimal(data["cost"])
    if "output" in data:
        assert [image.url for image in run.images] == [o["url"] for o in data["output"]["outputs"]]
    exercise(run)


@given(
    run_id=st.text(min_size=1, max_size=10),
    error=st.fixed_dictionaries({"code": st.text(min_size=1), "message": st.text(min_size=1)}),
    documented=st.sampled_from(["absent", "null"]),
)
def test_legacy_id_and_error_fill_documented_fields_that_are_absent_or_null(
    run_id: str, error: dict[str, str], documented: str
) -> None:
    data: dict[str, Any] = {"run_id": run_id, "error": error}
    if documented == "null":
        data |= {"id": None, "failure_code": None, "failure_message": None}
    run = Run.model_validate(data)
    assert (run.id, run.failure_code, run.failure_message) == (
        run_id,
        error["code"],
        error["message"],
    )


def test_regression_a_null_failure_code_does_not_hide_the_legacy_error_object() -> None:
    # Found by the property above: setdefault kept the explicit null.
    run = Run.model_validate(
        {"id": "r", "failure_code": None, "error": {"code": "NSFW", "message": "flagged"}}
    )
    assert (run.failure_code, run.failure_message) == ("NSFW", "flagged")


@given(
    st.one_of(
        wild_json,
        st.fixed_dictionaries(
            {"items": st.lists(run_dicts, max_size=3) | wild_json},
            optional={"next_pq": wild_json, "prev_pq": wild_json},
        ),
    )
)
def test_any_json_is_a_run_page_or_a_validation_error(data: Any) -> None:
    try:
        page = RunPage.model_validate(data)
    except pydantic.ValidationError:
        return
    for run in page.items:
        exercise(run)
    assert page.next_cursor is None or isinstance(page.next_cursor, str)


@given(st.lists(good_runs, max_size=4), st.text(max_size=8) | st.none())
def test_well_formed_pages_keep_every_run_and_the_cursor(
    items: list[dict[str, Any]], cursor: str | None
) -> None:
    page = RunPage.model_validate({"items": items, "next_pq": cursor, "prev_pq": None})
    assert [run.id for run in page.items] == [item["id"] for item in items]
    assert page.next_cursor == cursor


callbacks = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from(["run.completed", "run.failed", "run.cancelled", "x"]) | wild_json,
        "run_id": st.text(max_size=10) | wild_json,
        "status": st.sampled_from(STATUS_CODES) | wild_json,
        "output": wild_json,
        "duration_ms": wild_json,
        "created_at": st.just("2026-04-08T12:00:00+00:00") | wild_json,
        "metadata": wild_json,
    },
)


@given(st.one_of(bodies, callbacks.map(dumps)))
def test_any_callback_body_is_a_payload_or_a_validation_error(raw: bytes) -> None:
    try:
        payload = CallbackPayload.model_validate_json(raw)
    except pydantic.ValidationError:
        return
    status = payload.run_status
    assert status is None or isinstance(status, RunStatus)
    assert payload.output is None or isinstance(payload.output, dict)


@given(
    run_id=st.text(max_size=10),
    status=st.sampled_from(STATUS_CODES),
    output=st.none() | st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    metadata=st.none() | st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    duration=st.none() | st.integers(0, 10**9),
)
def test_well_formed_callbacks_parse_to_what_was_sent(
    run_id: str,
    status: str,
    output: dict[str, Any] | None,
    metadata: dict[str, Any] | None,
    duration: int | None,
) -> None:
    body = {
        "event": "run.completed",
        "run_id": run_id,
        "status": status,
        "output": output,
        "duration_ms": duration,
        "created_at": "2026-04-08T12:00:00+00:00",
        "metadata": metadata,
    }
    payload = CallbackPayload.model_validate_json(dumps(body))
    assert (payload.run_id, payload.status, payload.output, payload.metadata) == (
        run_id,
        status,
        output,
        metadata,
    )
    assert payload.duration_ms == duration
    assert payload.run_status == (RunStatus.parse(status) or RunStatus.SUCCEEDED)


error_bodies = st.fixed_dictionaries(
    {},
    optional={
        "code": st.text(max_size=6) | wild_json,
        "message": st.text(max_size=6) | wild_json,
        "errors": st.lists(wild_json, max_size=2) | wild_json,
        "error": st.fixed_dictionaries(
            {}, optional={"code": st.text(max_size=6) | wild_json, "message": wild_json}
        )
        | st.text(max_size=6)
        | wild_json,
        "detail": st.text(max_size=6) | st.lists(wild_json, max_size=2) | wild_json,
    },
)


def texts_at(data: dict[str, Any], *paths: tuple[str, ...]) -> list[str]:
    """The non-empty strings found at ``paths`` of ``data``, in order."""
    found = []
    for path in paths:
        value: Any = data
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            found.append(value)
    return found


@given(st.one_of(wild_json, error_bodies))
@example({"code": 5, "error": {"code": "RATE_LIMITED"}})  # the regression below
def test_error_bodies_yield_the_first_well_typed_value_of_each_part(data: Any) -> None:
    code, message, errors = parse_error_body(data)
    assert isinstance(errors, list)
    if not isinstance(data, dict):
        assert (code, message, errors) == (None, None, [])
        return
    codes = texts_at(data, ("code",), ("error", "code"))
    assert code == (codes[0] if codes else None)
    messages = texts_at(data, ("message",), ("error", "message"), ("error",), ("detail",))
    if messages:
        assert message == messages[0]
    elif isinstance(data.get("detail"), list):
        assert message == "Request validation failed"
    else:
        assert message is None
    lists = [v for v in (data.get("errors"), data.get("detail")) if isinstance(v, list) and v]
    assert errors == (lists[0] if lists else [])


def test_regression_a_wrongly_typed_code_does_not_hide_the_nested_one() -> None:
    # Found by the property above: `code or nested["code"]` kept the 5, then dropped it.
    assert parse_error_body({"code": 5, "error": {"code": "RATE_LIMITED", "message": "m"}}) == (
        "RATE_LIMITED",
        "m",
        [],
    )
    assert parse_error_body({"message": ["x"], "detail": "why"})[1] == "why"


@given(bodies, statuses)
def test_success_bodies_are_json_or_a_response_error(body: bytes, status: int) -> None:
    try:
        data = _parse_json(body, status, "rid", "GET", "/v1/runs/x")
    except APIResponseError as exc:
        data = exc
    if isinstance(data, APIResponseError):
        assert (data.status, data.request_id, data.retryable) == (status, "rid", False)
        assert "/v1/runs/x" in str(data)
    else:
        assert data is None or isinstance(data, dict | list | str | int | float | bool)


retry_after = st.text(max_size=30) | st.sampled_from(
    ["0", "2", "-1", "1e309", "inf", "nan", "Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 99 Oct"]
)


@given(bodies, statuses.filter(lambda s: s >= 300), retry_after | st.none())
def test_error_statuses_map_to_their_class_whatever_the_body(
    body: bytes, status: int, retry: str | None
) -> None:
    headers = CIMultiDict[str]() if retry is None else CIMultiDict({"Retry-After": retry})
    error = status_error(
        status, body, headers, request_id="rid", method="POST", path="/v1/models/m/runs"
    )
    assert type(error) is error_for_status(status)
    assert isinstance(error, APIStatusError)
    assert (error.status, error.request_id, error.method) == (status, "rid", "POST")
    assert error.code is None or isinstance(error.code, str)
    assert str(error).startswith(f"HTTP {status}")
    assert error.retry_after is None or (
        math.isfinite(error.retry_after) and error.retry_after >= 0
    )


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000])
def test_regression_absurdly_deep_json_is_a_typed_error_not_a_recursion_error(
    body: bytes,
) -> None:
    # Found by the properties above: json.loads raises RecursionError, not ValueError.
    with pytest.raises(APIResponseError):
        _parse_json(body, 200, None, "GET", "/v1/runs/x")
    error = status_error(502, body, CIMultiDict(), method="GET", path="/v1/runs/x")
    assert type(error) is error_for_status(502)
