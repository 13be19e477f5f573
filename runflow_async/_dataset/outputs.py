"""What a dataset folder holds: manifest rows, ``metadata.jsonl``, ``failures.jsonl``, summaries.

The journal is the source of truth; these functions derive the folder's files
and summaries from it, so they never hold duplicates or stale rows. Rows are
appended as items finish (:mod:`runflow_async._dataset.manifest`); at the end
of a run the manifest is reconciled with the journal and rewritten in order.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

from runflow_async._core.models import ImageOutput, Run
from runflow_async._dataset.card import CardSource, write_card
from runflow_async._dataset.failures import FAILURES, FailureList
from runflow_async._dataset.input import DatasetItem
from runflow_async._dataset.journal import ItemState, Journal, JournalItem
from runflow_async._dataset.manifest import MANIFEST, reconcile

__all__ = [
    "FAILURES",
    "MANIFEST",
    "DatasetSummary",
    "interrupted_summary",
    "manifest_row",
    "split_cost",
    "summarize",
    "unfinished",
    "write_card_quietly",
    "write_outputs",
]

logger = logging.getLogger("runflow_async")

_MICRO = Decimal("0.000001")
_AGAIN = "run the same command again to finish (nothing is billed twice)"
_NEXT = {
    "authentication": "check the API key (--api-key or RUNFLOW_API_KEY), then run the same command",
    "budget": "raise --max-cost and run the same command",
    "tls": "the API's TLS certificate did not verify: trust its CA with --ca-file PATH "
    "(or SSL_CERT_FILE), then run the same command",
    "insufficient_credit": "add credit, then run the same command",
    "outcome unknown": "run the same command: creates whose answer was lost are looked up by "
    "client_ref before anything is sent again (nothing is billed twice)",
    "to collect": "run the same command: created runs are collected by id, never created again",
}
_URGENCY = ("tls", "authentication", "insufficient_credit", "budget")


def _by_urgency(reason: str) -> tuple[int, str]:
    """Reasons that need the user first (a key, credit, a budget), then the rest by name."""
    return (_URGENCY.index(reason) if reason in _URGENCY else len(_URGENCY), reason)


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    """What a run of the pipeline did, for people (and ``--json``)."""

    out_dir: Path
    total: int
    succeeded: int
    failed: int
    pending: int
    images: int
    spent_usd: Decimal
    interrupted: bool = False
    reasons: Mapping[str, int] = field(default_factory=dict)
    """Why items are not finished: a count per reason (``budget``, ``authentication``,
    ``outcome unknown``, ``to collect``...)."""
    failures: Mapping[str, int] = field(default_factory=dict)
    """Why items failed: a count per error type (``RunFailedError``: the run failed server-side)."""
    unknown_cost_runs: int = 0
    """Succeeded runs whose cost the server did not report (yet)."""
    unknown_cost_usd: Decimal = Decimal(0)
    """What those runs count as, in ``spent_usd``: estimated, as they were reserved."""

    @property
    def next_steps(self) -> list[str]:
        """What to run next, one step per reason (empty when everything is done)."""
        steps = [_NEXT.get(reason, _AGAIN) for reason in sorted(self.reasons, key=_by_urgency)]
        if self.failures:
            runs = self.failures.get("RunFailedError", 0)
            why = f"; {runs} failed server-side (failed runs are not billed)" if runs else ""
            steps.append(
                f"add --retry-failed to create the {self.failed} failed item(s) again "
                f"(failures.jsonl says why each failed{why})"
            )
        return list(dict.fromkeys(steps))

    @property
    def exit_code(self) -> int:
        """0 all done, 1 some items failed or pending, 130 interrupted."""
        if self.interrupted:
            return 130
        return 0 if self.failed == 0 and self.pending == 0 else 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "out_dir": str(self.out_dir),
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "pending": self.pending,
            "images": self.images,
            "spent_usd": str(self.spent_usd),
            "unknown_cost_runs": self.unknown_cost_runs,
            "unknown_cost_usd": str(self.unknown_cost_usd),
            "interrupted": self.interrupted,
            "not_finished": dict(self.reasons),
            "failed_by_type": dict(self.failures),
            "next_steps": self.next_steps,
            "exit_code": self.exit_code,
        }


def split_cost(total: Decimal | None, parts: int) -> list[Decimal | None]:
    """Split a run's cost over its images so the parts add up exactly to the total."""
    if total is None:
        return [None] * parts
    share = (total / parts).quantize(_MICRO, rounding=ROUND_DOWN)
    return [total - share * (parts - 1), *([share] * (parts - 1))]


def manifest_row(
    item: DatasetItem,
    run: Run,
    image: ImageOutput,
    name: str,
    cost: Decimal | None,
    sha: str,
    estimated: Decimal | None = None,
) -> dict[str, Any]:
    """One ``metadata.jsonl`` row.

    ``estimated``: the image's share of what a run of unknown cost counts as
    (``cost_usd`` is then ``null``: not reported, which is not $0).
    """
    request = item.request
    params = request.input_payload()
    prompt = params.pop("prompt")
    if item.image_inputs:  # as the line gave them: local paths, not their upload placeholders
        params["image_urls"] = list(item.image_inputs)
    seed = run.output.seed if run.output and run.output.seed is not None else params.get("seed")
    return {
        "file_name": name,
        "prompt": prompt,
        "seed": seed,
        "run_id": run.id,
        "model": request.model,
        "width": image.width,
        "height": image.height,
        "cost_usd": None if cost is None else str(cost),
        "cost_estimated_usd": None if cost is not None or estimated is None else str(estimated),
        "sha256": sha,
        "key": item.key,
        "parameters": json.dumps(params, sort_keys=True),
        "metadata": json.dumps(item.metadata, sort_keys=True),
    }


def unfinished(
    out_dir: Path, items: Sequence[DatasetItem], *, retry_failed: bool = False
) -> tuple[list[DatasetItem], Decimal]:
    """Items of ``items`` still to run in ``out_dir``, and what the folder already spent.

    Failed items are done unless ``retry_failed``.
    """
    if not (out_dir / ".runflow").is_dir():
        return list(items), Decimal(0)
    finished = (ItemState.SUCCEEDED,) if retry_failed else (ItemState.SUCCEEDED, ItemState.FAILED)
    with Journal.open(out_dir) as journal:
        done = {e.key for e in journal.iter_items(states=finished)}
        spent: Decimal = journal.summary()["spent_usd"]
    return [i for i in items if i.key not in done], spent


def write_outputs(
    out_dir: Path, journal: Journal, items: Sequence[DatasetItem], card: CardSource | None = None
) -> tuple[int, int]:
    """Reconcile the folder with the journal, then rewrite ``failures.jsonl`` (atomically).

    With ``card``, the dataset card (``README.md``) is written last; a card that
    cannot be written is logged, never an error (the dataset is whole without it).

    Returns:
        ``(images, failures)`` written.
    """
    images = reconcile(out_dir, journal)
    written = images, FailureList(out_dir, items).rewrite(journal)
    if card is not None:
        write_card_quietly(out_dir, journal, items, card)
    return written


def write_card_quietly(
    out_dir: Path, journal: Journal, items: Sequence[DatasetItem], card: CardSource
) -> None:
    """Write the dataset card; one that cannot be written is logged (the dataset is whole)."""
    try:
        write_card(out_dir, journal, card, (item.request.model for item in items))
    except OSError as exc:
        logger.warning("the dataset card was not written: %s", exc)


def summarize(
    out_dir: Path,
    journal: Journal,
    items: Sequence[DatasetItem],
    *,
    images: int,
    interrupted: bool = False,
) -> DatasetSummary:
    """Summarise the items of this input as the journal records them.

    One pass over the journal, keeping counts only (not every item's rows).
    """
    keys = {i.key for i in items}
    states: Counter[ItemState] = Counter()
    failures: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    spent = unknown_usd = Decimal(0)
    unknown = 0
    for entry in journal.iter_items():
        if entry.key not in keys:
            continue
        states[entry.state] += 1
        spent += entry.spent_usd
        if entry.state is ItemState.FAILED:
            failures[entry.error_type or "error"] += 1
        elif (reason := _reason(entry, interrupted=interrupted)) is not None:
            reasons[reason] += 1
        if entry.cost_unknown:
            unknown += 1
            unknown_usd += entry.spent_usd - entry.prior_cost_usd
    finished = states[ItemState.SUCCEEDED] + states[ItemState.FAILED]
    return DatasetSummary(
        out_dir=out_dir,
        total=len(items),
        succeeded=states[ItemState.SUCCEEDED],
        failed=states[ItemState.FAILED],
        pending=sum(states.values()) - finished,
        images=images,
        spent_usd=spent,
        interrupted=interrupted,
        reasons=dict(reasons),
        failures=dict(failures),
        unknown_cost_runs=unknown,
        unknown_cost_usd=unknown_usd,
    )


def _reason(entry: JournalItem, *, interrupted: bool) -> str | None:
    """Why an unfinished item is not finished (``None``: it is finished)."""
    if entry.state is ItemState.NOT_SUBMITTED:
        return (entry.error or "not submitted").split(":")[0]
    if entry.state is ItemState.SUBMITTING:
        return "interrupted" if interrupted else "outcome unknown"
    if entry.state is ItemState.CREATED:
        return "interrupted" if interrupted else "to collect"
    if entry.state is ItemState.PENDING:
        return "interrupted" if interrupted else "not started"
    return None


def interrupted_summary(out_dir: Path, items: Sequence[DatasetItem]) -> DatasetSummary:
    """The summary of a run that was interrupted (the folder was written on the way out)."""
    manifest = out_dir / MANIFEST
    images = len(manifest.read_text().splitlines()) if manifest.exists() else 0
    with Journal.open(out_dir) as journal:
        return summarize(out_dir, journal, items, images=images, interrupted=True)
