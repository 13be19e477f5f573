"""Policies reject nonsense; the pricing policy's documented choices hold."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from runflow_async import (
    APIStatusError,
    ConfigurationError,
    PollPolicy,
    PricingPolicy,
    RetryPolicy,
    Run,
    RunflowClient,
)
from runflow_async._http.download import write_atomic
from runflow_async._http.errors import error_for_status
from runflow_async._pricing import EDIT_MODEL, GENERATE_MODEL, resolve_size


@pytest.mark.parametrize(
    "make",
    [
        lambda: RetryPolicy(max_attempts=0),
        lambda: RetryPolicy(max_wait=-1),
        lambda: RetryPolicy(time_scale=-1),
        lambda: PollPolicy(initial_interval=0),
        lambda: PollPolicy(initial_interval=5, max_interval=1),
        lambda: PollPolicy(multiplier=0.5),
        lambda: RunflowClient("k", max_connections=0),
    ],
)
def test_nonsense_settings_are_configuration_errors(make: object) -> None:
    with pytest.raises(ConfigurationError):
        make()  # type: ignore[operator]


def test_megapixels_are_binary_and_unrounded_by_default() -> None:
    policy = PricingPolicy()
    assert policy.megapixels((1024, 1024)) == 1
    assert policy.megapixels((1024, 768)) == Decimal("0.75")
    assert policy.generate_cost(None) == Decimal("0.004500")  # landscape_4_3 by default
    assert policy.generate_cost((576, 1024), 3) == Decimal("0.010125")
    assert policy.price_per_megapixel(EDIT_MODEL) == Decimal("0.011")
    assert policy.price_per_megapixel(GENERATE_MODEL) == Decimal("0.006")


def test_rounding_up_per_image_and_decimal_megapixels_are_one_switch_away() -> None:
    assert PricingPolicy(round_up_per_image=True).megapixels((1024, 768)) == 1
    decimal_mp = PricingPolicy(pixels_per_megapixel=1_000_000)
    assert decimal_mp.megapixels((1000, 1000)) == 1


def test_edit_inputs_are_capped_and_default_output_follows_the_first_input() -> None:
    policy = PricingPolicy()
    assert policy.input_megapixels((4096, 4096)) == 1
    assert policy.input_megapixels((512, 512)) == Decimal("0.25")
    assert policy.input_megapixels(None) == 1  # assumed 1024x1024
    assert PricingPolicy(edit_input_max_megapixels=None).input_megapixels((2048, 1024)) == 2
    assert policy.default_edit_output_size((800, 600)) == (800, 600)
    width, height = policy.default_edit_output_size((4000, 3000))
    assert width * height <= 2**20
    assert abs(width / height - 4 / 3) < 0.01
    # 0.25 MP input + 0.25 MP output at $0.011/MP.
    assert policy.edit_cost([(512, 512)], None) == Decimal("0.005500")
    assert policy.edit_cost([], None) == Decimal("0.011000")


def test_resolve_size_reads_presets_and_objects() -> None:
    assert resolve_size(None) is None
    assert resolve_size("square") == (512, 512)
    assert resolve_size({"width": 640, "height": 480}) == (640, 480)


def test_unknown_statuses_map_to_the_family_class() -> None:
    assert error_for_status(418) is APIStatusError
    assert error_for_status(599).__name__ == "ServerError"


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "dir-not-file"
    target.mkdir()
    with pytest.raises(IsADirectoryError):  # cannot replace a directory with a file
        write_atomic(target, b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["dir-not-file"]


def test_run_model_accepts_model_instances() -> None:
    run = Run(id="r")
    assert Run.model_validate(run) is run


def test_the_two_policies_must_describe_one_server_clock() -> None:
    from runflow_async import ConfigurationError, PollPolicy, RetryPolicy, RunflowClient

    with pytest.raises(ConfigurationError, match="time_scale differ"):
        RunflowClient("k", retry=RetryPolicy(time_scale=0.01), poll=PollPolicy(time_scale=0.5))
    client = RunflowClient("k", retry=RetryPolicy(time_scale=0.01))
    assert client._transport.clock.scale == 0.01
    assert RunflowClient("k", poll=PollPolicy(time_scale=0.2))._transport.clock.scale == 0.2
