"""``RunflowKit``: fault scripting in plain words and assertions on what the emulator saw."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from runflow_async import PollPolicy, RetryPolicy, RunflowClient
from runflow_async._keywords import closest
from runflow_async.emulator import Emulator, EmulatorCounters, Fault, FaultScript

__all__ = ["DEFAULT_API_KEY", "RunflowKit"]

DEFAULT_API_KEY = "rf_test_runflow_testing_kit"
"""The API key the kit's emulator accepts and its clients send."""


def _accepted_key(emulator: Emulator) -> str:
    keys = emulator.config.api_keys  # None accepts any key; an empty set accepts none
    if not keys or DEFAULT_API_KEY in keys:
        return DEFAULT_API_KEY
    return min(keys)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _money(amount: Decimal | float | str) -> Decimal:
    # A float goes through its shortest repr, so ``usd=0.006`` means exactly $0.006.
    return Decimal(str(amount)) if isinstance(amount, float) else Decimal(amount)


class RunflowKit:
    """The ``runflow`` fixture: script faults into the emulator and assert on its counters.

    Fault helpers queue faults for the *next* requests of a route (consumed in order,
    route-specific ones first); routes are the emulator's route names: ``"create"``,
    ``"get_run"``, ``"list_runs"``, ``"file"``, ``"health"``, the asset and callback
    routes, or ``"any"``. Anything else is one call away on :attr:`faults`
    (``runflow.faults.next("callback", Fault.duplicate())``).

    Assertion helpers raise ``AssertionError`` with the expected and the observed
    values, plus a one-line summary of everything the emulator saw.

    Args:
        emulator: A started emulator.
    """

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def __repr__(self) -> str:
        return f"<RunflowKit url={self.url!r} {self.summary()}>"

    @property
    def url(self) -> str:
        """Return the emulator's base URL."""
        return self.emulator.url

    @property
    def api_key(self) -> str:
        """Return an API key the emulator accepts."""
        return _accepted_key(self.emulator)

    @property
    def time_scale(self) -> float:
        """Return the emulator's real seconds per emulated second (scale client waits by it)."""
        return self.emulator.config.time_scale

    @property
    def counters(self) -> EmulatorCounters:
        """Return a fresh snapshot of the emulator's counters."""
        return self.emulator.counters

    @property
    def faults(self) -> FaultScript:
        """Return the emulator's fault script, for faults the helpers do not cover."""
        return self.emulator.faults

    def client(self, **options: Any) -> RunflowClient:
        """Return a new (not yet opened) client bound to the emulator.

        It sends :attr:`api_key` to :attr:`url`, and its retry and poll waits are
        scaled by :attr:`time_scale`, so tests never really sleep. Use it as
        ``async with runflow.client() as client:``.

        Args:
            **options: ``RunflowClient`` keywords replacing the defaults, e.g.
                ``retry=RetryPolicy(max_attempts=2, time_scale=runflow.time_scale)``.

        Raises:
            ConfigurationError: An unknown option (naming the closest valid one) or
                a bad value, as ``RunflowClient(...)`` raises it; nothing is sent.
        """
        defaults: dict[str, Any] = {
            "base_url": self.url,
            "retry": RetryPolicy(time_scale=self.time_scale),
            "poll": PollPolicy(time_scale=self.time_scale),
        }
        api_key = options.pop("api_key", self.api_key)
        return RunflowClient(api_key, **{**defaults, **options})

    # -- faults ---------------------------------------------------------------------

    def fail_next(
        self,
        route: str,
        times: int = 1,
        *,
        status: int = 503,
        code: str | None = None,
        retry_after: float | str | None = None,
        html: bool = False,
    ) -> None:
        """Answer the next ``times`` requests of ``route`` with an error status.

        ``fail_next("create", 3, status=429)``: the next 3 creates are rate limited,
        without ``Retry-After``. Nothing is created or served for those requests.

        Args:
            route: The route to fail (``"create"``, ``"get_run"``, ...).
            times: How many requests.
            status: HTTP status, 400-599.
            code: The error envelope's ``code`` (default: the usual one for ``status``).
            retry_after: ``Retry-After`` header: seconds, or a string sent verbatim.
            html: Answer an HTML error page (as a gateway would) instead of JSON.

        Raises:
            ValueError: An unknown route, a status outside 400-599, or ``times < 1``.
        """
        fault = Fault.status(status, code, retry_after=retry_after, html=html)
        self.faults.next(route, fault, times)

    def drop_next(self, route: str, times: int = 1) -> None:
        """Close the connection of the next ``times`` requests of ``route`` without answering.

        Nothing is done for them: a dropped create creates no run. On ``"callback"``,
        the next automatic callback deliveries are never sent.

        Raises:
            ValueError: An unknown route or ``times < 1``.
        """
        self.faults.next(route, Fault.drop(), times)

    def slow_next(self, route: str, times: int = 1, *, seconds: float) -> None:
        """Delay the next ``times`` requests of ``route`` by ``seconds`` emulated seconds.

        Raises:
            ValueError: An unknown route, a negative delay or ``times < 1``.
        """
        self.faults.next(route, Fault.slow(seconds), times)

    def lose_next_create(self, times: int = 1, *, status: int | None = 502) -> None:
        """Create the next ``times`` runs for real, then lose the create's answer.

        The ambiguous case: the client sees an HTML gateway error (``status``) or,
        with ``status=None``, a dropped connection, although the run exists and will
        be billed. A correct client finds the run instead of creating it again.

        Raises:
            ValueError: If ``times < 1``.
        """
        self.faults.next("create", Fault.lost_response(status), times)

    def fail_next_run(
        self,
        times: int = 1,
        *,
        code: str = "PROVIDER_ERROR",
        message: str = "The provider failed to generate the image.",
    ) -> None:
        """Accept the next ``times`` creates normally, but make those runs end ``failed``.

        Failed runs are not billed.

        Args:
            times: How many runs.
            code: The runs' ``failure_code``.
            message: The runs' ``failure_message``.

        Raises:
            ValueError: If ``times < 1``.
        """
        self.faults.next("create", Fault.fail_run(code, message), times)

    # -- what the emulator saw ------------------------------------------------------

    def requests(self, route: str) -> int:
        """Return how many requests of ``route`` the emulator received (faulted ones too).

        Raises:
            ValueError: If the emulator has no such route (a typo would always be 0).
        """
        by_route = self.counters.requests_by_route
        if route not in by_route:
            known = ", ".join(sorted(by_route))
            match = closest(route, by_route)
            hint = "" if match is None else f"; did you mean {match!r}?"
            raise ValueError(f"unknown route {route!r}; the emulator counts {known}{hint}")
        return by_route[route]

    def responses(self, status: int) -> int:
        """Return how many responses of HTTP ``status`` the emulator sent (drops excluded)."""
        return self.counters.responses_by_status.get(status, 0)

    def summary(self) -> str:
        """Return one line of what the emulator saw: runs, money, requests, statuses, faults."""
        c = self.counters
        requests = ", ".join(f"{r}={n}" for r, n in sorted(c.requests_by_route.items()) if n)
        statuses = ", ".join(f"{s}={n}" for s, n in sorted(c.responses_by_status.items()))
        faults = ", ".join(f"{k}={n}" for k, n in sorted(c.faults_injected.items()))
        return (
            f"runs created={c.runs_created} billed={c.runs_billed} failed={c.runs_failed}, "
            f"billed_usd={c.billed_usd}; requests: {requests or 'none'}; "
            f"responses: {statuses or 'none'}; faults injected: {faults or 'none'}"
        )

    def _fail(self, message: str) -> None:
        __tracebackhide__ = True
        raise AssertionError(f"{message}\nRunflow emulator: {self.summary()}")

    def assert_created(self, runs: int) -> None:
        """Assert that the emulator stored exactly ``runs`` runs (lost responses included).

        Raises:
            AssertionError: Naming the expected and the actual count.
        """
        __tracebackhide__ = True
        created = self.counters.runs_created
        if created != runs:
            self._fail(f"expected {_plural(runs, 'run')} created, the emulator created {created}")

    def assert_billed(
        self, runs: int | None = None, *, usd: Decimal | float | str | None = None
    ) -> None:
        """Assert how many runs were billed (succeeded), and/or the total billed in USD.

        ``assert_billed(runs=1)`` after a create that was retried proves it was not
        billed twice. ``usd`` is compared exactly as a ``Decimal`` (a float through
        its repr: ``usd=0.006`` is $0.006).

        Args:
            runs: Runs billed, exactly.
            usd: Total billed, exactly.

        Raises:
            TypeError: If neither ``runs`` nor ``usd`` is given.
            AssertionError: Naming what differs.
        """
        __tracebackhide__ = True
        if runs is None and usd is None:
            raise TypeError("assert_billed() needs runs= or usd=")
        counters = self.counters
        problems = []
        if runs is not None and counters.runs_billed != runs:
            problems.append(
                f"expected {_plural(runs, 'run')} billed, the emulator billed "
                f"{counters.runs_billed}"
            )
        if usd is not None and counters.billed_usd != _money(usd):
            problems.append(
                f"expected ${_money(usd)} billed, the emulator billed ${counters.billed_usd}"
            )
        if problems:
            self._fail("; ".join(problems))

    def assert_requests(self, **by_route: int) -> None:
        """Assert exact request counts per route, e.g. ``assert_requests(create=4, list_runs=0)``.

        Routes not named are not checked.

        Raises:
            ValueError: If a route is unknown.
            AssertionError: Listing every route whose count differs.
        """
        __tracebackhide__ = True
        problems = [
            f"{route}: expected {expected}, got {actual}"
            for route, expected in by_route.items()
            if (actual := self.requests(route)) != expected
        ]
        if problems:
            self._fail("requests by route differ: " + "; ".join(problems))

    def assert_all_faults_used(self) -> None:
        """Assert that every scripted fault has been injected (none is still queued).

        Raises:
            AssertionError: Saying how many injections are left.
        """
        __tracebackhide__ = True
        pending = self.faults.pending()
        if pending:
            self._fail(
                f"{_plural(pending, 'scripted fault')} never injected: the code under test "
                "made fewer requests than the faults were scripted for"
            )
