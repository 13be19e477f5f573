"""A server whose certificate does not verify: one typed error, no retries, the batch and
the CLI stop at once and say how to trust the CA (``ssl_context``, ``--ca-file``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runflow_async import (
    APIConnectionError,
    GenerateRequest,
    NotSubmittedError,
    TLSVerificationError,
)
from runflow_async._cli.main import main
from runflow_async.emulator import Emulator
from tests.conftest import API_KEY, TIME_SCALE, make_client
from tests.test_dataset_cli import cli_args, journal_counts, manifest, prompts_file, run_cli


@pytest.fixture
async def tls_emulator() -> AsyncIterator[Emulator]:
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE, tls=True) as emu:
        yield emu


async def test_an_untrusted_certificate_is_a_typed_error_and_no_create_is_retried(
    tls_emulator: Emulator,
) -> None:
    async with make_client(tls_emulator.url) as client:
        with pytest.raises(TLSVerificationError) as caught:
            await client.submit(GenerateRequest(prompt="never sent"))
        async with client.batch(max_concurrency=4) as batch:
            batch.submit_many(GenerateRequest(prompt=f"p {i}") for i in range(20))
        outcomes = await batch.gather()
    assert isinstance(caught.value, APIConnectionError)  # what callers caught before
    assert caught.value.sent is False
    assert "--ca-file" in str(caught.value)
    assert "ssl_context" in str(caught.value)
    # The batch stopped at the first refusal: every item not submitted, for that reason.
    errors = [o.error for o in outcomes]
    assert all(isinstance(e, NotSubmittedError) and e.reason == "tls" for e in errors)
    assert tls_emulator.counters.runs_created == 0
    assert sum(tls_emulator.counters.requests_by_route.values()) == 0  # no handshake passed


async def test_the_cli_stops_says_how_to_trust_the_ca_then_finishes_with_ca_file(
    tls_emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp, out = prompts_file(tmp_path, 6), tmp_path / "out"
    assert await run_cli(cli_args(inp, out, tls_emulator.url)) == 1
    said = capsys.readouterr().err
    assert "not finished: tls: 6" in said
    assert "--ca-file" in said
    assert tls_emulator.counters.runs_created == 0
    assert tls_emulator.ca_file is not None
    ca = str(tls_emulator.ca_file)
    assert await run_cli(cli_args(inp, out, tls_emulator.url, "--ca-file", ca)) == 0
    assert len(manifest(out)) == 6
    assert journal_counts(out) == {"succeeded": 6}
    assert tls_emulator.counters.runs_created == 6


@pytest.mark.parametrize("bad", ["missing.pem", "not-pem.txt"])
def test_a_bad_ca_file_is_one_line_and_exit_2(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not-pem.txt").write_text("hello\n")
    inp = prompts_file(tmp_path, 1)
    argv = cli_args(inp, tmp_path / "out", "https://127.0.0.1:9", "--ca-file", str(tmp_path / bad))
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "--ca-file" in lines[-1]
    assert "Traceback" not in "\n".join(lines)
    assert not (tmp_path / "out").exists()
