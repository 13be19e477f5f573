"""Request models for the two FLUX.2 [klein] 9B endpoints.

Every input field of the model pages (docs.runflow.io/models/black-forest-labs/
flux-2-klein-9b and ``.../edit``) plus the request envelope (``callback_url``,
``metadata``, ``client_ref``). Bounds the docs leave open are ours, stated on
each field; the server stays authoritative and its 422 ``errors`` surface as
:class:`~runflow_async.UnprocessableEntityError`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
)

from runflow_async._core.assets import (
    ASSET_REF_PREFIX,
    DEFAULT_MAX_DATA_URI_BYTES,
    Asset,
    image_item_problem,
)
from runflow_async._core.errors import RequestValidationError
from runflow_async._keywords import unknown_names_message
from runflow_async._pricing import EDIT_MODEL, GENERATE_MODEL, PRESET_SIZES, Size

__all__ = [
    "CUSTOM_SIZE_MAX",
    "CUSTOM_SIZE_MIN",
    "MAX_SEED",
    "CustomImageSize",
    "EditRequest",
    "GenerateRequest",
    "ImagePreset",
    "ImageSize",
    "OutputFormat",
    "RunRequest",
    "build_request",
]

ImagePreset = Literal[
    "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]
OutputFormat = Literal["jpeg", "png", "webp"]

# Not documented by Runflow. Third-party listings give klein 9B a 2048x2048
# maximum; 64 px is the smallest size any FLUX endpoint we know accepts.
CUSTOM_SIZE_MIN = 64
CUSTOM_SIZE_MAX = 2048
# data: URIs are for small images ("< 1 MiB: inline"); past 50 MiB not even an upload is taken.
MAX_DATA_URI_CAP = 50 * 1024 * 1024
# Not documented by Runflow; the widest range seen for klein (a signed 32-bit int).
MAX_SEED = 2**31 - 1
# Runflow's 4B page allows 1-50 steps; fal allows 4-8 for 9B. We take the wider range.
MAX_STEPS = 50

_INPUT_FIELDS = (
    "prompt",
    "image_urls",
    "seed",
    "num_inference_steps",
    "image_size",
    "num_images",
    "sync_mode",
    "enable_safety_checker",
    "output_format",
)

_Dimension = Annotated[int, Field(ge=CUSTOM_SIZE_MIN, le=CUSTOM_SIZE_MAX)]


class CustomImageSize(BaseModel):
    """A custom output size in pixels (``{"width": W, "height": H}`` on the wire)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    width: _Dimension
    height: _Dimension


def _http_url(value: str, *, max_length: int | None = None) -> str:
    scheme, sep, rest = value.partition("://")
    if scheme not in ("https", "http") or not sep or not rest:
        raise ValueError("must be an http:// or https:// URL")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters")
    return value


def _check_json(value: Any, path: set[int]) -> None:
    """Raise ``ValueError`` unless ``value`` is plain JSON (all the API can receive)."""
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must hold finite numbers only (JSON has no NaN or Infinity)")
    elif isinstance(value, list | tuple | dict):
        if id(value) in path:
            raise ValueError("must not contain itself")
        path.add(id(value))
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise ValueError("must have string keys at every level")
                _check_text(key)
        for item in value.values() if isinstance(value, dict) else value:
            _check_json(item, path)
        path.discard(id(value))
    else:
        raise ValueError(f"must hold JSON values only, not {type(value).__name__}")


def _check_text(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must hold valid Unicode text (no lone surrogates)") from None


def _size_kind(value: Any) -> str:
    return "preset" if isinstance(value, str) else "custom"


ImageSize = Annotated[
    Annotated[ImagePreset, Tag("preset")] | Annotated[CustomImageSize, Tag("custom")],
    Discriminator(_size_kind),
]
"""A preset name or a :class:`CustomImageSize` (a ``(width, height)`` pair also works)."""


class RunRequest(BaseModel):
    """Fields shared by both endpoints. Use :class:`GenerateRequest` or :class:`EditRequest`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    model: ClassVar[str]

    prompt: str = Field(min_length=1)
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    num_inference_steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    image_size: ImageSize | None = None
    num_images: Annotated[int, Field(ge=1, le=4)] | None = None
    sync_mode: bool | None = None
    enable_safety_checker: bool | None = None
    output_format: OutputFormat | None = None
    callback_url: str | None = None
    metadata: dict[str, Any] | None = None
    client_ref: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("image_size", mode="before")
    @classmethod
    def _size_from_pair(cls, value: Any) -> Any:
        if isinstance(value, tuple) and len(value) == 2:
            return {"width": value[0], "height": value[1]}
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback_is_http(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value, max_length=2048)

    @field_validator("metadata")
    @classmethod
    def _metadata_is_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            _check_json(value, set())
        except RecursionError:
            raise ValueError("is nested too deeply") from None
        return value

    @property
    def size(self) -> Size | None:
        """The requested output size in pixels, or ``None`` for the model's default."""
        if self.image_size is None:
            return None
        if isinstance(self.image_size, CustomImageSize):
            return (self.image_size.width, self.image_size.height)
        return PRESET_SIZES[self.image_size]

    @property
    def images_per_run(self) -> int:
        """How many images the run will produce."""
        return self.num_images or 1

    def input_payload(self) -> dict[str, Any]:
        """Return the ``input`` object exactly as the API documents it (unset fields omitted).

        What ``model_dump(mode="json", exclude_none=True)`` gives for these fields,
        read directly: the model is strict, so every value is a JSON value as it
        is but a custom size (a model) and the URL list (copied: the body is the
        caller's to change).
        """
        fields = self.__dict__
        data: dict[str, Any] = {}
        for name in _INPUT_FIELDS:
            value = fields.get(name)
            if value is None:
                continue
            if isinstance(value, CustomImageSize):
                value = {"width": value.width, "height": value.height}
            elif isinstance(value, list):
                value = list(value)
            data[name] = value
        return data

    def to_body(self, *, client_ref: str | None = None) -> dict[str, Any]:
        """Return the JSON body of a create call.

        Args:
            client_ref: Used when the request does not set its own.
        """
        body: dict[str, Any] = {"input": self.input_payload()}
        if self.callback_url is not None:
            body["callback_url"] = self.callback_url
        if self.metadata is not None:
            body["metadata"] = self.metadata
        ref = self.client_ref or client_ref
        if ref is not None:
            body["client_ref"] = ref
        return body


class GenerateRequest(RunRequest):
    """A text-to-image run (``black-forest-labs/flux-2-klein-9b``, $0.006/MP)."""

    model: ClassVar[str] = GENERATE_MODEL


class EditRequest(RunRequest):
    """An image edit run (``black-forest-labs/flux-2-klein-9b/edit``, $0.011/MP in + out).

    ``image_urls`` takes 1-4 images (FLUX.2 klein accepts up to four reference
    images upstream), each an http(s) URL, a ``runflow://assets/{uuid}`` ref,
    an :class:`Asset`, or (only with ``allow_data_uris=True``) a ``data:`` URI
    of a base64 PNG/JPEG/WebP/GIF of at most ``max_data_uri_bytes`` decoded.
    A ``str`` is never read as a local path: :meth:`RunflowClient.edit` takes
    ``pathlib.Path`` and ``bytes`` items and uploads them first.

    Three fields shape how inputs are sent and are not sent themselves:
    ``assets_as`` (``"url"``, the default: an :class:`Asset` goes as its signed
    ``url``, as the docs document; ``"ref"``: as ``asset.ref``, which the
    official SDK's newest notes say the API resolves at dispatch, and older
    ones say klein refuses with 422, raised as :class:`AssetRefRefusedError`),
    ``allow_data_uris`` and ``max_data_uri_bytes`` (default 1 MiB).
    """

    model: ClassVar[str] = EDIT_MODEL

    # Before image_urls: its validator reads them.
    assets_as: Literal["url", "ref"] = "url"
    allow_data_uris: bool = False
    max_data_uri_bytes: Annotated[int, Field(ge=1, le=MAX_DATA_URI_CAP)] = (
        DEFAULT_MAX_DATA_URI_BYTES
    )
    image_urls: list[str | Asset] = Field(min_length=1, max_length=4)

    @field_validator("image_urls", mode="before")
    @classmethod
    def _urls_as_list(cls, value: Any) -> Any:
        if isinstance(value, tuple):
            value = list(value)
        for position, item in enumerate(value if isinstance(value, list) else ()):
            if isinstance(item, bytes | os.PathLike):
                raise ValueError(
                    f"item {position} is a local file ({type(item).__name__}): upload it "
                    "first (client.upload()) and pass the Asset, or pass it to client.edit()"
                )
            if not isinstance(item, str | Asset):
                raise ValueError(
                    f"item {position} must be a URL string or an Asset, not {type(item).__name__}"
                )
        return value

    @field_validator("image_urls")
    @classmethod
    def _urls_are_inputs(cls, value: list[str | Asset], info: ValidationInfo) -> list[str | Asset]:
        allow = info.data.get("allow_data_uris") is True
        cap = info.data.get("max_data_uri_bytes", DEFAULT_MAX_DATA_URI_BYTES)
        for position, item in enumerate(value):
            if isinstance(item, str):
                problem = image_item_problem(item, allow_data_uris=allow, max_data_uri_bytes=cap)
                if problem is not None:
                    raise ValueError(f"item {position}: {problem}")
        return value

    def input_payload(self) -> dict[str, Any]:
        """The ``input`` object, with each :class:`Asset` as ``assets_as`` says."""
        data = super().input_payload()
        data["image_urls"] = self.input_urls
        return data

    @property
    def input_urls(self) -> list[str]:
        """As sent: an :class:`Asset` as its ``url`` or ``ref`` (``assets_as``)."""
        ref = self.assets_as == "ref"
        return [
            item if isinstance(item, str) else item.ref if ref else item.url
            for item in self.image_urls
        ]

    @property
    def sends_refs(self) -> list[str]:
        """The ``runflow://assets`` refs this request sends (to explain a 422 about them)."""
        return [url for url in self.input_urls if url.startswith(ASSET_REF_PREFIX)]


_R = TypeVar("_R", bound=RunRequest)


def build_request(
    cls: type[_R],
    fields: Mapping[str, Any],
    *,
    where: str | None = None,
    also: Collection[str] = (),
) -> _R:
    """Validate ``fields`` into ``cls``, raising our own error type.

    Args:
        cls: The request model.
        fields: Its fields.
        where: The entry point, as the message about an unknown field starts.
        also: The entry point's other keywords, suggested for a misspelling too.

    Raises:
        RequestValidationError: Naming every invalid field (and for an unknown
            one the closest valid name); nothing was sent.
    """
    try:
        return cls.model_validate(dict(fields))
    except pydantic.ValidationError as exc:
        errors = [_field_error(err) for err in exc.errors(include_url=False, include_input=False)]
        unknown = unknown_names_message(
            fields, cls.model_fields, where=where or f"{cls.__name__}()", also=also
        )
        rest = [e for e in errors if e["field"] in cls.model_fields or e["field"] not in fields]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in rest)
        message = " ".join(
            part
            for part in (unknown, f"Invalid {cls.__name__}: {detail}." if rest else None)
            if part is not None
        )
        raise RequestValidationError(message, errors=errors) from exc


def _field_error(err: Any) -> dict[str, str]:
    """One pydantic error as ``{"field", "message"}``; an unknown field is named as such."""
    field = ".".join(str(part) for part in err["loc"] if part not in ("preset", "custom"))
    if err["type"] == "extra_forbidden":
        return {"field": field, "message": "unknown field"}
    return {"field": field or "(request)", "message": err["msg"].removeprefix("Value error, ")}
