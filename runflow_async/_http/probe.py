"""Reading edit inputs' sizes from their headers with small ranged GETs, never with the key."""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp
import anyio

from runflow_async._core.errors import ConfigurationError
from runflow_async._http.transport import keyless_session
from runflow_async._imagesize import HEADER_BYTES, image_size_from_bytes
from runflow_async._pricing import Size

__all__ = ["DEFAULT_PROBE_TIMEOUT", "probe_input_sizes"]

DEFAULT_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=10.0, sock_connect=5.0)


async def _fetch_size(
    session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout, max_bytes: int
) -> Size | None:
    data = b""
    try:
        headers = {"Range": f"bytes=0-{max_bytes - 1}"}
        async with session.get(url, headers=headers, timeout=timeout) as resp:
            if resp.status not in (200, 206):  # 200: the server ignored Range
                return None
            while len(data) < max_bytes and image_size_from_bytes(data) is None:
                chunk = await resp.content.read(max_bytes - len(data))
                if not chunk:
                    break
                data += chunk
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None
    return image_size_from_bytes(data)


async def probe_input_sizes(
    session: aiohttp.ClientSession,
    urls: Iterable[str],
    *,
    timeout: aiohttp.ClientTimeout | None = None,
    concurrency: int = 8,
    max_bytes: int = HEADER_BYTES,
) -> dict[str, Size | None]:
    """Find the pixel size of each image URL from its first bytes.

    Each distinct URL is fetched once with ``Range: bytes=0-{max_bytes-1}``; a
    ``206``, or a ``200`` from a server that ignores Range, is read only until
    the header parses or ``max_bytes`` have arrived. Any failure (other status,
    network error, timeout, unknown format) gives ``None`` for that URL.

    Input URLs may name any host, so no credentials travel: the fetches share
    ``session``'s connection pool but none of its default headers, ``auth``,
    cookie jar or environment (proxy, netrc) settings, and cookies the hosts set
    are discarded. Only ``Range`` and aiohttp's automatic headers are sent.

    Args:
        session: An open session, whose connector is borrowed (never closed).
        urls: Image URLs; duplicates are fetched once.
        timeout: Limit for each fetch; :data:`DEFAULT_PROBE_TIMEOUT` if omitted.
        concurrency: Most fetches in flight at once.
        max_bytes: Most bytes read per URL.

    Returns:
        Every distinct URL, in first-seen order, mapped to its size or ``None``.

    Raises:
        ConfigurationError: If ``concurrency`` or ``max_bytes`` is below 1.
        RuntimeError: If ``session`` is closed.
    """
    if concurrency < 1 or max_bytes < 1:
        raise ConfigurationError("concurrency and max_bytes must be at least 1")
    if session.closed or session.connector is None:
        raise RuntimeError("cannot probe input sizes with a closed session")
    results: dict[str, Size | None] = dict.fromkeys(urls)
    limiter = anyio.CapacityLimiter(concurrency)
    per_url_timeout = timeout or DEFAULT_PROBE_TIMEOUT

    async def probe(bare: aiohttp.ClientSession, url: str) -> None:
        async with limiter:
            results[url] = await _fetch_size(bare, url, per_url_timeout, max_bytes)

    async with keyless_session(session) as bare, anyio.create_task_group() as tg:
        for url in results:
            tg.start_soon(probe, bare, url)
    return results
