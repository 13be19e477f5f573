"""Downloading output images: no API key, streamed to disk, checked to be an image.

Output URLs are presigned and expire (docs: concepts/callbacks), so they are
fetched without our ``Authorization`` header: the key must never travel to a
storage host. The body is written to a hidden temporary file beside the
destination (a small body at once when whole, in one thread call or none; a
large one streamed by the megabyte) and renamed over it only once it is whole,
under ``max_bytes``
and an image by its magic bytes (PNG, JPEG, WebP or GIF): a JSON or HTML page
served with ``200`` is a :class:`DownloadError`, and nothing is left on disk.
Connection errors, 429s and 5xx are retried here (a GET costs nothing); an
expired URL (403/404) is raised for the caller to re-read the run.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from anyio import to_thread

from runflow_async._core.config import DEFAULT_MAX_DOWNLOAD_BYTES
from runflow_async._core.errors import APIError, DownloadError
from runflow_async._http.errors import CLIENT_ERRORS, client_error, status_error
from runflow_async._http.retry import CallKind, with_retries
from runflow_async._http.transport import Transport, keyless_session
from runflow_async._imagesize import IMAGE_TYPE_BYTES, image_type_from_bytes

__all__ = ["IMAGE_SUFFIXES", "DownloadedFile", "download_to", "write_atomic"]

IMAGE_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
}
"""The file name suffix of each image type a download accepts."""

_CHUNK = 64 * 1024
_ERROR_BODY_BYTES = 64 * 1024  # enough for any error envelope; the rest is not read
_MAX_ATTEMPTS = 3
_INLINE_BYTES = 256 * 1024  # written on the loop: cheaper than a thread hop
_HOLD_BYTES = 2 * 1024 * 1024  # held in memory until whole: one thread hop
_SPILL_BYTES = 1024 * 1024  # past _HOLD_BYTES, written to the file this much at a time


@dataclass(frozen=True, slots=True)
class DownloadedFile:
    """A file written by :meth:`RunflowClient.download`.

    Attributes:
        path: Where it was written (with ``name_by_type``, the suffix of its type).
        sha256: The SHA-256 of the bytes written, hex.
        size: Bytes written.
        content_type: The image type read from the file's magic bytes (not the
            ``Content-Type`` the server claimed), e.g. ``"image/png"``.
    """

    path: Path
    sha256: str
    size: int
    content_type: str | None


TEMP_SUFFIX = ".rfa-part"
"""Ends the name of a file being written (``.NAME.RANDOM.rfa-part``, hidden)."""


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _temp_beside(dest: Path) -> tuple[int, Path]:
    """A new hidden file beside ``dest`` (its folder made if need be), open for writing.

    Created ``0o666`` less the umask, the mode a plain ``open()`` gives: the
    kernel applies the umask, so it is never read nor the mode changed after.
    """
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    try:
        return os.open(tmp, _CREATE, 0o666), tmp
    except FileNotFoundError:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return os.open(tmp, _CREATE, 0o666), tmp


def _write_chunks(fd: int, chunks: Iterable[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _close_and_rename(fd: int, chunks: Iterable[bytes], tmp: Path, dest: Path) -> None:
    """Write the rest of ``chunks``, close ``fd`` (whatever happens), rename ``tmp`` to ``dest``.

    ``tmp`` is removed if anything fails.
    """
    try:
        try:
            _write_chunks(fd, chunks)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(dest: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``dest``, then rename it over ``dest``.

    The file gets the mode a plain ``open()`` would give it (``0o666`` less the
    umask).
    """
    _write_whole(dest, [data])


def _too_large(safe_url: str, max_bytes: int) -> DownloadError:
    return DownloadError(
        f"The download is over {max_bytes} bytes (max_bytes); nothing was kept",
        code="too_large",
        method="GET",
        path=safe_url,
    )


def _not_an_image(safe_url: str, head: bytes) -> DownloadError:
    shown = head[:IMAGE_TYPE_BYTES].decode("ascii", "replace")
    return DownloadError(
        f"The download is not a PNG, JPEG, WebP or GIF image (it starts {shown!r}); "
        "nothing was kept",
        code="not_an_image",
        method="GET",
        path=safe_url,
    )


class _Body:
    """A body being received: held in memory while small, else spilled to its temporary file.

    A body of at most ``_HOLD_BYTES`` costs no thread hop until it is whole:
    then one (:func:`_write_whole`: create, write, chmod, rename), or none at
    all for one of at most ``_INLINE_BYTES`` (written on the loop: a thread
    hop costs more than writing it). A larger body is written by the megabyte,
    one hop each, so memory stays bounded whatever its size.
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.chunks: list[bytes] = []
        self.held = 0
        self.file: tuple[int, Path] | None = None

    async def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.held += len(chunk)
        if self.file is None and self.held > _HOLD_BYTES:
            self.file = await to_thread.run_sync(_temp_beside, self.dest)
        if self.file is not None and self.held >= _SPILL_BYTES:
            chunks, self.chunks, self.held = self.chunks, [], 0
            await to_thread.run_sync(_write_chunks, self.file[0], chunks)

    async def publish(self, final: Path) -> None:
        """Write what is held and rename the file to ``final``."""
        if self.file is None:
            if self.held <= _INLINE_BYTES:
                _write_whole(final, self.chunks)
            else:
                await to_thread.run_sync(_write_whole, final, self.chunks)
            return
        (fd, tmp), self.file = self.file, None  # closed by the call, whatever happens
        await to_thread.run_sync(_close_and_rename, fd, self.chunks, tmp, final)

    def discard(self) -> None:
        """Close and remove the temporary file, if the body was spilled to one."""
        if self.file is not None:
            fd, tmp = self.file
            os.close(fd)
            tmp.unlink(missing_ok=True)


def _write_whole(dest: Path, chunks: list[bytes]) -> None:
    """``chunks`` written to a temporary file beside ``dest``, renamed over it (one call)."""
    fd, tmp = _temp_beside(dest)
    _close_and_rename(fd, chunks, tmp, dest)


async def _stream(
    resp: aiohttp.ClientResponse, dest: Path, *, max_bytes: int, name_by_type: bool, safe_url: str
) -> DownloadedFile:
    """Receive the body (held or spilled: :class:`_Body`), check it, then publish it."""
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise _too_large(safe_url, max_bytes)  # refused before a byte is read
    body = _Body(dest)
    digest, size, head = hashlib.sha256(), 0, b""
    kind: str | None = None
    try:
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(safe_url, max_bytes)
            if kind is None and len(head) < IMAGE_TYPE_BYTES:
                head += chunk[: IMAGE_TYPE_BYTES - len(head)]
                if len(head) == IMAGE_TYPE_BYTES and (kind := _image_type(head)) is None:
                    raise _not_an_image(safe_url, head)  # stop reading a page at once
            digest.update(chunk)
            await body.add(chunk)
        kind = kind or _image_type(head)
        if kind is None:
            raise _not_an_image(safe_url, head)
        final = dest.with_suffix(IMAGE_SUFFIXES[kind]) if name_by_type else dest
        await body.publish(final)
    except BaseException:
        body.discard()
        raise
    return DownloadedFile(final, digest.hexdigest(), size, kind)


def _image_type(head: bytes) -> str | None:
    kind = image_type_from_bytes(head)
    return kind if kind in IMAGE_SUFFIXES else None


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The start of an error body: enough for its envelope, never a huge page."""
    return await resp.content.read(_ERROR_BODY_BYTES)


async def download_to(
    transport: Transport,
    url: str,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    name_by_type: bool = False,
) -> DownloadedFile:
    """GET ``url`` (no credentials) and stream it to ``dest`` atomically.

    Args:
        transport: Lends its connection pool, timeouts and retry policy.
        url: The signed URL.
        dest: The file to write.
        max_bytes: The largest body accepted.
        name_by_type: Replace ``dest``'s suffix with that of the image's real type.

    Raises:
        DownloadError: The body is not an image, or is over ``max_bytes``.
        APIStatusError: The storage host answered an error (403: the URL expired).
        APIConnectionError: The download failed after its retries.
        OSError: The file could not be written. In every case nothing is left at
            ``dest`` (an earlier file there is kept) nor beside it.
    """
    safe_url = url.split("?", 1)[0].split("#", 1)[0]  # presigned query strings are credentials

    async def once() -> DownloadedFile:
        async with keyless_session(transport.session()) as bare:
            try:
                async with bare.get(url, timeout=transport.timeout) as resp:
                    if resp.status < 400:
                        return await _stream(
                            resp, dest, max_bytes=max_bytes, name_by_type=name_by_type,
                            safe_url=safe_url,
                        )  # fmt: skip
                    status, headers, body = resp.status, resp.headers, await _read_capped(resp)
            except CLIENT_ERRORS as exc:
                error: APIError | None = client_error(exc, "GET", safe_url, target=safe_url)
            else:
                error = None
        if error is not None:
            raise error  # outside the except: aiohttp's message may quote the signed URL
        raise status_error(status, body, headers, method="GET", path=safe_url, target=safe_url)

    return await with_retries(
        once,
        kind=CallKind.READ,
        retrying=transport.retrying,
        method="GET",
        path=safe_url,
        max_attempts=_MAX_ATTEMPTS,
    )
