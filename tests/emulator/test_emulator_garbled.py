"""Answers no client can trust: malformed status lines, over-cap bodies, reused run ids (rates)."""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp
import pytest

from runflow_async.emulator import Fault, FaultRates
from runflow_async.emulator._cli import _config, add_emulator_command
from runflow_async.emulator._dice import FaultDice
from tests.emulator.emulator_support import AUTH, GENERATE, running

CREATE = f"/v1/models/{GENERATE}/runs"
BODY = {"input": {"prompt": "a red fox"}}


async def _raw(port: int, request: bytes) -> bytes:
    """What the server writes back to one raw HTTP/1.1 request, until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_a_malformed_create_answer_garbles_the_status_line_after_storing_the_run() -> None:
    async with running() as h:
        h.emu.faults.next("create", Fault.malformed())
        body = json.dumps(BODY).encode()
        head = f"POST {CREATE} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        answer = await _raw(h.emu.port, head.encode() + body)
        h.emu.faults.next("list_runs", Fault.malformed())
        with pytest.raises(aiohttp.ClientResponseError):  # what a client's parser says
            async with h.http.get("/v1/runs", headers=AUTH) as resp:
                await resp.read()
        counters = h.emu.counters
    assert answer.startswith(b"HTTP/1.1 2OO OK\r\n")  # not a number: unparseable
    assert counters.runs_created == 1  # the create did its work
    assert counters.faults_injected == {"malformed": 2}


async def test_a_reused_run_id_rate_answers_the_previous_create_s_id() -> None:
    async with running(faults=FaultRates(rate_reused_run_id=1.0)) as h:
        ids = []
        for _ in range(3):
            async with h.http.post(CREATE, json=BODY, headers=AUTH) as resp:
                assert resp.status == 201
                ids.append((await resp.json())["id"])
        counters = h.emu.counters
    assert counters.runs_created == 3  # every create made (and will bill) its own run
    # Each answered with the one before's id (the first had none: its own).
    assert ids[1] == ids[0] != ids[2]
    assert counters.faults_injected == {"reused_run_id": 3}


async def test_an_oversized_rate_pads_status_reads_only() -> None:
    rates = FaultRates(rate_oversized=1.0, oversized_bytes=3000)
    async with running(faults=rates) as h:
        async with h.http.post(CREATE, json=BODY, headers=AUTH) as resp:
            assert resp.status == 201  # creates never draw it
        sizes = []
        for _ in range(6):
            async with h.http.get("/v1/runs", headers=AUTH) as resp:
                sizes.append(len(await resp.read()))
        counters = h.emu.counters
    assert sizes == [3000] * 6
    assert counters.faults_injected == {"oversized": 6}


def test_the_later_kinds_keep_every_older_seed_sequence() -> None:
    old = FaultRates(rate_429=0.1, rate_5xx=0.1, rate_html_ok=0.1)
    new = FaultRates(
        rate_429=0.1, rate_5xx=0.1, rate_html_ok=0.1, rate_malformed=0.1, rate_oversized=0.1
    )
    before, after = FaultDice(old, 7), FaultDice(new, 7)
    for _ in range(400):
        route = "create" if _ % 3 == 0 else "get_run"
        was, now = before.roll(route), after.roll(route)
        if was is not None:  # every fault the old rates drew, the new ones draw too
            assert now == was
        else:
            assert now is None or now.kind in ("malformed", "oversized", "reused_run_id")


def test_the_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="rate_malformed must be between 0 and 1"):
        FaultRates(rate_malformed=1.5)
    with pytest.raises(ValueError, match="add up to"):
        FaultRates(rate_reused_run_id=0.6, rate_oversized=0.6)
    with pytest.raises(ValueError, match="oversized_bytes"):
        FaultRates(oversized_bytes=-1)


def test_the_flags_reach_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_emulator_command(parser.add_subparsers())
    flags = ["emulator", "--rate-malformed", "0.1", "--rate-reused-run-id", "0.2"]
    flags += ["--rate-oversized", "0.3", "--oversized-bytes", "123"]
    faults = _config(parser.parse_args(flags)).faults
    assert (faults.rate_malformed, faults.rate_reused_run_id) == (0.1, 0.2)
    assert (faults.rate_oversized, faults.oversized_bytes) == (0.3, 123)
