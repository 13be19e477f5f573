"""Local image inputs of :meth:`RunflowClient.edit`: checked, then uploaded as assets.

``pathlib.Path`` (any ``os.PathLike``) and ``bytes`` items are local files. A
``str`` never is (it is a URL, a ``runflow://assets`` ref or a ``data:`` URI),
so a typo'd path cannot be sent as a URL, nor a URL read from disk.

Every local item is read and checked (size, and type from its header bytes)
before the first upload; each then goes through the three-step asset flow of
:mod:`runflow_async._http.assets` (keyless PUT). The edit's create is sent only
after every upload succeeded, so a failed upload bills nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from runflow_async._core.assets import Asset, AssetRefRefusedError
from runflow_async._core.errors import (
    APIError,
    NotSubmittedError,
    RequestValidationError,
    UnprocessableEntityError,
)
from runflow_async._core.requests import EditRequest, RunRequest, build_request
from runflow_async._http.assets import check_upload, read_upload_source, upload_asset
from runflow_async._http.transport import Transport
from runflow_async._imagesize import image_type_from_bytes

__all__ = [
    "ImageInput",
    "LocalImage",
    "edit_request",
    "ref_refusal",
    "upload_local_images",
]

LocalImage: TypeAlias = bytes | os.PathLike[str]
ImageInput: TypeAlias = str | Asset | LocalImage
"""One item of ``client.edit(image_urls=...)``."""

_PLACEHOLDER = "https://local.invalid/{}"
_NO_SUCH_ASSET = ("does not exist", "not found", "not confirmed", "asset_not_")
_SUFFIX = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def _is_local(item: object) -> bool:
    return isinstance(item, bytes | os.PathLike)


def _placeholders(items: Sequence[object]) -> list[object]:
    """``items`` with each local file replaced by a URL, to validate the rest before uploading."""
    return [_PLACEHOLDER.format(i) if _is_local(item) else item for i, item in enumerate(items)]


async def edit_request(
    transport: Transport,
    prompt: str,
    image_urls: Sequence[ImageInput] | ImageInput,
    fields: Mapping[str, Any],
) -> EditRequest:
    """The request of ``client.edit()``: validated, then its local files uploaded.

    Every field is validated (local files standing in as placeholder URLs) and
    every local file read and checked before the first upload.
    """
    single = isinstance(image_urls, str | bytes | os.PathLike | Asset)
    images: list[object] = [image_urls] if single else list(image_urls)  # type: ignore[arg-type]
    request = build_request(
        EditRequest,
        {"prompt": prompt, "image_urls": _placeholders(images), **fields},
        where="client.edit()",
        also=("timeout",),
    )
    if any(_is_local(item) for item in images):
        uploaded = await upload_local_images(transport, images)
        request = request.model_copy(update={"image_urls": uploaded})
    return request


async def _read(position: int, item: LocalImage) -> tuple[bytes, str, str]:
    """The bytes, file name and type of one local item, checked; nothing is sent."""
    if isinstance(item, bytes):
        data, name = item, f"image_urls[{position}]"
    else:
        data, name = await read_upload_source(item, None)
    mime_type = image_type_from_bytes(data)
    if mime_type is None and data:
        message = f"image_urls[{position}] ({name}) is not a PNG, JPEG, WebP or GIF image."
        raise RequestValidationError(message, errors=[{"field": "image_urls", "message": message}])
    check_upload(data, name, mime_type)  # the size (and an empty file)
    if isinstance(item, bytes):
        name = f"image-{position}.{_SUFFIX[str(mime_type)]}"
    return data, name, str(mime_type)


async def upload_local_images(transport: Transport, items: Sequence[object]) -> list[object]:
    """``items`` with each local file uploaded and replaced by its :class:`Asset`.

    Raises:
        RequestValidationError: A file that cannot be read, is empty, over 50 MiB
            or not a PNG/JPEG/WebP/GIF by its header; nothing was uploaded.
        NotSubmittedError: An upload failed (``reason="upload"``, the API error as
            ``__cause__``); no run was created.
    """
    staged = {
        i: await _read(i, item)
        for i, item in enumerate(items)
        if isinstance(item, bytes | os.PathLike)
    }
    done = list(items)
    for position, (data, name, mime_type) in staged.items():
        try:
            asset: Asset = await upload_asset(transport, data, filename=name, mime_type=mime_type)
        except APIError as exc:
            raise NotSubmittedError(
                f"Uploading image_urls[{position}] ({name}) failed, so no run was created: {exc}",
                reason="upload",
            ) from exc
        done[position] = asset
    return done


def ref_refusal(request: RunRequest, exc: UnprocessableEntityError) -> AssetRefRefusedError | None:
    """The typed error for a 422 that refused ``request``'s asset refs, or ``None``.

    It is one when the request sent refs and the 422 points at them: it names
    ``runflow`` or an ``image_urls`` field, or names no field at all (the rest of
    the request was validated here before it was sent). A 422 saying a ref's
    asset does not exist (or is not confirmed) is not: refs work, that one is wrong.
    """
    refs = request.sends_refs if isinstance(request, EditRequest) else []
    if not refs:
        return None
    text = f"{exc.message} {exc.errors}".lower()
    if any(words in text for words in _NO_SUCH_ASSET):
        return None
    if exc.errors and "runflow" not in text and "image_urls" not in text:
        return None
    return AssetRefRefusedError(
        f"The API refused the runflow://assets ref(s) in image_urls ({exc.message}); no run "
        "was created. Send the signed URL instead: EditRequest(assets_as='url') (the "
        "default) or client.edit(..., assets_as='url') for Asset items, or asset.url in "
        "place of asset.ref.",
        refs=refs,
        method=exc.method,
        path=exc.path,
        status=exc.status,
        code=exc.code,
        errors=exc.errors,
        request_id=exc.request_id,
    )
