"""Faults: what can go wrong (``Fault``), the scripted queue and the seeded dice.

HTTP faults target the emulator's routes; callback faults target the pseudo-route
``"callback"`` (the emulator's own outgoing deliveries): ``drop`` never sends one,
``slow`` sends it late, ``duplicate`` sends it twice, ``reorder`` holds it until
the next delivery has been sent (the seeded dice are in ``_dice``). Download faults (``not_image``,
``oversized_image``) target only the file routes (``DOWNLOAD_ROUTES``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from runflow_async.emulator._config import (
    CALLBACK,
    CREATE_ROUTES,
    DOWNLOAD_ROUTES,
    FAULTABLE_ROUTES,
)

__all__ = ["Fault", "FaultKind", "FaultScript"]

FaultKind = Literal[
    "status",
    "drop",
    "slow",
    "lost_response",
    "fail_run",
    "duplicate",
    "reorder",
    "html_ok",
    "null_output",
    "oversized",
    "not_image",
    "oversized_image",
    "late_commit",
    "bad_run_id",
    "reused_run_id",
    "malformed",
]

_CREATE_ONLY: frozenset[str] = frozenset(
    {"lost_response", "fail_run", "late_commit", "bad_run_id", "reused_run_id"}
)
_CALLBACK_ONLY: frozenset[str] = frozenset({"duplicate", "reorder"})
_DOWNLOAD_ONLY: frozenset[str] = frozenset({"not_image", "oversized_image"})
_ON_CALLBACKS: frozenset[str] = _CALLBACK_ONLY | {"drop", "slow"}


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected misbehaviour; build it with the classmethods, not the constructor.

    Attributes:
        kind: What happens.
        http_status: Status answered (``status``, ``lost_response``); ``None`` drops.
            A ``late_commit`` answers 201 once stored, or (``None``) drops at once.
        code: Error ``code`` of a JSON answer, or the failure code of ``fail_run``.
        message: Failure message of ``fail_run``.
        retry_after: ``Retry-After`` header value, verbatim.
        html: Answer an HTML error page instead of the JSON envelope.
        seconds: Emulated delay of ``slow``; longest hold of ``reorder``; delay
            from receipt to storage of ``late_commit``.
        size_bytes: Body size of ``oversized`` and ``oversized_image``.
        content_type: The ``Content-Type`` a ``not_image`` body claims.
        value: The ``id`` a ``bad_run_id`` answers (``None``: no ``id`` at all).
    """

    kind: FaultKind
    http_status: int | None = None
    code: str | None = None
    message: str | None = None
    retry_after: str | None = None
    html: bool = False
    seconds: float = 0.0
    size_bytes: int = 0
    content_type: str | None = None
    value: str | int | None = None

    @classmethod
    def status(
        cls,
        status: int,
        code: str | None = None,
        *,
        retry_after: float | str | None = None,
        html: bool = False,
    ) -> Fault:
        """Answer ``status`` with the error envelope (or an HTML page) instead of serving.

        Args:
            status: HTTP status to answer, 400-599.
            code: Envelope ``code``; defaults to the usual code for the status.
            retry_after: ``Retry-After`` value: seconds, or a string sent verbatim
                (an HTTP-date, or garbage to test a parser).
            html: Answer an nginx-style HTML page with ``text/html``.

        Raises:
            ValueError: If ``status`` is not an error status.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"a fault status must be 400-599, got {status}")
        header = (
            retry_after if isinstance(retry_after, str | None) else _format_seconds(retry_after)
        )
        return cls("status", http_status=status, code=code, retry_after=header, html=html)

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without answering; nothing is done.

        On ``"callback"``: the delivery is never sent, nor recorded.
        """
        return cls("drop")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Delay the answer by ``seconds`` emulated seconds, then serve normally.

        On ``"callback"``: send the delivery ``seconds`` emulated seconds late.

        Raises:
            ValueError: If ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"a delay must not be negative, got {seconds}")
        return cls("slow", seconds=seconds)

    @classmethod
    def lost_response(cls, status: int | None = 502, *, html: bool = True) -> Fault:
        """Create the run for real, then lose the answer (create only).

        Args:
            status: Status answered instead of the 201; ``None`` drops the connection.
            html: Answer an HTML gateway page rather than the JSON envelope.
        """
        return cls("lost_response", http_status=status, html=html)

    @classmethod
    def fail_run(
        cls,
        code: str = "PROVIDER_ERROR",
        message: str = "The provider failed to generate the image.",
    ) -> Fault:
        """Create the run normally, but make it end ``failed`` (create only).

        Args:
            code: The run's ``failure_code``.
            message: The run's ``failure_message``.
        """
        return cls("fail_run", code=code, message=message)

    @classmethod
    def duplicate(cls) -> Fault:
        """Send a callback delivery twice: same body and signature (``"callback"`` only)."""
        return cls("duplicate")

    @classmethod
    def reorder(cls, max_hold: float = 30.0) -> Fault:
        """Hold a callback delivery until the next one has been sent (``"callback"`` only).

        Args:
            max_hold: Emulated seconds after which it is sent anyway, if no other
                delivery came along.

        Raises:
            ValueError: If ``max_hold`` is negative.
        """
        if max_hold < 0:
            raise ValueError(f"a hold must not be negative, got {max_hold}")
        return cls("reorder", seconds=max_hold)

    @classmethod
    def html_ok(cls) -> Fault:
        """Answer ``200 OK`` with an HTML page (a captive portal or proxy splash page)."""
        return cls("html_ok", http_status=200, html=True)

    @classmethod
    def oversized(cls, size_bytes: int, *, chunked: bool = False) -> Fault:
        """Answer ``200 OK`` with a JSON body of about ``size_bytes`` bytes.

        Args:
            size_bytes: How big the body is.
            chunked: Send it without ``Content-Length`` (chunked), as a stream.
        """
        if size_bytes < 0:
            raise ValueError(f"a size must not be negative, got {size_bytes}")
        return cls("oversized", http_status=200, size_bytes=size_bytes, html=chunked)

    @classmethod
    def not_image(cls, *, html: bool = False, content_type: str = "image/png") -> Fault:
        """Answer a download ``200 OK`` with a JSON (or HTML) page instead of the image.

        A storage host or proxy that serves an error page with a success status;
        the ``Content-Type`` header still claims an image. File routes only.

        Args:
            html: Serve an HTML page rather than a JSON error envelope.
            content_type: The ``Content-Type`` sent with it.
        """
        return cls("not_image", http_status=200, html=html, content_type=content_type)

    @classmethod
    def oversized_image(cls, size_bytes: int, *, chunked: bool = False) -> Fault:
        """Serve the real image padded with zeros to ``size_bytes`` (file routes only).

        Still an image by its magic bytes; only its size is wrong.

        Args:
            size_bytes: How big the body is.
            chunked: Send it without ``Content-Length`` (chunked), as a stream.

        Raises:
            ValueError: If ``size_bytes`` is negative.
        """
        if size_bytes < 0:
            raise ValueError(f"a size must not be negative, got {size_bytes}")
        return cls("oversized_image", http_status=200, size_bytes=size_bytes, html=chunked)

    @classmethod
    def late_commit(cls, seconds: float = 3.0, *, answer: bool = False) -> Fault:
        """Store the run ``seconds`` emulated seconds after receiving it (create only).

        Until then a read by id answers 404 and no list shows it (after it, the
        list also waits ``list_lag``). A repeat of its ``Idempotency-Key`` in the
        meantime is handled as ``EmulatorConfig.idempotency_mode`` says.

        Args:
            seconds: Emulated seconds from receipt to storage.
            answer: Hold the answer until the run is stored, then answer 201 (a
                client whose read timeout is shorter has gone by then); by
                default the connection is dropped at once.

        Raises:
            ValueError: If ``seconds`` is not positive.
        """
        if not seconds > 0:
            raise ValueError(f"a commit delay must be positive, got {seconds}")
        return cls("late_commit", http_status=201 if answer else None, seconds=seconds)

    @classmethod
    def bad_run_id(cls, run_id: str | int | None) -> Fault:
        """Create the run normally, but answer with ``id`` replaced (create only).

        Args:
            run_id: The ``id`` answered: an absurd string (``"a/../b"``, ``""``,
                one of 300 characters), a number, or ``None`` for no ``id`` at all.
                The run is stored (and bills) under its real id.
        """
        return cls("bad_run_id", value=run_id)

    @classmethod
    def reused_run_id(cls) -> Fault:
        """Create the run normally, but answer with the previous create's run id (create only).

        A buggy server that tells two creates they made one run; the run it made
        for this create is stored (and bills) under its real id. On the first
        create ever there is no previous run: it is answered as usual. Drawn at
        random with ``FaultRates.rate_reused_run_id`` (``--rate-reused-run-id``).
        """
        return cls("reused_run_id")

    @classmethod
    def malformed(cls) -> Fault:
        """Handle the request, then answer with a malformed status line and close.

        A broken proxy or load balancer: whatever the request did is done (a
        create's run exists and bills), and the client's HTTP parser refuses
        the answer (aiohttp raises ``ClientResponseError``).
        """
        return cls("malformed")

    @classmethod
    def null_output(cls) -> Fault:
        """Serve normally, but show every succeeded run with ``"output": null``.

        On ``get_run`` and ``list_runs``: the run did succeed (and was billed);
        only this read of it lacks the images.
        """
        return cls("null_output")

    @property
    def create_only(self) -> bool:
        """Return whether the fault only makes sense on the create route."""
        return self.kind in _CREATE_ONLY

    @property
    def download_only(self) -> bool:
        """Return whether the fault only makes sense on the file (download) routes."""
        return self.kind in _DOWNLOAD_ONLY

    @property
    def counter_key(self) -> str:
        """Return the ``faults_injected`` key this fault is counted under."""
        return f"status_{self.http_status}" if self.kind == "status" else self.kind


class _Queued:
    __slots__ = ("fault", "left")

    def __init__(self, fault: Fault, left: int) -> None:
        self.fault = fault
        self.left = left


class FaultScript:
    """Faults queued for the next requests of a route, consumed in order."""

    __slots__ = ("_queues",)

    def __init__(self) -> None:
        self._queues: dict[str, deque[_Queued]] = {}

    def next(self, route: str, fault: Fault, times: int = 1) -> None:
        """Inject ``fault`` into the next ``times`` requests of ``route``.

        Route-specific faults are consumed before ``"any"`` ones.

        Args:
            route: ``"create"``, ``"get_run"``, ``"list_runs"``, ``"file"``,
                the batch routes (``"batch_create"``, ``"get_batch"``, ``"batch_items"``,
                ``"batch_item"``, ``"batch_callback_history"``),
                ``"health"``, the asset routes (``"asset_upload"``, ``"upload_put"``,
                ``"asset_confirm"``, ``"get_asset"``, ``"asset_file"``), the callback
                routes (``"callback_secret_create"``, ``"callback_secrets"``,
                ``"callback_secret_delete"``, ``"callback_history"``,
                ``"callback_redeliver"``), ``"any"`` (any of those), or
                ``"callback"``: the next automatic callback deliveries (``drop``,
                ``slow``, ``duplicate`` and ``reorder`` only; never taken by ``"any"``).
            fault: What to inject.
            times: How many requests (or deliveries) it applies to.

        Raises:
            ValueError: For an unknown route, a fault on a route it cannot apply
                to, or a ``times`` below 1.
        """
        if route == CALLBACK:
            if fault.kind not in _ON_CALLBACKS:
                raise ValueError(f"a {fault.kind} fault does not apply to callbacks")
        elif route != "any" and route not in FAULTABLE_ROUTES:
            raise ValueError(f"unknown route {route!r}")
        elif fault.create_only and route not in CREATE_ROUTES:
            raise ValueError(f"a {fault.kind} fault only applies to the create routes")
        elif fault.download_only and route not in DOWNLOAD_ROUTES:
            raise ValueError(f"a {fault.kind} fault only applies to {sorted(DOWNLOAD_ROUTES)}")
        elif fault.kind in _CALLBACK_ONLY:
            raise ValueError(f"a {fault.kind} fault only applies to callbacks")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        self._queues.setdefault(route, deque()).append(_Queued(fault, times))

    def clear(self) -> None:
        """Forget every queued fault."""
        self._queues.clear()

    def pending(self) -> int:
        """Return how many injections are still queued, over all routes."""
        return sum(queued.left for queue in self._queues.values() for queued in queue)

    def take(self, route: str) -> Fault | None:
        """Consume and return the fault for one request of ``route``, if any."""
        for key in (route,) if route == CALLBACK else (route, "any"):
            queue = self._queues.get(key)
            if queue:
                queued = queue[0]
                queued.left -= 1
                if queued.left == 0:
                    queue.popleft()
                return queued.fault
        return None
