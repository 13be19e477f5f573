"""Edit inputs that are not plain URLs: ``runflow://assets/{id}`` refs and ``data:`` URIs.

Facts: the official SDK's README and changelog say the API resolves
``runflow://assets/{id}`` refs "at dispatch" and tell users to pass ``asset.ref``;
the docs allow small inline images ("< 1 MiB inline is fine", upload-large-files
guide); an older API answered a ref with ``media URL must use HTTP(S) or data URI,
got 'runflow'``. Assumptions: a ref names a confirmed asset of the caller's
organisation and is checked when the run is created (an unknown one is ``422``,
before anything is billed); a ``data:`` URI must be base64 and decode to an image
whose format the emulator recognises (PNG, JPEG, WebP, GIF).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from runflow_async._imagesize import image_size_from_bytes
from runflow_async._pricing import Size

__all__ = [
    "ASSET_REF_PREFIX",
    "MediaRules",
    "Problem",
    "asset_ref_id",
    "check_media_url",
    "data_uri_image",
    "data_uri_size",
]

ASSET_REF_PREFIX = "runflow://assets/"
"""How an asset ref starts; the asset id (a UUID) follows."""

_REF = re.compile(
    r"runflow://assets/(?P<id>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
)
_SCHEME = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")
_DATA = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)", re.DOTALL)

Problem = tuple[str, str]
"""``(message, code)`` of one refused input."""


@dataclass(frozen=True, slots=True)
class MediaRules:
    """What an edit's ``image_urls`` may hold besides http(s) URLs.

    Attributes:
        asset_refs: ``resolve`` accepts ``runflow://assets/{id}`` refs; ``refuse``
            answers them as the older API did.
        data_uri_max_bytes: Largest decoded ``data:`` image; 0 refuses them all.
    """

    asset_refs: str = "resolve"
    data_uri_max_bytes: int = 1_048_576


def asset_ref_id(url: str) -> str | None:
    """Return the asset id of a well-formed ``runflow://assets/{id}`` ref (lower case), or None."""
    match = _REF.fullmatch(url)
    return None if match is None else match["id"].lower()


def _decode(text: str) -> bytes | None:
    """Return the bytes of a ``data:`` URI, or ``None`` if it is not one with a body."""
    match = _DATA.fullmatch(text)
    if match is None:
        return None
    params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
    payload = match["payload"]
    if "base64" not in params:
        return unquote_to_bytes(payload)
    try:
        return base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def data_uri_image(text: str, limit: int) -> tuple[bytes | None, Problem | None]:
    """Return the image bytes of a ``data:`` URI, or why it is refused.

    Args:
        text: The ``data:`` URI.
        limit: Largest decoded size accepted, in bytes.
    """
    if limit <= 0:
        return None, ("data: URIs are not accepted here; upload the image as an asset", "data_uri")
    # Base64 holds 3 bytes in 4 characters: a far longer text cannot fit the limit.
    if len(text) > limit * 4 // 3 + 1024:
        return None, _too_large(limit)
    data = _decode(text)
    if data is None:
        return None, ("must be a base64 data: URI (data:image/png;base64,...)", "invalid_data_uri")
    if len(data) > limit:
        return None, _too_large(limit)
    if image_size_from_bytes(data) is None:
        message = "data: URI does not hold a PNG, JPEG, WebP or GIF image"
        return None, (message, "invalid_data_uri")
    return data, None


def _too_large(limit: int) -> Problem:
    message = f"data: URI image is over {limit} bytes decoded; upload it as an asset instead"
    return message, "too_large"


def data_uri_size(text: str, limit: int) -> Size | None:
    """Return the pixel size of an accepted ``data:`` image, or ``None``."""
    data, _ = data_uri_image(text, limit)
    return None if data is None else image_size_from_bytes(data)


def check_media_url(value: object, rules: MediaRules) -> Problem | None:
    """Return why one ``image_urls`` entry is refused, or ``None`` when it may be used.

    A ref is only checked for its form here; whether its asset exists is the
    create handler's question (:func:`runflow_async.emulator._inputs.unresolved_refs`).
    """
    if not isinstance(value, str):
        return "must be a URL string", "invalid_type"
    if value.startswith(("http://", "https://")):
        return None
    match = _SCHEME.match(value)
    scheme = "" if match is None else match["scheme"].lower()
    if scheme == "data":
        return data_uri_image(value, rules.data_uri_max_bytes)[1]
    if scheme == "runflow" and rules.asset_refs == "resolve":
        if asset_ref_id(value) is None:
            return "an asset ref must be runflow://assets/{asset_id} (a UUID)", "invalid_ref"
        return None
    if rules.asset_refs == "resolve":
        message = (
            f"media URL must use HTTP(S), a data URI or a runflow://assets ref, got {scheme!r}"
        )
    else:
        message = f"media URL must use HTTP(S) or data URI, got {scheme!r}"
    return message, "invalid_url"
