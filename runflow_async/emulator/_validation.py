"""Validation of a create-run body, written from the model pages, not from the client's models.

Rules (https://docs.runflow.io/models/black-forest-labs/flux-2-klein-9b and ``.../edit``,
with the limits the pages leave open taken from fal's klein schema): every error is
collected, then all are reported at once as ``422 VALIDATION_ERROR``. ``null`` for an
optional field means "use the default".
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from runflow_async._pricing import EDIT_MODEL, PRESET_SIZES, Size
from runflow_async.emulator._media import MediaRules, check_media_url

__all__ = [
    "DEFAULT_RULES",
    "CreateRequest",
    "FieldError",
    "InputRules",
    "field_error",
    "validate_create",
]

FieldError = dict[str, str]
"""One entry of the envelope's ``errors``: ``{field, message, code}``."""

_COMMON_FIELDS = frozenset(
    {
        "prompt",
        "seed",
        "num_inference_steps",
        "image_size",
        "num_images",
        "sync_mode",
        "enable_safety_checker",
        "output_format",
    }
)
_EDIT_FIELDS = _COMMON_FIELDS | {"image_urls"}
_INT_RANGES: Mapping[str, tuple[int, int]] = {
    "seed": (0, 2_147_483_647),
    "num_inference_steps": (1, 50),
    "num_images": (1, 4),
}
_FORMATS = ("jpeg", "png", "webp")
_SIDE = (64, 2048)
_MAX_IMAGE_URLS = 4
_MAX_CLIENT_REF = 255
_MAX_CALLBACK_URL = 2048


@dataclass(frozen=True, slots=True)
class InputRules:
    """The switches of input validation (``EmulatorConfig`` fields of the same names).

    Attributes:
        reject_unknown_input_fields: Refuse ``input`` fields the model page does
            not list; by default they are kept (echoed in ``input``) and ignored.
        media: What ``image_urls`` may hold besides http(s) URLs.
    """

    reject_unknown_input_fields: bool = False
    media: MediaRules = dataclasses.field(default_factory=MediaRules)


DEFAULT_RULES = InputRules()
"""The emulator's default rules: unknown fields kept, refs and small ``data:`` images taken."""


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """A valid create body, with the inputs that shape the run already resolved.

    Attributes:
        model: Model slug.
        input: The ``input`` object as sent.
        client_ref: Caller's correlation id.
        metadata: Caller's metadata.
        callback_url: Where a callback would go.
        size: Requested output size, or ``None`` for the model's default.
        num_images: Images to produce.
        output_format: ``png``, ``jpeg`` or ``webp``.
        seed: The requested seed, if any.
        num_inputs: Number of edit input images (0 for text-to-image).
    """

    model: str
    input: dict[str, Any]
    client_ref: str | None
    metadata: dict[str, Any] | None
    callback_url: str | None
    size: Size | None
    num_images: int
    output_format: str
    seed: int | None
    num_inputs: int


def field_error(field: str, message: str, code: str) -> FieldError:
    """Return one ``errors`` entry."""
    return {"field": field, "message": message, "code": code}


_err = field_error


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass in Python but not an integer in JSON.
    return type(value) is int


def _is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _check_image_size(value: Any, errors: list[FieldError]) -> Size | None:
    field = "input.image_size"
    if isinstance(value, str):
        if value in PRESET_SIZES:
            return PRESET_SIZES[value]
        errors.append(_err(field, f"must be one of {', '.join(PRESET_SIZES)}", "invalid_choice"))
        return None
    if not isinstance(value, dict):
        errors.append(_err(field, "must be a preset name or {width, height}", "invalid_type"))
        return None
    sides: list[int] = []
    for key in ("width", "height"):
        side = value.get(key)
        if not _is_int(side):
            errors.append(_err(f"{field}.{key}", "must be an integer", "invalid_type"))
        elif not _SIDE[0] <= side <= _SIDE[1]:
            errors.append(_err(f"{field}.{key}", "must be in 64..2048", "out_of_range"))
        else:
            sides.append(side)
    errors.extend(
        _err(f"{field}.{key}", "unknown field", "unknown_field")
        for key in value
        if key not in ("width", "height")
    )
    return (sides[0], sides[1]) if len(sides) == 2 else None


def _check_image_urls(value: Any, errors: list[FieldError], media: MediaRules) -> int:
    field = "input.image_urls"
    if value is None:
        errors.append(_err(field, "is required", "required"))
        return 0
    if not isinstance(value, list):
        errors.append(_err(field, "must be a list of URLs", "invalid_type"))
        return 0
    if not 1 <= len(value) <= _MAX_IMAGE_URLS:
        errors.append(_err(field, "must hold 1 to 4 URLs", "out_of_range"))
    for index, url in enumerate(value):
        if (problem := check_media_url(url, media)) is not None:
            errors.append(_err(f"{field}.{index}", *problem))
    return len(value)


def _check_input(
    data: dict[str, Any], edit: bool, errors: list[FieldError], rules: InputRules
) -> tuple[Size | None, int]:
    allowed = _EDIT_FIELDS if edit else _COMMON_FIELDS
    if rules.reject_unknown_input_fields:
        errors.extend(
            _err(f"input.{key}", "unknown field", "unknown_field")
            for key in data
            if key not in allowed
        )
    prompt = data.get("prompt")
    if prompt is None:
        errors.append(_err("input.prompt", "is required", "required"))
    elif not isinstance(prompt, str):
        errors.append(_err("input.prompt", "must be a string", "invalid_type"))
    elif not prompt.strip():
        errors.append(_err("input.prompt", "must not be empty", "empty"))
    for key, (low, high) in _INT_RANGES.items():
        value = data.get(key)
        if value is None:
            continue
        if not _is_int(value):
            errors.append(_err(f"input.{key}", "must be an integer", "invalid_type"))
        elif not low <= value <= high:
            errors.append(_err(f"input.{key}", f"must be in {low}..{high}", "out_of_range"))
    errors.extend(
        _err(f"input.{key}", "must be a boolean", "invalid_type")
        for key in ("sync_mode", "enable_safety_checker")
        if data.get(key) is not None and not isinstance(data[key], bool)
    )
    fmt = data.get("output_format")
    if fmt is not None and fmt not in _FORMATS:
        errors.append(_err("input.output_format", "must be jpeg, png or webp", "invalid_choice"))
    size = None if data.get("image_size") is None else _check_image_size(data["image_size"], errors)
    num_inputs = _check_image_urls(data.get("image_urls"), errors, rules.media) if edit else 0
    return size, num_inputs


def _check_envelope(body: dict[str, Any], errors: list[FieldError]) -> None:
    client_ref = body.get("client_ref")
    if client_ref is not None:
        if not isinstance(client_ref, str):
            errors.append(_err("client_ref", "must be a string", "invalid_type"))
        elif len(client_ref) > _MAX_CLIENT_REF:
            errors.append(_err("client_ref", "must be at most 255 characters", "too_long"))
    callback_url = body.get("callback_url")
    if callback_url is not None:
        if not _is_http_url(callback_url):
            errors.append(_err("callback_url", "must be an http(s) URL", "invalid_url"))
        elif len(callback_url) > _MAX_CALLBACK_URL:
            errors.append(_err("callback_url", "must be at most 2048 characters", "too_long"))
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        errors.append(_err("metadata", "must be an object", "invalid_type"))


def validate_create(
    body: Any, model: str, rules: InputRules = DEFAULT_RULES
) -> tuple[CreateRequest | None, list[FieldError]]:
    """Check a create body for ``model`` under ``rules`` (the emulator's: ``state.input_rules``).

    Asset refs are checked for their form only: whether each names an asset is
    :func:`runflow_async.emulator._inputs.unresolved_refs`'s question.

    Returns:
        The resolved request and no errors, or ``None`` and every error found.
    """
    errors: list[FieldError] = []
    if not isinstance(body, dict):
        return None, [_err("body", "must be a JSON object", "invalid_type")]
    data = body.get("input")
    size: Size | None = None
    num_inputs = 0
    if isinstance(data, dict):
        size, num_inputs = _check_input(data, model == EDIT_MODEL, errors, rules)
    elif data is None:
        errors.append(_err("input", "is required", "required"))
    else:
        errors.append(_err("input", "must be an object", "invalid_type"))
    _check_envelope(body, errors)
    if errors or not isinstance(data, dict):
        return None, errors
    request = CreateRequest(
        model=model,
        # Interned keys: a million stored runs should not hold a million "prompt"s.
        input={sys.intern(key): value for key, value in data.items()},
        client_ref=body.get("client_ref"),
        metadata=body.get("metadata"),
        callback_url=body.get("callback_url"),
        size=size,
        num_images=data.get("num_images") or 1,
        output_format=data.get("output_format") or "png",
        seed=data.get("seed"),
        num_inputs=num_inputs,
    )
    return request, []
