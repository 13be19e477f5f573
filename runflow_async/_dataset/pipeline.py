"""Datasets: items in; images, ``metadata.jsonl`` and ``failures.jsonl`` out; resumable.

The SQLite journal (:mod:`runflow_async._dataset.journal`) is the source of truth. The
engine's write-ahead hooks record an item's ``client_ref`` *before* its create is sent
and its run id as soon as the create returns, so after any crash (``kill -9``) a re-run:

* skips items that finished (succeeded or failed);
* re-attaches runs already created, by id, and collects them (never re-creates);
* reconciles creates whose answer was lost, by ``client_ref`` over the visibility
  window from this run's start, before resubmitting (same ``Idempotency-Key``);
* submits only items never submitted.

Images are downloaded as soon as their run finishes (signed URLs expire),
atomically, named by the item's stable key and the image's real type; a failed
download re-reads the run once for fresh URLs and tries again. One item never takes the
run down: whatever goes wrong while one item is recorded (a download that is
not an image, a disk error) ends that item alone; if its run exists it stays
collectable (``failures.jsonl`` lists it with ``"collectable": true``) and the
next run reads it again and downloads it, never creating it again. Each
item's manifest rows are appended as it finishes, before its images take
their names (:mod:`runflow_async._dataset.manifest`), so the folder loads at
every instant; the folder is reconciled with the journal when a run starts
and when it ends, so it never holds duplicates or stale rows.
``retry_failed`` creates failed items again under a new ``client_ref`` (``rfa-<dataset>-
<key>-r<N>``). Shards and formats: :mod:`runflow_async._dataset.placement`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from runflow_async._batch.engine import Engine
from runflow_async._batch.hooks import WorkItem
from runflow_async._batch.outcomes import Outcome
from runflow_async._core.config import DEFAULT_MAX_DOWNLOAD_BYTES
from runflow_async._core.errors import (
    APIError,
    ClientClosedError,
    CreateOutcomeUnknownError,
    NotSubmittedError,
    RequestValidationError,
    RunAbandonedError,
    RunTimeoutError,
)
from runflow_async._core.estimate import estimate_requests
from runflow_async._core.requests import EditRequest, RunRequest
from runflow_async._dataset.card import CardSource
from runflow_async._dataset.costs import as_reserved, refresh_unknown_costs
from runflow_async._dataset.failures import FailureList
from runflow_async._dataset.folder_lock import exclusive_folder
from runflow_async._dataset.images import ImageFetcher
from runflow_async._dataset.input import DatasetItem
from runflow_async._dataset.journal import (
    GROUP_SECONDS,
    ItemState,
    Journal,
    JournalItem,
    JournalStateError,
)
from runflow_async._dataset.journal_hooks import JournalHooks, client_ref_of
from runflow_async._dataset.manifest import Appender, publish, reconcile
from runflow_async._dataset.outputs import DatasetSummary, summarize
from runflow_async._dataset.placement import Placement
from runflow_async._dataset.progress import DatasetProgress, session_progress
from runflow_async._dataset.shards import DatasetFormat
from runflow_async._http.retry import not_created

if TYPE_CHECKING:
    from runflow_async._client.client import RunflowClient

__all__ = ["DatasetProgress", "run_dataset"]

logger = logging.getLogger("runflow_async")

_READ_AHEAD = 256  # items whose journal entries are read in one go


class _Runner:
    def __init__(
        self,
        client: RunflowClient,
        items: Sequence[DatasetItem],
        journal: Journal,
        placement: Placement,
        *,
        concurrency: int,
        max_cost_usd: Decimal | None,
        download_concurrency: int,
        max_image_bytes: int,
        on_progress: Callable[[DatasetProgress], None] | None,
        retry_failed: bool = False,
    ) -> None:
        self.client = client
        self.retry_failed = retry_failed
        self.out_dir = out_dir = placement.out_dir
        self.items = items
        self.journal = journal
        self.concurrency = concurrency
        self.max_cost_usd = max_cost_usd
        self.downloads = anyio.CapacityLimiter(download_concurrency)
        self.download_concurrency = download_concurrency
        self.placement, self.images_dir = placement, placement.images_dir  # or the staging
        self.images = ImageFetcher(client, self.images_dir, self.downloads, max_image_bytes)
        self.progress = DatasetProgress(total=len(items))
        self.failures = FailureList(out_dir, items)
        self._engine: Engine | None = None
        self.manifest: Appender | None = None
        self.on_progress = on_progress
        self.dataset_id = journal.get_meta("dataset_id") or uuid.uuid4().hex[:12]
        journal.set_meta("dataset_id", self.dataset_id)

    def _tick(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    async def run(self, known: Mapping[str, Decimal]) -> None:
        # Reuse the estimates the user confirmed (local inputs measured); estimate
        # only what the caller did not (finished items, or a caller without one).
        missing = [i for i in self.items if i.key not in known]
        usd: Mapping[str, Decimal] = known
        if missing:
            extra = estimate_requests((i.request for i in missing), policy=self.client.pricing)
            usd = {**{i.key: e.usd for i, e in zip(missing, extra.items, strict=True)}, **known}
        self.journal.add_items(
            (item.key, item.ordinal, item.kind, usd[item.key]) for item in self.items
        )
        if self.retry_failed:
            keys = {item.key for item in self.items}
            for entry in self.journal.items(states=(ItemState.FAILED,)):
                if entry.key in keys:
                    self.journal.reset_for_retry(entry.key)
        self.failures.rewrite(self.journal)  # failures are listed as they happen from here on
        if await refresh_unknown_costs(self.client, self.journal, self.downloads):
            reconcile(self.images_dir, self.journal)  # their rows now show the costs
        self.progress = session_progress(self.out_dir, self.journal, self.items)  # as summarized
        self._tick()  # the first line shows where earlier sessions left the folder
        engine = self.client.engine(
            hooks=JournalHooks(self.journal, self.items),
            # A budget covers the whole folder: what earlier runs spent counts too.
            spent_usd=self.journal.summary()["spent_usd"],
            max_concurrency=self.concurrency,
            max_cost_usd=self.max_cost_usd,
            # Backpressure: unrecorded outcomes hold their runs' slots (no backlog).
            outcome_buffer=self.concurrency,
        )
        # The engine outside, its reader inside: the reader has every outcome
        # (and its downloads end) before the engine, and its stream, close.
        self._engine = engine
        # Group commit: later marks wait for a write-ahead commit, the timer, or the end.
        self.manifest = Appender(self.images_dir)  # closed before the folder is reconciled again
        try:
            with self.journal.grouped():
                async with anyio.create_task_group() as timer:
                    timer.start_soon(self._commit_on_time)
                    async with engine, anyio.create_task_group() as records:
                        records.start_soon(self._record_all, engine)
                        await self._feed(engine, usd)
                        await engine.end_input()
                    timer.cancel_scope.cancel()
        finally:
            self.manifest.close()

    async def _commit_on_time(self) -> None:
        """Commit marks buffered ``GROUP_SECONDS`` (real time) when no write-ahead mark did."""
        while True:
            await anyio.sleep(GROUP_SECONDS)
            self.journal.commit_due()

    async def _feed(self, engine: Engine, usd: Mapping[str, Decimal]) -> None:
        """Put every item's work, in input order, up to ``concurrency`` of them queued.

        Items wait in the engine's queue, ahead of the free slots, so a slot that
        frees starts the next item at once (one put at a time, a slot would wait
        for this task's turn on a busy loop); the bound keeps memory flat.
        """
        queued = anyio.Semaphore(self.concurrency)

        async def put(work: WorkItem) -> None:
            try:
                await engine.put(work)  # returns once it has a slot (or was refused)
            finally:
                queued.release()

        async with anyio.create_task_group() as puts:  # started in order: queued in order
            for start in range(0, len(self.items), _READ_AHEAD):
                # Read in bulk: only an item's own work changes it, after its put.
                chunk = self.items[start : start + _READ_AHEAD]
                entries = self.journal.get_many(item.key for item in chunk)
                for index, item in enumerate(chunk, start):
                    stopped = engine.stop_reason
                    work = self._work(index, item, usd[item.key], stopped, entries[item.key])
                    if work is not None:
                        await queued.acquire()
                        self.progress.in_flight += 1  # the engine's now: queued or running
                        puts.start_soon(put, work)

    def _work(
        self,
        index: int,
        item: DatasetItem,
        estimate: Decimal,
        stopped: str | None,
        entry: JournalItem,
    ) -> WorkItem | None:
        """The engine's work for ``item`` (as ``entry`` records it), or ``None`` for none now."""
        if entry.state in (ItemState.SUCCEEDED, ItemState.FAILED):
            return None  # counted in the session's progress from the start
        fresh = entry.state in (ItemState.PENDING, ItemState.NOT_SUBMITTED)
        if stopped is not None and fresh and not entry.attempts:
            # Created or possibly created runs are still collected.
            self.journal.mark_not_submitted(item.key, reason=stopped)
            self.progress.deferred += 1
            return None
        # One client_ref per run of an item: the journal keeps the first one (a
        # retry of a failed run starts a new one, numbered by the retry count).
        client_ref = entry.client_ref or client_ref_of(self.dataset_id, item.key, entry.retries)
        request = item.request_with(client_ref=client_ref)  # validated when read: not again
        created = entry.run_id if entry.state is ItemState.CREATED else None
        uploads = isinstance(request, EditRequest) and bool(item.local_images)
        return WorkItem(
            index,
            request,
            estimate,
            run_id=created,
            maybe_created=entry.client_ref is not None and entry.attempts > 0,
            prepare=(lambda r: self._with_uploads(r, item)) if uploads else None,
        )

    async def _record_all(self, engine: Engine) -> None:
        # Items being recorded (most waiting for a download) at most: enough to
        # keep every download busy, few enough that memory does not grow with
        # the input when downloads are slower than runs.
        recording = anyio.Semaphore(self.concurrency + self.download_concurrency)

        async def record(item: DatasetItem, outcome: Outcome) -> None:
            try:
                await self._record(item, outcome)
            finally:
                recording.release()

        async with anyio.create_task_group() as tg:
            async for outcome in engine.outcomes:  # ends once every item has its outcome
                self.progress.in_flight -= 1
                self._tick()
                await recording.acquire()
                tg.start_soon(record, self.items[outcome.index], outcome)

    async def _with_uploads(self, request: RunRequest, item: DatasetItem) -> RunRequest:
        assert isinstance(request, EditRequest)  # noqa: S101 - only edits get uploads
        urls = list(request.image_urls)
        for position, path in zip(item.local_positions, item.local_images, strict=True):
            try:
                asset = await self.client.upload(path)
            except (APIError, RequestValidationError) as exc:
                # Nothing was created: this item waits for the next run (whose
                # pre-flight reports a file that changed since this one's).
                reason = f"upload: {path.name}: {type(exc).__name__}: {exc}"
                raise NotSubmittedError(f"Line {item.line}: {reason}", reason=reason) from exc
            urls[position] = asset.url
        return request.model_copy(update={"image_urls": urls})

    async def _record(self, item: DatasetItem, outcome: Outcome) -> None:
        try:
            await self._record_outcome(item, outcome)
        except Exception as exc:  # one item never takes the run (or its siblings) down
            self._note(item, outcome.run_id, exc)
        self._tick()

    def _note(self, item: DatasetItem, run_id: str | None, exc: Exception) -> None:
        """End ``item`` for this run with ``exc``; a run it has stays collectable."""
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "item %s (line %s, run %s) not finished: %s", item.key, item.line, run_id, reason
        )
        self.progress.deferred += 1  # left for a later run (and out of the ETA)
        # A journal that cannot be written raises here and stops the run: it is
        # the source of truth, and runs it cannot record must not be created.
        if run_id is not None:
            with contextlib.suppress(JournalStateError):  # already created: kept as it is
                self.journal.mark_created(item.key, run_id)
        self.journal.note_error(item.key, error_type=type(exc).__name__, error=str(exc))
        self._listed(item.key)

    def _listed(self, key: str) -> None:
        """``failures.jsonl`` follows the journal's change of ``key`` at once."""
        entry = self.journal.get(key)
        assert entry is not None  # noqa: S101 - every item was added first
        self.failures.record(entry)

    async def _record_outcome(self, item: DatasetItem, outcome: Outcome) -> None:
        error = outcome.error
        if outcome.result is not None:
            # A failed download raises: the run succeeded and stays "created", so
            # the next run re-reads it (fresh URLs) and downloads again.
            cost, reserved = outcome.billed_usd, self._reserved(outcome)
            rows, saved = await self.images.download(item, outcome.result, cost, reserved)
            # Rows first, then the images' names (on the loop: cheaper than a thread).
            shard = self.placement.place(rows)
            files = publish(self.images_dir, rows, saved, self.manifest)
            self.journal.mark_succeeded(
                item.key, cost_usd=cost, files=files, reserved_usd=reserved, shard=shard
            )
            self.placement.done()
            if item.key in self.failures:  # a collectable item from an earlier run
                self._listed(item.key)  # leaves the list
            self.progress.done += 1
            self.progress.spent_usd += cost if cost is not None else reserved or 0
        elif isinstance(error, NotSubmittedError):
            self.journal.mark_not_submitted(item.key, reason=error.reason)
            self.progress.deferred += 1
        elif isinstance(error, CreateOutcomeUnknownError | RunAbandonedError | ClientClosedError):
            # Stays "submitting" or "created": the next run reconciles it by
            # client_ref, or collects its run by id.
            self.progress.deferred += 1
        elif outcome.run_id is None and isinstance(error, APIError) and not_created(error):
            # Refused before anything was created (a 429 given up, the API
            # unreachable, the model unavailable): a re-run submits it again.
            self.journal.mark_not_submitted(item.key, reason=f"server: {type(error).__name__}")
            self.progress.deferred += 1
        elif outcome.run_id is not None and isinstance(error, APIError | RunTimeoutError):
            # Its run exists and may be (or was) billed, but could not be read
            # to the end: it stays "created" and the next run reads it again.
            raise error
        else:
            assert error is not None  # noqa: S101 - an outcome has one or the other
            self.journal.mark_failed(
                item.key,
                error_type=type(error).__name__,
                error=str(error),
                cost_usd=outcome.billed_usd,
            )
            self._listed(item.key)
            self.progress.failed += 1
            self.progress.spent_usd += outcome.billed_usd or 0

    def _reserved(self, outcome: Outcome) -> Decimal | None:
        """What a success of unknown cost counts as (``None`` when its cost is known)."""
        if outcome.billed_usd is not None or self._engine is None:
            return None
        return as_reserved(outcome.estimated_usd, self._engine.snapshot().billing_factor)


async def run_dataset(
    client: RunflowClient,
    out_dir: Path,
    items: Sequence[DatasetItem],
    *,
    concurrency: int = 16,
    max_cost_usd: Decimal | None = None,
    download_concurrency: int = 8,
    max_image_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    on_progress: Callable[[DatasetProgress], None] | None = None,
    estimates: Mapping[str, Decimal] | None = None,
    retry_failed: bool = False,
    dataset_format: DatasetFormat | None = None,
    shard_size: int | None = None,
    card: CardSource | None = None,
) -> DatasetSummary:
    """Run (or resume) a dataset into ``out_dir`` and return its summary.

    ``estimates`` (USD by item key): reservations used instead of estimating again.
    ``max_image_bytes`` caps each image (a larger one is a ``DownloadError``; its run
    stays collectable). ``retry_failed`` creates the items that failed again.
    ``dataset_format``/``shard_size``: a new folder's layout (default imagefolder, 1,000).
    With ``card``, the folder's dataset card (``README.md``) is written at the end.

    Cancellation (Ctrl-C) stops submitting at once and propagates; the journal
    already holds every created run, and the manifest is rewritten first.

    Raises:
        ConfigurationError: Another process is working on ``out_dir``.
    """
    await anyio.Path(out_dir).mkdir(parents=True, exist_ok=True)
    with exclusive_folder(out_dir), Journal.open(out_dir) as journal:
        placement = Placement.start(out_dir, journal, dataset_format, shard_size)
        runner = _Runner(
            client,
            items,
            journal,
            placement,
            concurrency=concurrency,
            max_cost_usd=max_cost_usd,
            download_concurrency=download_concurrency,
            max_image_bytes=max_image_bytes,
            on_progress=on_progress,
            retry_failed=retry_failed,
        )
        try:
            await runner.run(estimates or {})
        finally:  # also when cancelled: the folder always matches the journal
            images = placement.write_outputs(items, card)
        return summarize(out_dir, journal, items, images=images)
