"""Assets and the other image inputs of an edit: ``runflow://assets`` refs and ``data:`` URIs.

An edit's ``image_urls`` item is an http(s) URL, a ``runflow://assets/{uuid}``
ref, an :class:`Asset` (sent as its signed ``url`` or its ``ref``: see
``EditRequest.assets_as``) or, behind an explicit opt-in, a ``data:`` URI of a
small base64 image. The rules for each string form live here, pure (no I/O).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from runflow_async._core.errors import UnprocessableEntityError
from runflow_async._imagesize import image_type_from_bytes

__all__ = [
    "ASSET_REF_PREFIX",
    "DEFAULT_MAX_DATA_URI_BYTES",
    "Asset",
    "AssetRefRefusedError",
    "data_uri_bytes",
    "image_item_problem",
    "is_asset_ref",
]

ASSET_REF_PREFIX = "runflow://assets/"
DEFAULT_MAX_DATA_URI_BYTES = 1024 * 1024
"""The default cap of a ``data:`` URI's image: 1 MiB decoded (docs: "< 1 MiB: inline")."""

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_ASSET_REF = re.compile(re.escape(ASSET_REF_PREFIX) + _UUID)
_DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<payload>.*)", re.DOTALL)
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")


class Asset(BaseModel):
    """An uploaded file, as the confirmation and ``GET /v1/assets/{id}`` return it.

    Pass it (or its ``url`` or ``ref``) in an edit's ``image_urls``. The ``url``
    is signed and short-lived: keep ``id`` and call
    :meth:`RunflowClient.get_asset` for a fresh one. Other fields the API sends
    (``org_id``, ``folder_id``, ``thumbnail_url``, ...) are kept as extra attributes.

    Attributes:
        id: The asset id.
        url: A signed GET URL of the file.
        name: The file name given at upload.
        mime_type: The file's type, e.g. ``image/png``.
        size_bytes: The file's size.
        width: Pixel width, read from the file's header at upload when recognised.
        height: Pixel height, likewise.
        created_at: When the upload session was opened.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    url: str
    name: str
    mime_type: str
    size_bytes: int
    width: int | None = None
    height: int | None = None
    created_at: datetime | None = None

    @property
    def ref(self) -> str:
        """``runflow://assets/{id}``: the reference the API resolves to the file at dispatch.

        It never expires, unlike ``url``; whether klein's endpoints accept it is
        not settled (see the README's "Asset inputs").
        """
        return ASSET_REF_PREFIX + self.id

    def __repr__(self) -> str:
        # The URL's query string is a credential: leave the URL out.
        return (
            f"Asset(id={self.id!r}, name={self.name!r}, mime_type={self.mime_type!r}, "
            f"size_bytes={self.size_bytes!r})"
        )


class AssetRefRefusedError(UnprocessableEntityError):
    """422: the API refused a ``runflow://assets/...`` ref in ``image_urls``; nothing was created.

    Send the asset's signed URL instead: ``EditRequest(assets_as="url")`` (the
    default) for :class:`Asset` items, or ``asset.url`` in place of ``asset.ref``.

    Attributes:
        refs: The refs the refused request carried.
    """

    def __init__(self, message: str, *, refs: list[str], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.refs = refs


def is_asset_ref(value: str) -> bool:
    """Whether ``value`` is a ``runflow://assets/{uuid}`` ref."""
    return _ASSET_REF.fullmatch(value) is not None


def data_uri_bytes(value: str, *, max_bytes: int) -> bytes:
    """Decode a ``data:image/...;base64,...`` URI's image, refusing anything else.

    The encoded length is checked before decoding, so an oversized URI is never
    decoded.

    Raises:
        ValueError: Not a base64 image URI, over ``max_bytes`` decoded, not valid
            base64, or bytes that are not the declared image type.
    """
    match = _DATA_URI.fullmatch(value)
    if match is None:
        raise ValueError("a data: URI must be data:<image type>;base64,<data>")
    mime, payload = match["mime"].lower(), match["payload"]
    if mime not in _IMAGE_TYPES:
        raise ValueError(f"a data: URI must carry a PNG, JPEG, WebP or GIF image, not {mime}")
    if len(payload) > (max_bytes + 2) // 3 * 4:
        raise ValueError(_too_large(max_bytes))
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise ValueError("the data: URI is not valid base64") from None
    if len(data) > max_bytes:
        raise ValueError(_too_large(max_bytes))
    actual = image_type_from_bytes(data)
    if actual != mime:
        found = "no image" if actual is None else actual
        raise ValueError(f"the data: URI declares {mime} but holds {found}")
    return data


def _too_large(max_bytes: int) -> str:
    return (
        f"the data: URI's image is over max_data_uri_bytes ({max_bytes} bytes decoded); "
        "upload it instead (pass it as a local file)"
    )


def image_item_problem(item: str, *, allow_data_uris: bool, max_data_uri_bytes: int) -> str | None:
    """Why the string ``item`` cannot be an edit's image input, or ``None`` if it can."""
    scheme, sep, rest = item.partition("://")
    if scheme in ("https", "http") and sep:
        return None if rest else "is not a complete http(s) URL"
    if scheme == "runflow" and sep:
        if is_asset_ref(item):
            return None
        return "a runflow:// ref must be runflow://assets/<asset uuid>"
    if item.startswith("data:"):
        if not allow_data_uris:
            return (
                "data: URIs are sent only with allow_data_uris=True (whether the API "
                "accepts them is not settled); otherwise pass the image as a local "
                "file, which is uploaded"
            )
        try:
            data_uri_bytes(item, max_bytes=max_data_uri_bytes)
        except ValueError as exc:
            return str(exc)
        return None
    return (
        "must be an http(s) URL, a runflow://assets/<id> ref or a data: URI "
        "(a str is never read as a local path: pass a pathlib.Path)"
    )
