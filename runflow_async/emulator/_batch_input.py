"""The body of a batch create: its shape (``EmulatorConfig.batch_body``) and each item's input.

Two shapes are documented (``../shared/runflow-api.md`` §4): the OpenAPI's
``{"input": [item, ...], "metadata"?, "callback_url"?}``, where an item is one
model input plus an optional ``client_ref`` (stripped before validation), and the
batch guide's ``{"items": [{"input": {...}, "client_ref"?}, ...], "callback_url"?}``.
``batch_body`` says which the server takes: ``openapi`` (the default), ``guide``
or ``either``. A body in a shape it does not take is refused 422, naming the
shape it does take.

Every item is validated as the input of a run create of the same model
(:func:`~runflow_async.emulator._validation.validate_create`), independently;
an error names its item by index in ``field`` (``input.3.prompt``,
``items.3.input.prompt``) and in ``message`` (``item 3: ...``). Any error
refuses the whole batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from runflow_async._pricing import GENERATE_MODEL
from runflow_async.emulator._validation import (
    CreateRequest,
    FieldError,
    field_error,
    validate_create,
)

__all__ = [
    "BATCH_BODIES",
    "BATCH_MODELS",
    "MAX_ITEMS",
    "BatchRequest",
    "batch_capable",
    "parse_batch",
]

BATCH_BODIES = ("openapi", "guide", "either")
"""Values of ``EmulatorConfig.batch_body``."""

BATCH_MODELS = ("all", "text-to-image", "none")
"""Values of ``EmulatorConfig.batch_models``."""

MAX_ITEMS = 100
_MAX_CALLBACK_URL = 2048
_SHAPES = {
    "openapi": '{"input": [{...}, ...]} (the OpenAPI shape)',
    "guide": '{"items": [{"input": {...}}, ...]} (the batch guide\'s shape)',
}


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """A valid batch create.

    Attributes:
        items: One valid run create per item, in order (``metadata`` is the batch's).
        metadata: Caller's metadata.
        callback_url: Where the batch's callback goes.
        shape: The shape it came in: ``openapi`` or ``guide``.
    """

    items: list[CreateRequest]
    metadata: dict[str, Any] | None
    callback_url: str | None
    shape: str


def batch_capable(mode: str, model: str) -> bool:
    """Return whether ``model`` takes batches when ``batch_models`` is ``mode``."""
    return mode == "all" or (mode == "text-to-image" and model == GENERATE_MODEL)


def _shape(body: dict[str, Any], accepted: str) -> tuple[str | None, list[FieldError]]:
    """Return the shape of ``body`` if the server takes it, else why not."""
    has_input, has_items = "input" in body, "items" in body
    if has_input and has_items and accepted == "either":
        error = field_error("body", "send either input or items, not both", "ambiguous_shape")
        return None, [error]
    sent = "guide" if has_items and not has_input else "openapi"
    if accepted in ("either", sent):
        return sent, []
    field = "items" if sent == "guide" else "input"
    message = f"this server takes the batch body {_SHAPES[accepted]}, not {_SHAPES[sent]}"
    return None, [field_error(field, message, "unsupported_shape")]


def _envelope(body: dict[str, Any]) -> list[FieldError]:
    errors = []
    url = body.get("callback_url")
    if url is not None:
        if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            errors.append(field_error("callback_url", "must be an http(s) URL", "invalid_url"))
        elif len(url) > _MAX_CALLBACK_URL:
            message = "must be at most 2048 characters"
            errors.append(field_error("callback_url", message, "too_long"))
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        errors.append(field_error("metadata", "must be an object", "invalid_type"))
    return errors


def _split(entry: Any, shape: str) -> tuple[Any, Any]:
    """Return ``(model input, client_ref)`` of one entry of the list (``client_ref`` stripped)."""
    if shape == "guide":
        if not isinstance(entry, dict):
            return entry, None
        data = entry.get("input")
        ref = entry.get("client_ref")
        if isinstance(data, dict) and "client_ref" in data:
            ref = data["client_ref"] if ref is None else ref
            data = {key: value for key, value in data.items() if key != "client_ref"}
        return data, ref
    if not isinstance(entry, dict):
        return entry, None
    data = {key: value for key, value in entry.items() if key != "client_ref"}
    return data, entry.get("client_ref")


def _renamed(error: FieldError, index: int, shape: str) -> FieldError:
    """``error`` of one item's run-create check, named after the item."""
    field = error["field"]
    item = f"items.{index}" if shape == "guide" else f"input.{index}"
    if shape == "guide":
        path = f"{item}.{field}"
    elif field == "input":
        path = item
    else:
        path = f"{item}.{field.removeprefix('input.')}"
    return {**error, "field": path, "message": f"item {index}: {error['message']}"}


def _items(
    entries: list[Any], model: str, shape: str
) -> tuple[list[CreateRequest], list[FieldError]]:
    valid: list[CreateRequest] = []
    errors: list[FieldError] = []
    for index, entry in enumerate(entries):
        data, ref = _split(entry, shape)
        request, found = validate_create({"input": data, "client_ref": ref}, model)
        if request is None:
            errors.extend(_renamed(error, index, shape) for error in found)
        else:
            valid.append(request)
    return valid, errors


def parse_batch(
    body: Any, model: str, accepted: str
) -> tuple[BatchRequest | None, list[FieldError]]:
    """Check a batch create body for ``model``, the server taking the ``accepted`` shape.

    Returns:
        The request and no errors, or ``None`` and every error found.
    """
    if not isinstance(body, dict):
        return None, [field_error("body", "must be a JSON object", "invalid_type")]
    shape, errors = _shape(body, accepted)
    if shape is None:
        return None, errors
    key = "items" if shape == "guide" else "input"
    entries = body.get(key)
    errors = _envelope(body)
    if not isinstance(entries, list):
        code = "required" if entries is None else "invalid_type"
        message = "is required" if entries is None else "must be a list of items"
        return None, [field_error(key, message, code), *errors]
    if not 1 <= len(entries) <= MAX_ITEMS:
        message = f"must hold 1 to {MAX_ITEMS} items, got {len(entries)}"
        return None, [field_error(key, message, "out_of_range"), *errors]
    items, item_errors = _items(entries, model, shape)
    errors.extend(item_errors)
    if errors:
        return None, errors
    metadata = body.get("metadata")
    items = [dataclasses.replace(item, metadata=metadata) for item in items]
    return BatchRequest(items, metadata, body.get("callback_url"), shape), []
