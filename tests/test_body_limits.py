"""API response bodies are capped: a huge one is a typed error, never held in memory."""

from __future__ import annotations

import pytest

from runflow_async import APIResponseError, ConfigurationError, RunflowClient
from runflow_async.emulator import Emulator, Fault
from tests.conftest import API_KEY, TIME_SCALE

LIMIT = 64 * 1024


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_cap_is_refused_unread(chunked: bool) -> None:
    async with Emulator(api_keys=frozenset({API_KEY}), time_scale=TIME_SCALE) as emu:
        emu.faults.next("get_run", Fault.oversized(8 * 1024 * 1024, chunked=chunked))
        emu.faults.next("get_run", Fault.oversized(LIMIT // 2, chunked=chunked))
        async with RunflowClient(API_KEY, base_url=emu.url, max_response_bytes=LIMIT) as client:
            with pytest.raises(APIResponseError, match="over 65536 bytes"):
                await client.get_run("run-1")
            # Under the cap it is read (and found not to be a run).
            with pytest.raises(APIResponseError, match="Unexpected response shape"):
                await client.get_run("run-1")


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="max_response_bytes"):
        RunflowClient(API_KEY, max_response_bytes=0)
