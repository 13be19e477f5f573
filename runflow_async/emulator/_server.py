"""The ``Emulator``: builds the aiohttp application and runs it on a loopback port."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from runflow_async._keywords import check_names
from runflow_async.emulator import _asset_routes, _batch_routes, _callback_routes, _handlers
from runflow_async.emulator._config import CONFIG_FIELDS, EmulatorConfig
from runflow_async.emulator._counters import EmulatorCounters
from runflow_async.emulator._faults import FaultScript
from runflow_async.emulator._middleware import inject_faults, observe, refuse_credentials
from runflow_async.emulator._state import STATE, EmulatorState

__all__ = ["Emulator", "build_app", "serve"]

logger = logging.getLogger("runflow_async.emulator")

_SHUTDOWN_TIMEOUT = 5.0  # seconds aiohttp waits for handlers still running at close
# aiohttp's default 8 KiB request line is too short for a batch poller's
# ``q=id:... OR id:...`` with 200 ids; a real gateway may well be as strict as 8 KiB.
_MAX_LINE_SIZE = 64 * 1024


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _callbacks(app: web.Application) -> AsyncIterator[None]:
    # Startup and cleanup of the app, so that ``web.run_app(emu.app())`` sends them too.
    async with app[STATE].callbacks.running():
        yield


def build_app(state: EmulatorState) -> web.Application:
    """Return an aiohttp application serving the emulated API from ``state``.

    Callbacks are sent from the application's startup to its cleanup.
    """
    app = web.Application(middlewares=[observe, refuse_credentials, inject_faults])
    app[STATE] = state
    app.cleanup_ctx.append(_callbacks)
    router = app.router
    router.add_post("/v1/models/{model_id:.+}/runs", _handlers.create_run, name="create")
    batches = _batch_routes
    router.add_post("/v1/models/{model_id:.+}/batches", batches.create_batch, name="batch_create")
    router.add_get("/v1/batches/{batch_id}", batches.get_batch, name="get_batch")
    router.add_get("/v1/batches/{batch_id}/items", batches.list_batch_items, name="batch_items")
    router.add_get(
        "/v1/batches/{batch_id}/items/{item_id}", batches.get_batch_item, name="batch_item"
    )
    router.add_get(
        "/v1/batches/{batch_id}/callback",
        batches.batch_callback_history,
        name="batch_callback_history",
    )
    router.add_get("/v1/runs", _handlers.list_runs, name="list_runs")
    router.add_get("/v1/runs/{run_id}", _handlers.get_run, name="get_run")
    router.add_get("/v1/health", _handlers.health, name="health")
    router.add_get("/files/{run_id}/{filename}", _handlers.get_file, name="file")
    assets = _asset_routes
    router.add_post("/v1/asset-uploads", assets.create_upload, name="asset_upload")
    router.add_put("/uploads/{asset_id}", assets.put_upload, name="upload_put")
    router.add_post(
        "/v1/asset-uploads/{asset_id}/confirmations", assets.confirm_upload, name="asset_confirm"
    )
    router.add_get("/v1/assets/{asset_id}", assets.get_asset, name="get_asset")
    router.add_get("/assets/{asset_id}/content", assets.get_asset_file, name="asset_file")
    callbacks = _callback_routes
    router.add_post("/v1/callback-secrets", callbacks.create_secret, name="callback_secret_create")
    router.add_get("/v1/callback-secrets", callbacks.list_secrets, name="callback_secrets")
    router.add_delete(
        "/v1/callback-secrets/{secret_id}", callbacks.disable_secret, name="callback_secret_delete"
    )
    history = callbacks.callback_history
    router.add_get("/v1/runs/{run_id}/callback", history, name="callback_history")
    router.add_post(
        "/v1/runs/{run_id}/callback-redeliveries", callbacks.redeliver, name="callback_redeliver"
    )
    router.add_get("/_emulator/counters", _handlers.counters, name="counters")
    router.add_get("/_emulator/report", _handlers.report, name="report")
    router.add_post("/_emulator/credit", _handlers.credit, name="credit")
    return app


class Emulator:
    """A local Runflow API for the FLUX.2 [klein] 9B models, as an async context manager.

    Example::

        async with Emulator(time_scale=0.001, seed=1) as emu:
            client = RunflowClient(api_key="test", base_url=emu.url)

    Args:
        config: Base configuration (defaults to ``EmulatorConfig()``).
        **overrides: ``EmulatorConfig`` fields replacing those of ``config``.

    Raises:
        TypeError: An unknown field (naming the closest valid one) or a value of
            the wrong type.
        ValueError: A value out of range.
    """

    def __init__(self, config: EmulatorConfig | None = None, /, **overrides: Any) -> None:
        check_names(overrides, CONFIG_FIELDS, where="Emulator()")
        if config is not None and not isinstance(config, EmulatorConfig):
            raise TypeError(
                f"Emulator(): config must be an EmulatorConfig, not {type(config).__name__}."
            )
        self.config = dataclasses.replace(config or EmulatorConfig(), **overrides)
        self._state = EmulatorState(self.config)
        self._app = build_app(self._state)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start listening on ``config.host``:``config.port``.

        Raises:
            RuntimeError: If the emulator was already started.
        """
        if self._runner is not None or self._closed:
            raise RuntimeError("an Emulator can be started only once")
        runner = web.AppRunner(
            self._app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            max_line_size=_MAX_LINE_SIZE,
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except BaseException:  # a port in use: the app's cleanup still runs
            await self.aclose()
            raise
        self._port = int(runner.addresses[0][1])
        logger.info("Runflow emulator listening on %s", self.url)

    async def aclose(self) -> None:
        """Stop the server and cancel pending callbacks; calling it again does nothing."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def port(self) -> int:
        """Return the TCP port the emulator listens on.

        Raises:
            RuntimeError: If the emulator has not been started.
        """
        if self._port is None:
            raise RuntimeError("the Emulator has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Return the base URL, e.g. ``http://127.0.0.1:8787``."""
        return _base_url(self.config.host, self.port)

    @property
    def counters(self) -> EmulatorCounters:
        """Return a fresh snapshot of the counters."""
        return self._state.counters()

    @property
    def faults(self) -> FaultScript:
        """Return the script of faults to inject into the next requests."""
        return self._state.script

    def set_credit(self, credit_usd: Decimal | int | str | None) -> None:
        """Top up (or cut) the credit: creates answer 402 once the billed total reaches it.

        The same as ``POST /_emulator/credit`` with ``{"credit_usd": ...}``.

        Args:
            credit_usd: The new credit, in USD (not added to the old one); ``None``
                lifts the limit.

        Raises:
            ValueError: If the amount is not finite or is negative.
            decimal.InvalidOperation: If a string is not a number.
        """
        self._state.set_credit(None if credit_usd is None else Decimal(credit_usd))

    def advance(self, seconds: float) -> None:
        """Move the emulated clock ``seconds`` forward at once (no real waiting).

        Runs progress, URLs expire, bills settle and callbacks fall due as if the time
        had passed.

        Raises:
            ValueError: If ``seconds`` is negative.
        """
        self._state.clock.advance(seconds)
        self._state.callbacks.wake()

    def app(self) -> web.Application:
        """Return the aiohttp application, e.g. to mount it or run it with ``web.run_app``.

        Pass ``max_line_size=65536`` to ``run_app``/``AppRunner`` to accept
        long ``q`` filters as :meth:`start` does.
        """
        return self._app

    def runs(self, *, background: bool = False) -> list[dict[str, Any]]:
        """Return every kept run as ``GET /v1/runs/{id}`` would show it now, oldest first.

        Unlike a read through the API, this does not mark any run as noticed.

        Args:
            background: Include the runs of another client of the organisation
                (``EmulatorConfig.background_runs``); by default only those our
                creates made.
        """
        state = self._state
        base = _base_url(self.config.host, self._port or self.config.port)
        now = state.clock.now()
        state.store.settle(now)  # evicts what ``retain_runs`` no longer keeps
        url_for = state.url_for(base, now)
        kept = state.store.scan(0, 1)
        return [run.to_api(now, url_for) for run in kept if background or not run.background]

    def report(self, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """Return when every run was created, ended, was first seen ended, and how often read.

        The same data as ``GET /_emulator/report?since=N&limit=M``, computed from flat
        arrays (evicted runs included): about 2 µs per run, plus as much again to
        encode it as JSON, so page through a million runs with ``since``/``limit``.

        A run is *noticed* the first time a response carries it in a terminal state:
        ``GET /v1/runs/{id}``, or a ``GET /v1/runs`` item that includes ``status_code``
        (an unprojected one, or one whose ``fields`` list it), a batch read that
        shows it terminal (``GET /v1/batches/{id}``, its items), or the first time a
        receiver accepts (2xx) its callback or its batch's. Times are emulated
        seconds since the start; multiply a difference by ``time_scale`` to get real
        seconds.

        A run's *reads* count the requests that named it: each ``GET /v1/runs/{id}``
        of it (terminal or not), and each ``GET /v1/runs`` whose ``q`` has an
        equality term ``id:<its id>`` (once per request, whether or not the run is
        in the page, even under ``NOT``). Only requests the API answers count: not
        those refused by auth, validation or an injected fault, nor ids of runs it
        no longer keeps (``retain_runs``). Callbacks and ``/_emulator/*`` never count.

        Runs of another client (``EmulatorConfig.background_runs``) take creation
        indexes but have no row: ``total`` counts them, ``runs`` does not.

        Args:
            since: Creation index of the first run to include (0 = the first run);
                the previous report's ``total`` gives only the runs created since.
            limit: Look at most at this many creation indexes (``None``: all of
                them); the next page starts at ``since + limit``.

        Returns:
            ``{"time_scale", "now", "since", "total", "runs"}`` where ``total`` is the
            number of runs ever created and ``runs`` lists, in creation order, one
            ``{"id", "created", "duration", "end", "status", "noticed", "reads"}`` per
            run: ``end = created + duration``, ``status`` is the terminal status or
            the current one, ``noticed`` is ``None`` until noticed, ``reads`` is an int.
        """
        return self._state.report(since, limit)


async def serve(
    config: EmulatorConfig, *, on_ready: Callable[[Emulator], None] | None = None
) -> None:
    """Run an emulator until the calling task is cancelled.

    Args:
        config: The configuration.
        on_ready: Called once the emulator listens (the CLI prints ``emu.url`` here).
    """
    async with Emulator(config) as emu:
        if on_ready is not None:
            on_ready(emu)
        await asyncio.Event().wait()
