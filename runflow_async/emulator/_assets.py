"""Uploaded assets: upload sessions, the bytes PUT to them, and the Asset object shown.

The documented three-step flow (https://docs.runflow.io/guides/upload-large-files,
``/api-reference/assets/create-a-presigned-upload-session`` and
``/api-reference/media/confirm-upload-and-create-asset-record``): a session is opened
with ``{filename, mime_type, size_bytes}``, the bytes are PUT to its presigned
``upload_url``, and a confirmation turns it into an Asset whose ``url`` is a
presigned GET, signed afresh on every read. The real backend HEADs the stored object
at confirmation; here the pixel size is read from the bytes then, so edits that use
the asset are billed by its real size.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runflow_async._imagesize import image_size_from_bytes
from runflow_async._pricing import Size
from runflow_async.emulator._clock import EmulatedClock
from runflow_async.emulator._validation import FieldError, field_error

__all__ = [
    "MAX_UPLOAD_BYTES",
    "SUPPORTED_MIME_TYPES",
    "TYPES_HINT",
    "AssetRecord",
    "AssetStore",
    "UploadSession",
    "asset_types",
    "is_uuid",
    "validate_upload_session",
]

MAX_UPLOAD_BYTES = 52_428_800
"""The documented upload limit: 50 MiB."""

SUPPORTED_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
"""Image types an upload session accepts, as ``GET /v1/assets/types`` lists them."""

_EXTENSIONS = {
    "image/gif": ["gif"],
    "image/jpeg": ["jpg", "jpeg"],
    "image/png": ["png"],
    "image/webp": ["webp"],
}
_UNTYPED = "application/octet-stream"
_ACCEPTED = ", ".join(sorted(SUPPORTED_MIME_TYPES))
TYPES_HINT = f"accepted types: {_ACCEPTED} (GET /v1/assets/types lists them)"
"""The hint a refused ``mime_type`` carries."""
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_uuid(value: str) -> bool:
    """Return whether ``value`` is a UUID in its canonical 8-4-4-4-12 hex form."""
    return _UUID.fullmatch(value) is not None


def asset_types() -> dict[str, Any]:
    """Return the body of ``GET /v1/assets/types``.

    The docs name the route ("supported MIME list") but not its shape; this one is
    an assumption in the API's list style: ``items`` of ``{mime_type, asset_type,
    extensions, max_size_bytes}``, plus the bare ``mime_types`` for a reader that
    only wants the names.
    """
    items = [
        {
            "mime_type": mime_type,
            "asset_type": "image",
            "extensions": _EXTENSIONS[mime_type],
            "max_size_bytes": MAX_UPLOAD_BYTES,
        }
        for mime_type in sorted(SUPPORTED_MIME_TYPES)
    ]
    return {"items": items, "mime_types": sorted(SUPPORTED_MIME_TYPES)}


_MAX_FILENAME = 500
_MAX_MIME_TYPE = 255


@dataclass(frozen=True, slots=True)
class UploadSession:
    """A valid ``POST /v1/asset-uploads`` body."""

    filename: str
    mime_type: str
    size_bytes: int


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is no JSON integer


def _check_text(body: dict[str, Any], key: str, limit: int, errors: list[FieldError]) -> None:
    value = body.get(key)
    if value is None:
        errors.append(field_error(key, "is required", "required"))
    elif not isinstance(value, str):
        errors.append(field_error(key, "must be a string", "invalid_type"))
    elif not 1 <= len(value) <= limit:
        errors.append(field_error(key, f"must be 1 to {limit} characters", "out_of_range"))


def validate_upload_session(body: Any) -> tuple[UploadSession | None, list[FieldError]]:
    """Check an upload-session body; return it, or ``None`` and every error found."""
    if not isinstance(body, dict):
        return None, [field_error("body", "must be a JSON object", "invalid_type")]
    errors: list[FieldError] = []
    _check_text(body, "filename", _MAX_FILENAME, errors)
    _check_text(body, "mime_type", _MAX_MIME_TYPE, errors)
    mime_type = body.get("mime_type")
    if isinstance(mime_type, str) and mime_type and mime_type not in SUPPORTED_MIME_TYPES:
        if mime_type.split(";")[0].strip().lower() == _UNTYPED:
            message = f"{_UNTYPED} is an untyped upload; declare the image's type: {TYPES_HINT}"
        else:
            message = f"{mime_type[:50]!r} is not supported; {TYPES_HINT}"
        errors.append(field_error("mime_type", message, "unsupported"))
    size = body.get("size_bytes")
    if size is None:
        errors.append(field_error("size_bytes", "is required", "required"))
    elif not _is_int(size):
        errors.append(field_error("size_bytes", "must be an integer", "invalid_type"))
    elif not 1 <= size <= MAX_UPLOAD_BYTES:
        message = f"must be in 1..{MAX_UPLOAD_BYTES} (50 MiB)"
        errors.append(field_error("size_bytes", message, "out_of_range"))
    if errors:
        return None, errors
    return UploadSession(body["filename"], body["mime_type"], body["size_bytes"]), []


@dataclass(slots=True, eq=False)
class AssetRecord:
    """An upload session and, once confirmed, the asset it became.

    Attributes:
        id: The asset id (a UUID string), fixed when the session opens.
        session: What the session declared.
        created: Emulated time the session opened.
        data: The bytes PUT so far (the last PUT wins), or ``None``.
        confirmed: Emulated time of the first confirmation, or ``None``.
        size: Pixel size read from the bytes at confirmation, if recognised.
        folder_id: The folder given at confirmation.
    """

    id: str
    session: UploadSession
    created: float
    data: bytes | None = None
    confirmed: float | None = None
    size: Size | None = None
    folder_id: str | None = None

    @property
    def upload_path(self) -> str:
        """Return the unsigned path the bytes are PUT to."""
        return f"/uploads/{self.id}"

    @property
    def content_path(self) -> str:
        """Return the unsigned path the confirmed asset is served from."""
        return f"/assets/{self.id}/content"

    def confirm(self, now: float, folder_id: str | None) -> None:
        """Turn the uploaded bytes into an asset; later confirmations change nothing."""
        if self.confirmed is None:
            self.confirmed = now
            self.folder_id = folder_id
            self.size = image_size_from_bytes(self.data or b"")

    def to_api(self, org_id: str, url_for: Callable[[str], str]) -> dict[str, Any]:
        """Return the Asset object, as the confirmation and ``GET /v1/assets/{id}`` show it."""
        created = EmulatedClock.iso(self.created)
        return {
            "id": self.id,
            "org_id": org_id,
            "folder_id": self.folder_id,
            "name": self.session.filename,
            "r2_key": f"assets/{org_id}/{self.id}",
            "url": url_for(self.content_path),
            "thumbnail_url": None,
            "mime_type": self.session.mime_type,
            "size_bytes": self.session.size_bytes,
            "asset_type": "image",
            "source_type": "upload",
            "source_id": None,
            "created_by": None,
            "created_at": created,
            "updated_at": EmulatedClock.iso(self.confirmed or self.created),
            "deleted_at": None,
            "deleted_by": None,
        }


class AssetStore:
    """Every upload session the emulator has opened, by asset id."""

    __slots__ = ("_rng", "by_id")

    def __init__(self, seed: int) -> None:
        # A stream of its own, so uploads never shift the draws of runs.
        self._rng = random.Random(f"runflow-emulator-assets:{seed}")
        self.by_id: dict[str, AssetRecord] = {}

    def open(self, session: UploadSession, now: float) -> AssetRecord:
        """Open an upload session and return its record."""
        asset_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        record = AssetRecord(asset_id, session, now)
        self.by_id[asset_id] = record
        return record

    def confirmed(self, asset_id: str) -> AssetRecord | None:
        """Return the confirmed asset ``asset_id``, or ``None``."""
        record = self.by_id.get(asset_id)
        return record if record is not None and record.confirmed is not None else None

    def image_size(self, asset_id: str) -> Size | None:
        """Return the pixel size of the confirmed asset ``asset_id``, if known."""
        record = self.confirmed(asset_id)
        return None if record is None else record.size
