"""Every exception raised in client code during a faulty session is walked for the key.

Not only what reaches the caller: a tracer records each exception as it passes
through any frame of the client (``runflow_async`` outside the emulator), caught
or not, so a swallowed retry error or a logged one is walked too. Each is checked
the way loguru, Sentry or ``pytest -l`` would show it: ``repr``/``str`` of every
exception in its ``__cause__``/``__context__`` chain, and the whole traceback
formatted with every frame's locals. The frames' locals are also checked at the
moment the exception passes, for the key as a plain string.
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import runflow_async
from runflow_async import (
    GenerateRequest,
    PollPolicy,
    RetryPolicy,
    RunflowClient,
    RunflowError,
)
from runflow_async._waiting.list_poller import WaitStrategy
from runflow_async.emulator import Emulator, FaultRates
from tests.test_key_in_exceptions import chain

KEY = "rf_live_WALK0a1b2c3d4e5f6071829"
PACKAGE = Path(runflow_async.__file__).parent
EMULATOR = PACKAGE / "emulator"
SCALE = 0.001


def _ours(frame: FrameType) -> bool:
    path = Path(frame.f_code.co_filename)
    return path.is_relative_to(PACKAGE) and not path.is_relative_to(EMULATOR)


@dataclasses.dataclass
class Seen:
    exceptions: list[BaseException] = dataclasses.field(default_factory=list)
    leaks: list[str] = dataclasses.field(default_factory=list)

    def add(self, frame: FrameType, exc: BaseException) -> None:
        if not any(exc is e for e in self.exceptions):
            self.exceptions.append(exc)
        for name, value in frame.f_locals.items():
            if isinstance(value, str) and KEY in value:
                self.leaks.append(f"{frame.f_code.co_qualname}: local {name}")


@contextmanager
def every_exception() -> Iterator[Seen]:
    """Record each exception passing through a frame of the client while inside."""
    seen = Seen()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "exception":
            seen.add(frame, arg[1])
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if _ours(frame) else None

    previous = sys.gettrace()  # coverage's tracer, when it runs
    sys.settrace(tracer)
    try:
        yield seen
    finally:
        sys.settrace(previous)


def _raised_in_ours(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is None or _ours(tb.tb_frame)


def assert_walked_clean(seen: Seen) -> None:
    """Ours: chain and locals clean. Foreign (aiohttp's, whose own frames hold the
    request headers): clean repr, and never reachable from any exception of ours."""
    assert not seen.leaks, seen.leaks
    ours = [exc for exc in seen.exceptions if _raised_in_ours(exc)]
    reachable = [item for exc in ours for item in chain(exc)]
    for exc in seen.exceptions:
        assert KEY not in repr(exc), type(exc)
        assert KEY not in str(exc), type(exc)
        if not _raised_in_ours(exc):
            assert not any(exc is item for item in reachable), type(exc)
    for item in reachable:
        assert KEY not in repr(item), type(item)
        assert KEY not in str(item), type(item)
        shown = traceback.TracebackException.from_exception(item, capture_locals=True)
        assert KEY not in "".join(shown.format()), type(item)


def _client(url: str, strategy: WaitStrategy = "auto") -> RunflowClient:
    return RunflowClient(
        KEY,
        base_url=url,
        wait_strategy=strategy,
        retry=RetryPolicy(max_attempts=3, time_scale=SCALE),
        poll=PollPolicy(time_scale=SCALE),
    )


FAULTS = FaultRates(
    rate_429=0.05, rate_5xx=0.08, rate_drop=0.04, rate_lost_create=0.06, rate_slow=0.02
)


@pytest.mark.parametrize("strategy", ["list", "per_run"])
async def test_a_faulty_batch_raises_nothing_that_holds_the_key(strategy: WaitStrategy) -> None:
    emulator = Emulator(
        api_keys=frozenset({KEY}),
        time_scale=SCALE,
        seed=11,
        faults=FAULTS,
        failure_rate=0.1,
        list_lag=0.5,
        reported_cost="nan",
        max_in_flight_runs=6,
    )
    async with emulator as emu:
        with every_exception() as seen:
            async with _client(emu.url, strategy) as client:
                async with client.batch(max_concurrency=8) as batch:
                    futures = [batch.submit(GenerateRequest(prompt=f"p{i}")) for i in range(40)]
                assert all(future.done() for future in futures)
                for future in futures:  # the errors the caller is handed are walked too
                    assert future.outcome is not None
                    if future.outcome.error is not None:
                        seen.exceptions.append(future.outcome.error)
        assert emu.counters.requests_by_route  # the session really talked to it
    assert len(seen.exceptions) > 10  # the faults really raised inside the client
    assert_walked_clean(seen)


async def test_a_refused_key_and_a_dead_host_raise_nothing_that_holds_it() -> None:
    async with Emulator(api_keys=frozenset({"another"}), time_scale=SCALE) as emu:
        with every_exception() as seen:
            for url in (emu.url, "http://127.0.0.1:9"):
                async with _client(url) as client:
                    with pytest.raises(RunflowError):
                        await client.generate("a cat", timeout=5)
                    async with client.batch(max_concurrency=4) as batch:
                        for i in range(5):
                            batch.submit(GenerateRequest(prompt=f"p{i}"))
    assert len(seen.exceptions) >= 4
    assert_walked_clean(seen)
