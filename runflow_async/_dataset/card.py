"""The dataset card: ``README.md`` in the output folder, rewritten at the end of each session.

A Hugging Face card: YAML front matter (``license`` for the user to fill in,
kept across rewrites once filled; ``task_categories``; ``size_categories``;
``configs`` naming the data files; ``dataset_info`` with the features and the
split's size) and a short body: model, endpoint, counts, what the whole folder
was billed (every session, from the journal), the time span (first create to
last completion), the input file's SHA-256, and the command, secrets replaced.

The YAML is written by hand (no YAML library at run time): every string is a
JSON string, which YAML reads as a double-quoted scalar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from runflow_async._dataset.journal import ItemState, Journal
from runflow_async._dataset.journal_hooks import FIRST_CREATE_META
from runflow_async._dataset.listing import PACKED_FILES, Entry, entries, layout
from runflow_async._dataset.manifest import MANIFEST
from runflow_async._http.download import TEMP_SUFFIX

__all__ = ["CARD", "CardSource", "redact_command", "sha256_of", "write_card"]

CARD = "README.md"
LICENSE_PLACEHOLDER = "other"
_LICENSE = re.compile(r"^license:\s*(\S+)", re.MULTILINE)
_SECRET_FLAG = re.compile(r"^--[\w-]*(key|token|secret|password)[\w-]*$", re.IGNORECASE)
_TYPES = {bool: "bool", int: "int64", float: "float64", str: "string"}
_SIZES: tuple[tuple[int, str], ...] = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
)


@dataclass(frozen=True, slots=True)
class CardSource:
    """What made the dataset: for the card's body.

    Attributes:
        kind: ``"generate"`` or ``"edit"``.
        command: The command line, secrets already replaced (:func:`redact_command`).
        endpoint: The API root the runs were created on.
        input_sha256: The input file's SHA-256, when there was one.
    """

    kind: str
    command: str
    endpoint: str
    input_sha256: str | None = None


def sha256_of(path: Path) -> str:
    """The SHA-256 of the file at ``path`` (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def redact_command(argv: Sequence[str], secrets_: Iterable[str] = ()) -> str:
    """``argv`` as a shell line, the value of every secret flag and every known secret hidden.

    Secret flags are those whose name holds ``key``, ``token``, ``secret`` or
    ``password`` (``--api-key X`` and ``--api-key=X`` alike).
    """
    hidden = {s for s in secrets_ if s}
    out: list[str] = []
    after_flag = False
    for arg in argv:
        flag, eq, _ = arg.partition("=")
        if after_flag or arg in hidden:
            out.append("***")
        elif eq and _SECRET_FLAG.match(flag):
            out.append(f"{flag}=***")
        else:
            out.append(next((arg.replace(s, "***") for s in hidden if s in arg), arg))
        after_flag = not after_flag and not eq and bool(_SECRET_FLAG.match(arg))
    return shlex.join(out)


def write_card(out_dir: Path, journal: Journal, source: CardSource, models: Iterable[str]) -> Path:
    """Write ``out_dir/README.md`` atomically (temporary file, then rename); return its path."""
    dest = out_dir / CARD
    text = _render(out_dir, journal, source, sorted(set(models)), _license(dest))
    tmp = dest.with_name(f".{CARD}.{secrets.token_hex(6)}{TEMP_SUFFIX}")  # a kill's: swept
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _license(card: Path) -> str:
    """The license the user wrote in an earlier card, else the placeholder."""
    try:
        found = _LICENSE.search(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return LICENSE_PLACEHOLDER
    return found.group(1).strip("\"'") if found else LICENSE_PLACEHOLDER


def _columns(found: Iterable[Entry]) -> tuple[int, dict[str, str], set[str], int]:
    """Rows, each column's dtype (first non-null value; ``string`` if none), suffixes, bytes."""
    types: dict[str, str | None] = {}
    suffixes: set[str] = set()
    rows = size = 0
    for entry in found:
        rows += 1
        for name, value in entry.row.items():
            # imagefolder makes file_name the image; a Parquet shard keeps it as a column
            if (name != "file_name" or entry.path is None) and types.get(name) is None:
                types[name] = None if value is None else _TYPES.get(type(value), "string")
        if entry.path is not None:
            suffixes.add(entry.path.suffix)
            with contextlib.suppress(OSError):  # an image removed meanwhile: not counted
                size += entry.path.stat().st_size
        elif entry.data is not None:  # inside a shard
            size += len(entry.data)
    return rows, {n: t or "string" for n, t in types.items()}, suffixes, size


def _size_category(n: int) -> str:
    return next((name for limit, name in _SIZES if n < limit), "n>100M")


def _span(journal: Journal) -> tuple[str | None, str | None]:
    done = (ItemState.SUCCEEDED, ItemState.FAILED)
    last = max((e.updated_at for e in journal.iter_items(states=done)), default=None)
    return _seconds(journal.get_meta(FIRST_CREATE_META)), _seconds(last)


def _seconds(when: str | None) -> str | None:
    """An ISO 8601 time to the second, for people."""
    return None if when is None else datetime.fromisoformat(when).isoformat(timespec="seconds")


def _render(
    out_dir: Path, journal: Journal, source: CardSource, models: list[str], license_: str
) -> str:
    kind = layout(out_dir)
    rows, types, suffixes, size = _columns(entries(out_dir))
    raw = journal.summary()
    counts = raw["counts"]
    q = json.dumps
    columns = "".join(f"  - name: {q(n)}\n    dtype: {t}\n" for n, t in types.items())
    features = f"  features:\n  - name: image\n    dtype: image\n{columns}"
    if kind == "webdataset":  # its loader makes the columns (__key__, json, png...) itself
        features = ""
    # The manifest too: without it the Hub's loader reads the images alone.
    files = [MANIFEST, *(f"**/*{s}" for s in sorted(suffixes))]  # imagefolder
    if kind in PACKED_FILES:  # the shards hold the rows too; the manifest is not theirs
        files = [PACKED_FILES[kind]]
    paths = "".join(f"    - {q(p)}\n" for p in files)
    task = "image-to-image" if source.kind == "edit" else "text-to-image"
    first, last = _span(journal)
    pending = raw["total"] - counts["succeeded"] - counts["failed"]
    written = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        "---\n"
        "# Written by runflow-async at the end of every session (the license line is kept).\n"
        f"license: {license_}  # FILL IN: the license of these images "
        "(see the model's terms), e.g. apache-2.0\n"
        f"task_categories:\n- {task}\nsize_categories:\n- {_size_category(rows)}\n"
        "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path:\n"
        f"{paths}"
        f"dataset_info:\n{features}"
        f"  splits:\n  - name: train\n    num_bytes: {size}\n    num_examples: {rows}\n"
        f"  download_size: {size}\n  dataset_size: {size}\n"
        "---\n\n"
        f"# {out_dir.resolve().name}\n\n"
        f"Images made with `runflow-async {source.kind}` ({rows} images).\n\n"
        f"- Model: {', '.join(f'`{m}`' for m in models) or 'unknown'}\n"
        f"- Endpoint: `{source.endpoint}`\n"
        f"- Items: {counts['succeeded']} succeeded, {counts['failed']} failed, "
        f"{pending} not finished (of {raw['total']})\n"
        f"- Total billed: ${raw['spent_usd']} (every session of this folder)\n"
        f"- Time span: {first or 'unknown'} to {last or 'unknown'} (first create to last "
        "completion, UTC)\n"
        f"- Input file SHA-256: `{source.input_sha256 or 'unknown'}`\n"
        f"- Card written: {written}\n\n"
        f"Made with:\n\n```sh\n{source.command}\n```\n\n"
        "`metadata.jsonl` has one row per image (prompt, seed, size, run id, cost); "
        "`failures.jsonl` lists the items that did not finish and why.\n"
    )
