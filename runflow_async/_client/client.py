"""``RunflowClient``: the session's lifecycle and thin public methods that delegate."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

import aiohttp
import anyio

from runflow_async._batch.grouping import BatchRoutes, CreateVia
from runflow_async._batch.options import check_serving
from runflow_async._callbacks.receiver import CallbackReceiver
from runflow_async._callbacks.waiter import CallbackWaiter
from runflow_async._client.batches import BatchesMixin
from runflow_async._client.files import FilesMixin
from runflow_async._client.images import ImageInput, edit_request, ref_refusal
from runflow_async._core.clock import Clock
from runflow_async._core.config import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_WAIT_TIMEOUT,
    PollPolicy,
    RetryPolicy,
    Timeouts,
    resolve_api_key,
    resolve_base_url,
)
from runflow_async._core.errors import (
    ConfigurationError,
    RequestValidationError,
    RunTimeoutError,
    UnprocessableEntityError,
)
from runflow_async._core.models import GenerationResult, Run, RunPage, RunStatus
from runflow_async._core.requests import GenerateRequest, RunRequest, build_request
from runflow_async._http.batch_answer import BatchBodyShape
from runflow_async._http.create import create_run, idempotency_key_for, new_client_ref
from runflow_async._http.reclaim import not_ours, reclaim
from runflow_async._http.retry import RetryHook
from runflow_async._http.runs import (
    check_outcome,
    check_run_id,
    complete,
    fetch_run,
    wait_for_run,
)
from runflow_async._http.secrets import CallbackSecret, create_callback_secret
from runflow_async._http.transport import Transport, parse_response
from runflow_async._keywords import checked_keywords
from runflow_async._pricing import PricingPolicy
from runflow_async._waiting.durations import DurationStats
from runflow_async._waiting.list_poller import WaitStrategy

__all__ = ["RunflowClient"]


def _clock(retry: RetryPolicy, poll: PollPolicy) -> Clock:
    """The one clock of a client: the server's time as both policies describe it."""
    scales = {s for s in (retry.time_scale, poll.time_scale) if s != 1.0}
    if len(scales) > 1:
        raise ConfigurationError(
            "RetryPolicy.time_scale and PollPolicy.time_scale differ; both describe the "
            "server's clock, so set them alike."
        )
    return Clock(scales.pop() if scales else 1.0)


class RunflowClient(FilesMixin, BatchesMixin):
    """An asyncio client for Runflow's FLUX.2 [klein] 9B endpoints.

    Use it as an async context manager; it owns one connection pool::

        async with RunflowClient() as client:
            result = await client.generate("a lighthouse at dawn")

    Args:
        api_key: Your API key; defaults to ``RUNFLOW_API_KEY``.
        base_url: API root; defaults to ``RUNFLOW_BASE_URL``, then ``https://api.runflow.io``.
        organization_id: Sent as ``X-Organization-Id`` (defaults to the key's organisation).
        timeouts: Per-request time limits.
        retry: Backoff for retried calls (``RetryPolicy(time_scale=...)`` in tests).
        poll: Spacing of status reads while waiting.
        max_connections: Connection pool size; size it to the concurrency you use.
        max_response_bytes: The largest API response body read (default 16 MiB);
            a larger one raises ``APIResponseError`` without being held in memory.
        session: An ``aiohttp.ClientSession`` to use instead of our own; we never close it.
        ssl_context: The TLS settings of our own session's connections (the API,
            storage and downloads), e.g. ``ssl.create_default_context(cafile=...)``
            to trust a private CA; verification stays on unless the context turns
            it off. Not with ``session`` (set it on that session's connector).
        on_retry: A synchronous hook told about each retry.
        pricing: The megapixel price rules used for estimates and budgets.
        wait_strategy: How batches notice finished runs: ``"auto"`` (a shared
            list poller: the ``id:`` filter, else the documented filters, else
            no filter, each verified on first use, and last per-run polling),
            ``"list"`` or ``"per_run"``.
        callbacks: A started :class:`CallbackReceiver`: ``run``/``generate``/``edit``,
            batches and maps create runs with its ``url`` as ``callback_url`` and
            wait for its signed deliveries, polling slowly as a safety net.
        create_via: How batches and maps create runs: ``"runs"`` (one create
            each, the default), ``"batches"`` (batch creates of up to 100) or
            ``"auto"`` (batches when 10 or more items are ready together, per
            run after the route refuses them); see :class:`BatchOptions`.
        batch_body_shape: The batch body the server expects: ``"openapi"``
            (``{"input": [...]}``, the default) or ``"guide"`` (``{"items": [...]}``).

    Raises:
        ConfigurationError: No API key, a malformed key or URL, an unknown option
            (naming the closest valid one: ``RunflowClient(max_conections=8)``), or
            a value of the wrong type (also a ``TypeError``).
    """

    @checked_keywords("RunflowClient()", error=ConfigurationError)
    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        organization_id: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
        on_retry: RetryHook | None = None,
        pricing: PricingPolicy | None = None,
        wait_strategy: WaitStrategy = "auto",
        callbacks: CallbackReceiver | None = None,
        create_via: CreateVia = "runs",
        batch_body_shape: BatchBodyShape = "openapi",
    ) -> None:
        if max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1.")
        if max_response_bytes < 1:
            raise ConfigurationError("max_response_bytes must be at least 1.")
        self.base_url = resolve_base_url(base_url)
        self.poll_policy = poll or PollPolicy()
        self.pricing = pricing or PricingPolicy()
        self.wait_strategy: WaitStrategy = wait_strategy
        self.callbacks = callbacks
        self.create_via: CreateVia = create_via
        self.batch_body_shape: BatchBodyShape = batch_body_shape
        self._batch_routes = BatchRoutes()  # batch routes refused, for the client's life
        self._durations = DurationStats()
        retry = retry or RetryPolicy()
        self._transport = Transport(
            base_url=self.base_url,
            api_key=resolve_api_key(api_key),
            organization_id=organization_id,
            timeouts=timeouts or Timeouts(),
            retry=retry,
            max_connections=max_connections,
            max_response_bytes=max_response_bytes,
            session=session,
            ssl_context=ssl_context,
            on_retry=on_retry,
            clock=_clock(retry, self.poll_policy),
        )

    def __repr__(self) -> str:
        state = "closed" if self._transport.closed else "open"
        return f"<RunflowClient base_url={self.base_url!r} {state}>"

    async def __aenter__(self) -> Self:
        self._transport.session()  # created here, inside the running loop
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pool (if we created it). Idempotent; the client is unusable after."""
        await self._transport.aclose()

    @property
    def closed(self) -> bool:
        """Whether the client has been closed."""
        return self._transport.closed

    async def submit(self, request: RunRequest) -> Run:
        """Create a run and return it as created (``queued``), without waiting.

        The create carries (unless the request sets one) a fresh ``client_ref``
        and an ``Idempotency-Key`` derived from it, both reused on every retry,
        so a create is billed at most once. Submitting again with the same
        ``client_ref`` sends the same key: a server that honours it answers with
        the same run.

        Raises:
            AssetRefRefusedError: A 422 refusing the request's ``runflow://assets``
                refs; nothing was created (send ``assets_as="url"``).
            APIError: The create failed (see :class:`CreateOutcomeUnknownError`).
        """
        body = request.to_body(client_ref=new_client_ref())
        key = idempotency_key_for(body["client_ref"])
        try:
            return await create_run(self._transport, request.model, body, idempotency_key=key)
        except UnprocessableEntityError as exc:
            if (refused := ref_refusal(request, exc)) is None:
                raise
            raise refused from exc

    async def get_run(self, run_id: str) -> Run:
        """Fetch a run (fresh signed output URLs on every read)."""
        check_run_id(run_id)
        return await fetch_run(self._transport, run_id)

    async def wait(
        self, run_id: str, *, timeout: float | None = DEFAULT_WAIT_TIMEOUT, check: bool = True
    ) -> Run:
        """Poll a run until it is terminal.

        Args:
            run_id: The run to wait for.
            timeout: Seconds to wait; ``None`` waits forever.
            check: Raise for failed and canceled runs (else return them).

        Raises:
            RunTimeoutError: The deadline passed (the run may still finish).
            RunFailedError: The run failed (``check=True``).
            RunCanceledError: The run was canceled (``check=True``).
        """
        check_run_id(run_id)
        run = await wait_for_run(self._transport, run_id, timeout=timeout, policy=self.poll_policy)
        return check_outcome(run) if check else run

    async def run(
        self, request: RunRequest, *, timeout: float | None = DEFAULT_WAIT_TIMEOUT
    ) -> GenerationResult:
        """Submit a request and wait for its images (by callback with ``callbacks``).

        Raises:
            RunFailedError: The run failed; ``failure_code``/``failure_message`` say why.
            RunTimeoutError: The run did not finish in time (it may still).
        """
        rx = self.callbacks
        ref = request.client_ref or new_client_ref()
        request = request.model_copy(update={"client_ref": ref})
        if rx is not None and request.callback_url is None:
            request = request.model_copy(update={"callback_url": check_serving(rx)})
        created = await self.submit(request)
        run = await self._wait_created(request, created, timeout)
        if not_ours(run, ref):  # the create was answered with another create's run
            created = await reclaim(self._transport, ref, idempotency_key_for(ref), run)
            run = await self._wait_created(request, created, timeout)
        run = check_outcome(run)
        return GenerationResult(run, partial=run.status is RunStatus.PARTIAL_SUCCEEDED)

    async def _wait_created(self, request: RunRequest, created: Run, timeout: float | None) -> Run:
        rx = self.callbacks
        if rx is not None and request.callback_url == rx.url and not created.is_terminal:
            run = await self._wait_by_callback(rx, created.id, timeout)
            if complete(run):
                return run
            # Succeeded, billed, but shown without its images: read it again.
            return await wait_for_run(
                self._transport, run.id, timeout=timeout, policy=self.poll_policy
            )
        return await wait_for_run(
            self._transport, created.id, timeout=timeout, policy=self.poll_policy, last=created
        )

    async def _wait_by_callback(
        self, rx: CallbackReceiver, run_id: str, timeout: float | None
    ) -> Run:
        waiter = CallbackWaiter(
            self._transport, rx, self._durations, self.poll_policy, shared=False
        )
        with anyio.move_on_after(timeout):
            return await waiter.wait(run_id)
        raise RunTimeoutError(
            f"Run {run_id} did not finish within {timeout}s; it may still finish and be "
            "billed, so fetch it later with get_run().",
            run=Run(id=run_id),
        )

    async def create_callback_secret(self, label: str) -> CallbackSecret:
        """Create a callback signing secret (``POST /v1/callback-secrets``).

        The new secret signs new deliveries; older ones stay valid, so during a
        rotation give your :class:`CallbackReceiver` both. Store
        ``secret.plain_secret.get_secret_value()`` now: it is shown only once.
        The call is sent once, never retried.
        """
        return await create_callback_secret(self._transport, label)

    async def generate(
        self, prompt: str, *, timeout: float | None = DEFAULT_WAIT_TIMEOUT, **fields: Any
    ) -> GenerationResult:
        """Generate images from a prompt and wait for them.

        Args:
            prompt: What to draw.
            timeout: Seconds to wait for the run.
            **fields: Any :class:`GenerateRequest` field (``image_size``, ``seed``, ...).

        Raises:
            RequestValidationError: Invalid or unknown fields (an unknown one with
                the closest valid name); nothing was sent.
        """
        if "image_urls" in fields:
            raise RequestValidationError(
                "client.generate() takes no image_urls; use client.edit().",
                errors=[{"field": "image_urls", "message": "edit requests only"}],
            )
        request = build_request(
            GenerateRequest,
            {"prompt": prompt, **fields},
            where="client.generate()",
            also=("timeout",),
        )
        return await self.run(request, timeout=timeout)

    async def edit(
        self,
        prompt: str,
        *,
        image_urls: Sequence[ImageInput] | ImageInput,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        **fields: Any,
    ) -> GenerationResult:
        """Edit 1-4 images as the prompt says and wait for the result.

        Each image is an http(s) URL, a ``runflow://assets/{id}`` ref, an
        :class:`Asset` (sent as ``assets_as`` says: its signed ``url`` by
        default), a ``data:`` URI (only with ``allow_data_uris=True``), or a local
        file as ``pathlib.Path`` or ``bytes``, uploaded as an asset first (no
        API key to storage) once every field is valid. A ``str`` is never read
        as a path.

        Raises:
            RequestValidationError: Invalid or unknown fields (an unknown one with
                the closest valid name), or an unreadable, oversized or non-image
                local file; nothing was sent.
            NotSubmittedError: An upload failed (``reason="upload"``); no run was created.
            AssetRefRefusedError: The API refused a ``runflow://assets`` ref (422).
        """
        request = await edit_request(self._transport, prompt, image_urls, fields)
        return await self.run(request, timeout=timeout)

    async def list_runs(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        q: str | None = None,
        fields: Sequence[str] | None = None,
        sort_by: str | None = None,
    ) -> RunPage:
        """Fetch one page of runs (``GET /v1/runs``).

        Args:
            limit: Page size, 1-500.
            cursor: ``next_cursor`` of the previous page.
            q: A filter such as ``status_code:succeeded AND created_at>2026-04-01``.
            fields: Only return these fields of each run (``id`` is always added).
            sort_by: Such as ``created_at:desc``.
        """
        if not 1 <= limit <= 500:
            raise ConfigurationError("limit must be between 1 and 500.")
        params = {"limit": str(limit)}
        if cursor:
            params["pq"] = cursor
        if q:
            params["q"] = q
        if fields:
            params["fields"] = ",".join(dict.fromkeys(["id", *fields]))
        if sort_by:
            params["sort_by"] = sort_by
        response = await self._transport.request("GET", "/v1/runs", params=params)
        return parse_response(RunPage, response.data, method="GET", path="/v1/runs")

    async def iter_runs(
        self, *, q: str | None = None, page_size: int = 100, sort_by: str | None = None
    ) -> AsyncIterator[Run]:
        """Yield every run matching ``q``, following cursors page by page."""
        cursor: str | None = None
        while True:
            page = await self.list_runs(limit=page_size, cursor=cursor, q=q, sort_by=sort_by)
            for run in page.items:
                yield run
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    async def health(self) -> dict[str, Any]:
        """Return ``GET /v1/health``'s body; any 2xx means healthy."""
        response = await self._transport.request("GET", "/v1/health")
        return response.data if isinstance(response.data, dict) else {"body": response.data}
