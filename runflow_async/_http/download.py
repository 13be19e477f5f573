"""Downloading output images: no API key, atomic writes, SHA-256 of what was written.

Output URLs are presigned and expire (docs: concepts/callbacks), so they are
fetched without our ``Authorization`` header: the key must never travel to a
storage host.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio

from runflow_async._core.errors import APIError
from runflow_async._http.errors import CLIENT_ERRORS, client_error, status_error
from runflow_async._http.transport import keyless_session

__all__ = ["DownloadedFile", "download_to", "write_atomic"]


@dataclass(frozen=True, slots=True)
class DownloadedFile:
    """A file written by :meth:`RunflowClient.download`."""

    path: Path
    sha256: str
    size: int
    content_type: str | None


TEMP_SUFFIX = ".rfa-part"
"""Ends the name of a file being written (``.NAME.RANDOM.rfa-part``, hidden)."""


def write_atomic(dest: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``dest``, then rename it over ``dest``.

    The file gets the mode a plain ``open()`` would give it (``0o666`` less the
    umask), not the temporary file's private ``0o600``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    # Linux shows it without changing it; elsewhere the only way to read it is
    # to set it and set it straight back (a moment other threads could see).
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:  # pragma: no cover - not Linux
        pass
    mask = os.umask(0o022)  # pragma: no cover - not Linux
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


async def download_to(
    session: aiohttp.ClientSession, url: str, dest: Path, *, timeout: aiohttp.ClientTimeout
) -> DownloadedFile:
    """GET ``url`` (no credentials) and write it to ``dest`` atomically.

    Raises:
        APIStatusError: The storage host answered an error (403: the URL expired).
        APIConnectionError: The download failed; nothing is left at ``dest``.
    """
    safe_url = url.split("?", 1)[0]  # presigned query strings are credentials too
    async with keyless_session(session) as bare:
        try:
            async with bare.get(url, timeout=timeout) as resp:
                status, headers, content_type = resp.status, resp.headers, resp.content_type
                data = await resp.read()
        except CLIENT_ERRORS as exc:
            error: APIError | None = client_error(exc, "GET", safe_url, target=safe_url)
        else:
            error = None
    if error is not None:
        raise error  # outside the except: aiohttp's message may quote the signed URL
    if status >= 400:
        raise status_error(status, data, headers, method="GET", path=safe_url, target=safe_url)
    await anyio.to_thread.run_sync(write_atomic, dest, data)
    return DownloadedFile(dest, hashlib.sha256(data).hexdigest(), len(data), content_type)
