"""A misspelled option is an error, never a silent default; bad values are refused before sending.

Each entry point that takes options gets a misspelling (the error names it and the
closest valid name) and bad values, and the emulator must have seen no request at
all. The run-time lists are compared with the typed signatures mypy checks, so a
new option cannot be added to one and not the other. The ``# type: ignore[...]``
comments are part of the proof: mypy (strict, ``warn_unused_ignores``) flags the
same calls statically.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import typing
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from runflow_async import (
    BatchOptions,
    ConfigurationError,
    EditRequest,
    GenerateRequest,
    PollPolicy,
    RequestValidationError,
    RetryPolicy,
    RunflowClient,
    RunRequest,
    Timeouts,
)
from runflow_async._batch.options import BATCH_OPTION_NAMES, EngineOptions
from runflow_async._cli.main import main as cli_main
from runflow_async._client.batches import ENGINE_KEYWORDS
from runflow_async._keywords import check_types, keyword_names
from runflow_async.emulator import CallbackFaults, Emulator, EmulatorConfig, FaultRates
from runflow_async.emulator._config import CONFIG_FIELDS
from runflow_async.testing import RunflowKit
from tests.conftest import API_KEY

pytest_plugins = ["pytester", "runflow_async.testing"]

ENTRIES = ("batch", "map", "engine")


def open_options(client: RunflowClient, entry: str, options: Any) -> object:
    """Call ``client.batch``/``map``/``engine`` with ``options`` (untyped on purpose)."""
    if entry == "map":
        return client.map([], **options)
    method: Callable[..., object] = getattr(client, entry)
    return method(**options)


def nothing_sent(emulator: Emulator) -> bool:
    return sum(emulator.counters.requests_by_route.values()) == 0


# -- client.batch / client.map / client.engine -----------------------------------------


async def test_the_issue_example_is_refused_naming_both_typos(
    client: RunflowClient, emulator: Emulator
) -> None:
    with pytest.raises(TypeError) as caught:
        client.batch(max_concurency=3, max_cost=0.01)  # type: ignore[call-arg]
    message = str(caught.value)
    assert isinstance(caught.value, ConfigurationError)
    assert "unknown option 'max_concurency'; did you mean 'max_concurrency'?" in message
    assert "unknown option 'max_cost'; did you mean 'max_cost_usd'?" in message
    assert nothing_sent(emulator)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("max_concurency", "max_concurrency"),
        ("max_cost", "max_cost_usd"),
        ("submits_per_sec", "submits_per_second"),
        ("adaptve", "adaptive"),
        ("failfast", "fail_fast"),
        ("timout", "timeout"),
        ("observr", "observer"),
        ("callback", "callbacks"),
    ],
)
async def test_a_misspelled_batch_option_is_refused_with_the_closest_name(
    client: RunflowClient, emulator: Emulator, entry: str, typo: str, meant: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_options(client, entry, {typo: 3})
    assert isinstance(caught.value, TypeError)
    assert str(caught.value) == (
        f"client.{entry}(): unknown option {typo!r}; did you mean {meant!r}?"
    )
    assert nothing_sent(emulator)


async def test_a_name_close_to_nothing_lists_the_valid_options(client: RunflowClient) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option 'zzz'; valid options are ad"):
        client.batch(zzz=1)  # type: ignore[call-arg]


async def test_the_engine_suggests_its_own_keywords_too(
    client: RunflowClient, emulator: Emulator
) -> None:
    with pytest.raises(ConfigurationError, match=r"'hook'; did you mean 'hooks'\?"):
        client.engine(hook=None)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match=r"'spent'; did you mean 'spent_usd'\?"):
        client.engine(spent=Decimal(1))  # type: ignore[call-arg]
    assert nothing_sent(emulator)


NAN = float("nan")
BAD_BATCH_VALUES = [
    ("max_cost_usd", -1, "positive, finite"),
    ("max_cost_usd", 0, "positive, finite"),
    ("max_cost_usd", "0", "positive, finite"),
    ("max_cost_usd", Decimal(0), "positive, finite"),
    ("max_cost_usd", NAN, "positive, finite"),
    ("max_cost_usd", math.inf, "positive, finite"),
    ("max_cost_usd", "NaN", "positive, finite"),
    ("max_cost_usd", "Infinity", "positive, finite"),
    ("max_cost_usd", Decimal("-0.01"), "positive, finite"),
    ("max_cost_usd", "five dollars", "is not an amount"),
    ("max_cost_usd", True, "must be Decimal, float, str or None, not bool"),
    ("max_concurrency", 0, "at least 1"),
    ("max_concurrency", -3, "at least 1"),
    ("max_concurrency", True, "must be int, not bool"),
    ("max_concurrency", "3", "must be int, not str"),
    ("max_concurrency", 2.0, "must be int, not float"),
    ("submits_per_second", 0, "positive and finite"),
    ("submits_per_second", NAN, "positive and finite"),
    ("submits_per_second", math.inf, "positive and finite"),
    ("submits_per_second", False, "must be float or None, not bool"),
    ("submits_per_second", "5", "must be float or None, not str"),
    ("timeout", 0, "positive seconds"),
    ("timeout", -1.0, "positive seconds"),
    ("timeout", NAN, "positive seconds"),
    ("timeout", "60", "must be float or None, not str"),
    ("adaptive", 1, "must be bool, not int"),
    ("fail_fast", "yes", "must be bool, not str"),
    ("observer", "print", "must be BatchObserver or None, not str"),
    ("callbacks", "https://example.com/cb", "must be CallbackReceiver or None, not str"),
]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(("name", "value", "reason"), BAD_BATCH_VALUES)
async def test_a_bad_batch_value_is_refused_before_anything_is_sent(
    client: RunflowClient, emulator: Emulator, entry: str, name: str, value: Any, reason: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_options(client, entry, {name: value})
    message = str(caught.value)
    assert message.startswith(f"client.{entry}(): ")
    assert name in message
    assert reason in message
    assert nothing_sent(emulator)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"spent_usd": Decimal(-1)}, "spent_usd must be finite, not negative"),
        ({"spent_usd": Decimal("NaN")}, "spent_usd must be finite, not negative"),
        ({"spent_usd": "1"}, "spent_usd must be Decimal, not str"),
        ({"spent_usd": 1.5}, "spent_usd must be Decimal, not float"),
        ({"outcome_buffer": -1}, "outcome_buffer must not be negative"),
        ({"outcome_buffer": NAN}, "outcome_buffer must not be negative"),
        ({"outcome_buffer": True}, "outcome_buffer must be float, not bool"),
        ({"hooks": "journal"}, "hooks must be EngineHooks or None, not str"),
    ],
)
async def test_bad_engine_keywords_are_refused(
    client: RunflowClient, emulator: Emulator, options: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"^client.engine\\(\\): {reason}"):
        open_options(client, "engine", options)
    assert nothing_sent(emulator)


async def test_a_budget_is_a_positive_amount_in_any_of_its_typed_forms(
    client: RunflowClient, emulator: Emulator
) -> None:
    # Zero would hold every run back: refused like a typo, before anything is sent.
    with pytest.raises(ConfigurationError, match="None means no budget"):
        client.batch(max_cost_usd=0)
    assert nothing_sent(emulator)
    for cap in (1, 0.5, "0.25", Decimal("0.125")):  # int, float, str, Decimal all still run
        async with client.batch(max_cost_usd=cap, max_concurrency=2, timeout=None) as batch:
            future = batch.submit(GenerateRequest(prompt="a kite", image_size="square"))
        assert (await future).run.succeeded
    assert emulator.counters.runs_billed == 4


# -- RunflowClient(...) and the policies ------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda url: RunflowClient(API_KEY, base_url=url, max_conections=8),  # type: ignore[call-arg]
            "unknown option 'max_conections'; did you mean 'max_connections'?",
        ),
        (
            lambda url: RunflowClient(API_KEY, base_ur=url),  # type: ignore[call-arg]
            "unknown option 'base_ur'; did you mean 'base_url'?",
        ),
        (
            lambda url: RunflowClient(API_KEY, base_url=url, organisation_id="o"),  # type: ignore[call-arg]
            "unknown option 'organisation_id'; did you mean 'organization_id'?",
        ),
        (
            lambda url: RunflowClient(API_KEY, base_url=url, wait_stratgy="list"),  # type: ignore[call-arg]
            "unknown option 'wait_stratgy'; did you mean 'wait_strategy'?",
        ),
        (
            lambda url: RunflowClient(API_KEY, base_url=url, wait_strategy="per-run"),  # type: ignore[arg-type]
            "unknown wait_strategy 'per-run'; did you mean 'per_run'?",
        ),
        (
            lambda url: RunflowClient(API_KEY, base_url=url, wait_strategy="by_magic"),  # type: ignore[arg-type]
            "unknown wait_strategy 'by_magic'; valid options are auto, list, per_run.",
        ),
        (
            lambda url: RunflowClient(API_KEY, base_url=url, max_connections=True),
            "max_connections must be int, not bool.",
        ),
        (
            lambda url: RunflowClient(API_KEY, base_url=url, max_connections="10"),  # type: ignore[arg-type]
            "max_connections must be int, not str.",
        ),
        (
            lambda url: RunflowClient(API_KEY, base_url=url, max_response_bytes=2.5),  # type: ignore[arg-type]
            "max_response_bytes must be int, not float.",
        ),
        (
            lambda url: RunflowClient(API_KEY, base_url=url, timeouts=30),  # type: ignore[arg-type]
            "timeouts must be Timeouts or None, not int.",
        ),
        (
            lambda url: RunflowClient(API_KEY, base_url=url, retry=3),  # type: ignore[arg-type]
            "retry must be RetryPolicy or None, not int.",
        ),
        (
            lambda url: RunflowClient(API_KEY, base_url=url, on_retry="log"),  # type: ignore[arg-type]
            "on_retry must be Callable or None, not str.",
        ),
    ],
)
async def test_a_misspelled_or_mistyped_client_option_is_refused(
    emulator: Emulator, call: Callable[[str], RunflowClient], message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        call(emulator.url)
    assert isinstance(caught.value, TypeError)
    assert str(caught.value) == f"RunflowClient(): {message}"
    assert nothing_sent(emulator)


def test_a_wrongly_typed_api_key_is_refused_without_showing_it() -> None:
    secret = b"rf_live_do_not_show_me"
    with pytest.raises(ConfigurationError) as caught:
        RunflowClient(secret, base_url="http://127.0.0.1:9")  # type: ignore[arg-type]
    assert str(caught.value) == "RunflowClient(): api_key must be str or None, not bytes."
    assert "do_not_show_me" not in repr(caught.value)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: RetryPolicy(max_atempts=2),  # type: ignore[call-arg]
            "RetryPolicy(): unknown option 'max_atempts'; did you mean 'max_attempts'?",
        ),
        (
            lambda: PollPolicy(intial_interval=1.0),  # type: ignore[call-arg]
            "PollPolicy(): unknown option 'intial_interval'; did you mean 'initial_interval'?",
        ),
        (
            lambda: Timeouts(reed=5.0),  # type: ignore[call-arg]
            "Timeouts(): unknown option 'reed'; did you mean 'read'?",
        ),
        (
            lambda: RetryPolicy(max_attempts=True),
            "RetryPolicy(): max_attempts must be int, not bool.",
        ),
        (lambda: RetryPolicy(jitter=1), "RetryPolicy(): jitter must be bool, not int."),  # type: ignore[arg-type]
        (lambda: Timeouts(read="3"), "Timeouts(): read must be float or None, not str."),  # type: ignore[arg-type]
        (lambda: Timeouts(total=NAN), "Timeouts.total must be positive or None."),
        (lambda: Timeouts(connect=0), "Timeouts.connect must be positive or None."),
        (lambda: RetryPolicy(max_time=NAN), "RetryPolicy times must not be negative."),
        (lambda: RetryPolicy(time_scale=NAN), "RetryPolicy.time_scale must not be negative."),
        (lambda: PollPolicy(initial_interval=NAN), "0 < initial_interval <= max_interval"),
        (lambda: PollPolicy(time_scale=NAN), "multiplier >= 1 and time_scale > 0"),
        (lambda: PollPolicy(callback_fallback_interval=NAN), "callback_fallback_interval > 0"),
    ],
)
def test_the_policies_refuse_unknown_fields_and_bad_values(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        call()
    assert message in str(caught.value)


# -- generate / edit fields -------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda c: c.generate("a cat", sede=1),
            "client.generate(): unknown option 'sede'; did you mean 'seed'?",
        ),
        (
            lambda c: c.generate("a cat", timout=5),
            "client.generate(): unknown option 'timout'; did you mean 'timeout'?",
        ),
        (
            lambda c: c.generate("a cat", image_urls=["https://example.com/a.png"]),
            "client.generate() takes no image_urls; use client.edit().",
        ),
        (
            lambda c: c.edit("a hat", image_urls=["https://example.com/a.png"], imag_size="square"),
            "client.edit(): unknown option 'imag_size'; did you mean 'image_size'?",
        ),
        (
            lambda c: c.edit("a hat", image_urls=["https://example.com/a.png"], num_image=2),
            "client.edit(): unknown option 'num_image'; did you mean 'num_images'?",
        ),
    ],
)
async def test_a_misspelled_request_field_is_refused_with_the_closest_name(
    client: RunflowClient,
    emulator: Emulator,
    call: Callable[[RunflowClient], typing.Awaitable[object]],
    message: str,
) -> None:
    with pytest.raises(RequestValidationError) as caught:
        await call(client)
    assert isinstance(caught.value, TypeError)
    assert str(caught.value) == message
    assert nothing_sent(emulator)


async def test_a_misspelled_field_and_a_bad_value_are_both_reported(
    client: RunflowClient, emulator: Emulator
) -> None:
    with pytest.raises(RequestValidationError) as caught:
        await client.generate("a cat", sede=1, num_images=9)
    message = str(caught.value)
    assert message.startswith("client.generate(): unknown option 'sede'; did you mean 'seed'? ")
    assert "Invalid GenerateRequest: num_images: " in message
    assert sorted(e["field"] for e in caught.value.errors) == ["num_images", "sede"]
    assert nothing_sent(emulator)


# -- the emulator and the testing kit ---------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: Emulator(time_scael=0.001),
            "Emulator(): unknown option 'time_scael'; did you mean 'time_scale'?",
        ),
        (
            lambda: Emulator(EmulatorConfig(), failure_rat=0.5),
            "Emulator(): unknown option 'failure_rat'; did you mean 'failure_rate'?",
        ),
        (
            lambda: EmulatorConfig(median_duraton=2.0),  # type: ignore[call-arg]
            "EmulatorConfig(): unknown option 'median_duraton'; did you mean 'median_duration'?",
        ),
        (
            lambda: FaultRates(rate_249=0.1),  # type: ignore[call-arg]
            "FaultRates(): unknown option 'rate_249'; did you mean 'rate_429'?",
        ),
        (
            lambda: CallbackFaults(rate_dupe=0.1),  # type: ignore[call-arg]
            "CallbackFaults(): unknown option 'rate_dupe'; did you mean 'rate_duplicate'?",
        ),
        (
            lambda: Emulator(time_scale=True),
            "EmulatorConfig(): time_scale must be float, not bool.",
        ),
        (lambda: Emulator(seed="7"), "EmulatorConfig(): seed must be int, not str."),
        (
            lambda: Emulator(api_keys="rf_key"),
            "EmulatorConfig(): api_keys must be frozenset or None, not str.",
        ),
        (
            lambda: Emulator(honour_idempotency_key=1),
            "EmulatorConfig(): honour_idempotency_key must be bool, not int.",
        ),
        (
            lambda: Emulator(max_in_flight_runs=2.5),
            "EmulatorConfig(): max_in_flight_runs must be int or None, not float.",
        ),
        (
            lambda: Emulator({"time_scale": 0.001}),  # type: ignore[arg-type]
            "Emulator(): config must be an EmulatorConfig, not dict.",
        ),
    ],
)
def test_the_emulator_refuses_unknown_fields_and_mistyped_values(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(TypeError) as caught:
        call()
    assert str(caught.value) == message


async def test_the_kit_client_refuses_a_misspelled_option(runflow: RunflowKit) -> None:
    with pytest.raises(ConfigurationError, match="'max_conections'; did you mean 'max_conn"):
        runflow.client(max_conections=8)
    assert runflow.counters.requests_by_route["create"] == 0
    assert sum(runflow.counters.requests_by_route.values()) == 0


async def test_the_kit_suggests_the_route_meant(runflow: RunflowKit) -> None:
    with pytest.raises(ValueError, match=r"unknown route 'creat'; .*; did you mean 'create'\?"):
        runflow.assert_requests(creat=0)
    with pytest.raises(ValueError, match=r"did you mean 'get_run'\?"):
        runflow.requests("get_runs")


def test_a_misspelled_marker_field_fails_the_test_with_the_closest_name(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest('pytest_plugins = ["runflow_async.testing"]\n')
    pytester.makepyfile(
        test_user="""
        import pytest

        @pytest.mark.anyio
        @pytest.mark.runflow_emulator(failure_rat=1.0)
        async def test_typo(runflow_emulator):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown option 'failure_rat'; did you mean 'failure_rate'?*"])


@pytest.mark.parametrize("value", ["0", "-1", "NaN", "Infinity"])
def test_the_dataset_cli_refuses_a_budget_the_engine_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    argv = ["generate", str(prompts), "--out", str(tmp_path / "out"), "--max-cost", value]
    with pytest.raises(SystemExit) as caught:
        cli_main([*argv, "--base-url", "http://127.0.0.1:9", "--api-key", API_KEY, "--yes"])
    assert caught.value.code == 2
    assert "argument --max-cost: must be " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- the run-time lists are the typed signatures ----------------------------------------


def _refusal(call: Callable[[], object]) -> str:
    with pytest.raises(TypeError) as caught:
        call()
    return str(caught.value)


async def test_batch_options_accepted_at_run_time_are_exactly_the_typed_dict(
    client: RunflowClient,
) -> None:
    typed = set(typing.get_type_hints(BatchOptions))
    assert typed == BATCH_OPTION_NAMES
    # Every typed name is known at run time (a wrong value is a type error, not
    # "unknown option"), and a name outside the TypedDict is unknown.
    for name in typed:
        for entry in ENTRIES:
            message = _refusal(functools.partial(open_options, client, entry, {name: object()}))
            assert f"{name} must be" in message, message
    assert "unknown option 'extra'" in _refusal(lambda: client.batch(extra=1))  # type: ignore[call-arg]
    # What the engine runs on has exactly these fields, plus the client's strategy
    # and the batch body shape its server speaks.
    engine_fields = {f.name for f in dataclasses.fields(EngineOptions)}
    assert engine_fields == typed | {"wait_strategy", "batch_body_shape"}
    engine_signature = set(inspect.signature(RunflowClient.engine).parameters)
    assert engine_signature - {"self", "options"} == set(ENGINE_KEYWORDS)


def _assert_runtime_matches_signature(build: Callable[..., object], names: set[str]) -> None:
    for name in names:
        assert f"{name} must be" in _refusal(functools.partial(build, **{name: object()}))
    assert "unknown option 'not_a_field'" in _refusal(lambda: build(not_a_field=1))


def test_client_options_accepted_at_run_time_are_exactly_the_signature() -> None:
    signature = set(inspect.signature(RunflowClient.__init__).parameters) - {"self"}
    assert keyword_names(RunflowClient.__init__) == signature
    assert set(typing.get_type_hints(RunflowClient.__init__)) - {"return"} == signature
    _assert_runtime_matches_signature(RunflowClient, signature)


@pytest.mark.parametrize(
    "cls", [RetryPolicy, PollPolicy, Timeouts, EmulatorConfig, FaultRates, CallbackFaults]
)
def test_config_fields_accepted_at_run_time_are_exactly_the_dataclass(cls: type) -> None:
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(inspect.signature(cls).parameters) == fields
    _assert_runtime_matches_signature(cls, fields)


def test_emulator_overrides_and_the_marker_accept_exactly_the_config_fields() -> None:
    fields = {f.name for f in dataclasses.fields(EmulatorConfig)}
    assert fields == CONFIG_FIELDS
    _assert_runtime_matches_signature(Emulator, fields)


async def test_request_fields_accepted_are_exactly_the_models(
    client: RunflowClient, emulator: Emulator
) -> None:
    url = "https://example.com/a.png"
    cases: list[tuple[str, Callable[..., typing.Awaitable[object]], type[RunRequest]]] = [
        ("client.generate()", functools.partial(client.generate, "a cat"), GenerateRequest),
        ("client.edit()", functools.partial(client.edit, "a hat", image_urls=[url]), EditRequest),
    ]
    for where, call, model in cases:
        # Every field but those the method names itself reaches the model's own check.
        for name in set(model.model_fields) - {"prompt", "image_urls"}:
            with pytest.raises(RequestValidationError) as caught:
                await call(**{name: object()})
            assert [e["field"] for e in caught.value.errors] == [name]
            assert "unknown option" not in str(caught.value)
        with pytest.raises(RequestValidationError, match=f"^{re.escape(where)}: unknown option"):
            await call(sede=1)
    assert nothing_sent(emulator)


def test_hints_the_check_cannot_read_let_values_through() -> None:
    # ``**options: Unpack[BatchOptions]`` is checked key by key elsewhere, not as a whole.
    hints = typing.get_type_hints(RunflowClient.engine)
    check_types({"options": object()}, hints, where="client.engine()")
    check_types({"anything": object()}, {"anything": Any}, where="f()")
    with pytest.raises(TypeError, match=r"^f\(\): n must be int, not bool\.$"):
        check_types({"n": True}, {"n": int}, where="f()")
