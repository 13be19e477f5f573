"""Dataset input files: prompts (``.txt``, ``.jsonl``, ``.csv``) and edit jobs (``.jsonl``).

Every line becomes a fully validated request before anything is submitted. All
problems of a file are collected and raised together as one
:class:`InputFileError`, so nothing is billed for a file that does not parse.

Item keys: 24 hex digits of the SHA-256 of the canonical JSON of ``[kind,
input, metadata]`` (``input``: the request's input payload after the defaults,
with each local edit image as its absolute path), then ``-N``, N counting
earlier lines with the same digest. The same line gets the same key on every
run, identical lines are distinct items (``-0``, ``-1``), and appended lines
leave existing keys alone. Editing a line, or a default it uses (``base_seed``
included), makes it a new item; inserting a line moves no other line's seed.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from runflow_async._core.errors import RequestValidationError, RunflowError
from runflow_async._core.requests import (
    CUSTOM_SIZE_MAX,
    CUSTOM_SIZE_MIN,
    CustomImageSize,
    EditRequest,
    GenerateRequest,
    ImagePreset,
    build_request,
)
from runflow_async._dataset.item import DatasetItem
from runflow_async._dataset.local_files import MAX_LOCAL_IMAGE_BYTES, local_file

__all__ = [
    "MAX_LOCAL_IMAGE_BYTES",
    "DatasetItem",
    "Defaults",
    "InputFileError",
    "parse_size",
    "read_edit_file",
    "read_generate_file",
    "sniff_kind",
]

_SEED_MODULUS = 2**31
_SHOWN_PROBLEMS = 5
_GENERATE_SUFFIXES = (".txt", ".jsonl", ".csv")
_PRESETS = frozenset(get_args(ImagePreset))
_SIZE_RE = re.compile(r"(\d+)[xX](\d+)", re.ASCII)
# client_ref belongs to the pipeline (one per item, kept by the journal); metadata is read apart.
_GENERATE_FIELDS = frozenset(GenerateRequest.model_fields) - {"client_ref", "metadata"}
_EDIT_FIELDS = frozenset(EditRequest.model_fields) - {"client_ref", "metadata"}
_CSV_COLUMNS = _GENERATE_FIELDS | {"metadata"}
_HINTS = {"image_urls": " (edit jobs go to `runflow-async edit`)", "client_ref": " (we set it)"}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_JSON_TYPES = {"list": "an array", "str": "a string", "bool": "a boolean", "NoneType": "null"}
_INT_RE = re.compile(r"[+-]?\d+", re.ASCII)
_PLACEHOLDER = "https://local.invalid/{}"
# Sent as they are (an edit validates them); any other string is a local file.
_NOT_PATHS = ("http://", "https://", "runflow://", "data:")


class InputFileError(RunflowError, ValueError):
    """An input file has problems; nothing of it was submitted.

    Attributes:
        path: The file.
        problems: ``(line, reason)`` pairs; line 1 is the first line, 0 the file as a whole.
    """

    def __init__(self, path: Path, problems: list[tuple[int, str]]) -> None:
        self.path = path
        self.problems = problems
        shown = "; ".join(f"line {n}: {why}" if n else why for n, why in problems[:_SHOWN_PROBLEMS])
        more = len(problems) - _SHOWN_PROBLEMS
        super().__init__(f"{path}: {shown}" + (f"; and {more} more" if more > 0 else ""))


@dataclass(frozen=True, slots=True)
class Defaults:
    """CLI options, applied to every line that does not set the field itself.

    Attributes:
        image_size: A preset name or ``(width, height)`` (see :func:`parse_size`).
        num_images: Images per run.
        output_format: ``"jpeg"``, ``"png"`` or ``"webp"``.
        base_seed: A line without a seed gets one derived from ``base_seed`` and
            the line's content (the same line, the same seed, wherever it is).
    """

    image_size: str | tuple[int, int] | None = None
    num_images: int | None = None
    output_format: str | None = None
    base_seed: int | None = None


def parse_size(text: str) -> str | tuple[int, int]:
    """Parse an image size: a preset name (``"square_hd"``) or ``"WIDTHxHEIGHT"``.

    Raises:
        ValueError: Neither a preset nor a ``WxH`` size within the model's bounds.
    """
    value = text.strip()
    if value in _PRESETS:
        return value
    match = _SIZE_RE.fullmatch(value)
    if match:
        width, height = int(match[1]), int(match[2])
        if min(width, height) >= CUSTOM_SIZE_MIN and max(width, height) <= CUSTOM_SIZE_MAX:
            return (width, height)
    bounds = f"{CUSTOM_SIZE_MIN}-{CUSTOM_SIZE_MAX}"
    raise ValueError(f"not an image size: {text!r} (a preset such as square_hd, or WxH, {bounds})")


def read_generate_file(path: Path, defaults: Defaults) -> list[DatasetItem]:
    """Read a PROMPTS file (``.txt``, ``.jsonl`` or ``.csv``) into validated items.

    Raises:
        InputFileError: Listing every problem of the file; no items are returned.
    """
    suffix = path.suffix.lower()
    if suffix not in _GENERATE_SUFFIXES:
        supported = ", ".join(_GENERATE_SUFFIXES)
        raise InputFileError(path, [(0, f"unsupported file type {suffix!r} (use {supported})")])
    reader = _Reader(path, defaults, "generate")
    text = _read_text(path)
    if suffix == ".txt":
        for number, raw in enumerate(text.split("\n"), 1):
            prompt = raw.strip()
            if prompt and not prompt.startswith("#"):
                reader.add(number, {"prompt": prompt})
    elif suffix == ".csv":
        _read_csv(reader, text)
    else:
        _read_jsonl(reader, text)
    return reader.finish()


def read_edit_file(path: Path, defaults: Defaults) -> list[DatasetItem]:
    """Read a JOBS file (``.jsonl``: ``prompt`` and ``image_urls`` per line) into items.

    An ``image_urls`` entry is an http(s) URL (kept), or a local file: a path,
    absolute or relative to the file's folder, or a ``file://`` URL. Local files
    must exist, be readable regular files, hold 1 byte to 50 MiB (the asset
    upload limit) and be PNG, JPEG, WebP or GIF images by their magic bytes.

    Raises:
        InputFileError: Listing every problem of the file; no items are returned.
    """
    if path.suffix.lower() != ".jsonl":
        raise InputFileError(path, [(0, f"unsupported file type {path.suffix!r} (use .jsonl)")])
    reader = _Reader(path, defaults, "edit")
    _read_jsonl(reader, _read_text(path))
    return reader.finish()


def sniff_kind(path: Path) -> Literal["generate", "edit"]:
    """Guess a file's kind: a ``.jsonl`` whose first object has ``image_urls`` is edit jobs.

    Raises:
        InputFileError: The file cannot be read.
    """
    lines = _read_text(path).split("\n") if path.suffix.lower() == ".jsonl" else []
    for raw in lines:
        with contextlib.suppress(ValueError):
            obj = json.loads(raw)
            if isinstance(obj, dict):
                return "edit" if "image_urls" in obj else "generate"
    return "generate"


@dataclass
class _Reader:
    path: Path
    defaults: Defaults
    kind: Literal["generate", "edit"]
    items: list[DatasetItem] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    seeded: Counter[str] = field(default_factory=Counter)
    sizes: dict[tuple[int, int], CustomImageSize] = field(default_factory=dict)
    # One tuple of field names for every line that sets the same fields: memory per item.
    names: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)

    def _seed(self, fields: dict[str, Any], metadata: Any, paths: list[Path]) -> int:
        """A line's default seed: from ``base_seed`` and the line's own content.

        Not from its position: inserting a line must not move every later seed
        (and so make every later line a new item, billed again).
        """
        basis = json.dumps(
            [self.kind, fields, metadata, [str(p) for p in paths]], sort_keys=True, default=str
        )
        digest = hashlib.sha256(basis.encode()).hexdigest()
        occurrence = self.seeded[digest]
        self.seeded[digest] += 1
        assert self.defaults.base_seed is not None  # noqa: S101 - checked by the caller
        return (self.defaults.base_seed + int(digest[:8], 16) + occurrence) % _SEED_MODULUS

    def _size(self, pair: tuple[int, int]) -> CustomImageSize | tuple[int, int]:
        """One (frozen) size object shared by every line of that size: memory per item.

        A pair out of bounds stays a pair, for the request's validation to report.
        """
        if pair not in self.sizes:
            with contextlib.suppress(ValueError):  # pydantic's ValidationError is one
                self.sizes[pair] = CustomImageSize(width=pair[0], height=pair[1])
        return self.sizes.get(pair, pair)

    ordinal: int = 0

    def add(self, line: int, fields: dict[str, Any], problems: list[str] | None = None) -> None:
        ordinal, self.ordinal = self.ordinal, self.ordinal + 1
        problems = list(problems or [])
        allowed = _EDIT_FIELDS if self.kind == "edit" else _GENERATE_FIELDS
        metadata = fields.pop("metadata", None)
        if metadata is None:
            metadata = {}
        elif not isinstance(metadata, dict):
            problems.append("metadata: must be a JSON object")
        problems += [f"{n}: unknown field{_HINTS.get(n, '')}" for n in fields if n not in allowed]
        fields = {n: v for n, v in fields.items() if v is not None and n in allowed}
        for name in ("image_size", "num_images", "output_format"):
            if name not in fields and getattr(self.defaults, name) is not None:
                fields[name] = getattr(self.defaults, name)
        if isinstance(fields.get("image_size"), str):
            try:
                fields["image_size"] = parse_size(fields["image_size"])
            except ValueError as exc:
                problems.append(f"image_size: {exc}")
                del fields["image_size"]  # reported once, not again by the model
        paths: list[Path] = []
        positions: list[int] = []
        given: tuple[str, ...] = ()
        if isinstance(fields.get("image_urls"), list):
            given = tuple(str(entry) for entry in fields["image_urls"])
            urls = fields["image_urls"] = list(fields["image_urls"])
            for position, entry in enumerate(urls):
                if isinstance(entry, str) and not entry.startswith(_NOT_PATHS):
                    local, reason = local_file(entry, self.path.absolute().parent)
                    if reason:
                        problems.append(f"image_urls[{position}]: {reason}")
                    urls[position] = _PLACEHOLDER.format(position)
                    paths.append(local)
                    positions.append(position)
        if "seed" not in fields and self.defaults.base_seed is not None:
            fields["seed"] = self._seed(fields, metadata, paths)
        if isinstance(fields.get("image_size"), tuple):  # after the seed: it reads the pair
            fields["image_size"] = self._size(fields["image_size"])
        cls = EditRequest if self.kind == "edit" else GenerateRequest
        try:
            request = cast("GenerateRequest | EditRequest", build_request(cls, fields))
        except RequestValidationError as exc:
            problems += [f"{e['field']}: {e['message']}" for e in exc.errors]
        if problems:
            self.problems += [(line, reason) for reason in problems]
            return
        self.items.append(self._item(ordinal, line, request, metadata, paths, positions, given))

    def _item(
        self,
        ordinal: int,
        line: int,
        request: GenerateRequest | EditRequest,
        metadata: dict[str, Any],
        paths: list[Path],
        positions: list[int],
        given: tuple[str, ...],
    ) -> DatasetItem:
        """The lean item of a validated line, under its key (see the module docstring)."""
        payload = request.input_payload()
        for position, local in zip(positions, paths, strict=True):
            payload["image_urls"][position] = str(local)
        canonical = json.dumps(
            [self.kind, payload, metadata], sort_keys=True, separators=(",", ":")
        )
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:24]
        key = f"{digest}-{self.seen[digest]}"
        self.seen[digest] += 1
        names = tuple(sorted(request.model_fields_set))
        names = self.names.setdefault(names, names)
        values = tuple(getattr(request, name) for name in names)
        edit = self.kind == "edit"
        return DatasetItem(
            ordinal,
            line,
            key,
            edit,
            names,
            values,
            tuple(paths),
            tuple(positions),
            given,
            metadata or None,
        )

    def finish(self) -> list[DatasetItem]:
        if not self.items and not self.problems:
            self.problems.append((0, "no items: the file holds no prompts"))
        if self.problems:
            raise InputFileError(self.path, self.problems)
        return self.items


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputFileError(path, [(0, f"cannot read it: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise InputFileError(path, [(0, f"not UTF-8 text (byte {exc.start})")]) from exc


def _read_jsonl(reader: _Reader, text: str) -> None:
    for number, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw, parse_constant=_no_constant)
        except ValueError as exc:
            reader.problems.append((number, f"not valid JSON ({_json_reason(exc)})"))
            continue
        got = _JSON_TYPES.get(type(obj).__name__, "a number")
        if isinstance(obj, dict):
            reader.add(number, obj)
        else:
            reader.problems.append((number, f"not a JSON object (got {got})"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _json_reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc)


def _read_csv(reader: _Reader, text: str) -> None:
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        names = [name.strip() for name in next(rows, [])]
        for name, count in Counter(names).items():
            if name not in _CSV_COLUMNS:
                reader.problems.append(
                    (rows.line_num, f"unknown column {name!r}{_HINTS.get(name, '')}")
                )
            elif count > 1:
                reader.problems.append((rows.line_num, f"column {name!r} appears {count} times"))
        for cells in rows:
            if not any(cell.strip() for cell in cells):
                continue
            problems = ["more cells than the header has columns"] if len(cells) > len(names) else []
            fields: dict[str, Any] = {}
            for name, cell in zip(names, cells, strict=False):
                if name in _CSV_COLUMNS and cell.strip():
                    try:
                        fields[name] = _cell(name, cell.strip())
                    except ValueError as exc:
                        problems.append(f"{name}: {exc}")
            reader.add(rows.line_num, fields, problems)
    except csv.Error as exc:
        reader.problems.append((rows.line_num, f"not valid CSV ({exc})"))


def _cell(name: str, cell: str) -> Any:
    """Convert a non-empty CSV cell to the type its column takes."""
    if name in ("seed", "num_images", "num_inference_steps"):
        if not _INT_RE.fullmatch(cell):
            raise ValueError(f"not a whole number: {cell!r}")
        return int(cell)
    if name in ("sync_mode", "enable_safety_checker"):
        if cell.lower() not in _BOOLS:
            raise ValueError(f"not true/false, 1/0 or yes/no: {cell!r}")
        return _BOOLS[cell.lower()]
    if name == "metadata":
        try:
            return json.loads(cell, parse_constant=_no_constant)
        except ValueError as exc:
            raise ValueError(f"not valid JSON ({_json_reason(exc)})") from None
    return cell
