"""The client's file methods: uploads, assets, downloads and cost estimates."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from runflow_async._core.config import DEFAULT_MAX_DOWNLOAD_BYTES
from runflow_async._core.errors import ConfigurationError
from runflow_async._core.estimate import Estimate, estimate_requests, known_input_sizes
from runflow_async._core.models import ImageOutput
from runflow_async._core.requests import EditRequest, RunRequest
from runflow_async._http.assets import Asset, get_asset, read_upload_source, upload_asset
from runflow_async._http.download import DownloadedFile, download_to
from runflow_async._http.probe import probe_input_sizes
from runflow_async._http.transport import Transport
from runflow_async._pricing import PricingPolicy

__all__ = ["FilesMixin"]


class FilesMixin:
    """Methods of :class:`RunflowClient` that move images or price them."""

    _transport: Transport
    pricing: PricingPolicy

    async def download(
        self,
        image: ImageOutput | str,
        dest: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        name_by_type: bool = False,
    ) -> DownloadedFile:
        """Download one output image to ``dest``: streamed, atomic, without the API key.

        The body is written in chunks to a temporary file and renamed to
        ``dest`` only once it is whole, within ``max_bytes`` and an image by its
        magic bytes; otherwise nothing is left on disk. Connection errors, 429s
        and 5xx are retried. Signed output URLs expire; on a 403 or 404, read
        the run again with :meth:`get_run` for fresh URLs.

        Args:
            image: The output, or its URL.
            dest: The file to write.
            max_bytes: The largest image accepted (default 64 MiB).
            name_by_type: Give the file the suffix of its real type (``.png``,
                ``.jpg``, ``.webp``, ``.gif``) instead of ``dest``'s.

        Returns:
            The path written, its SHA-256, size and real type.

        Raises:
            ConfigurationError: ``max_bytes`` is below 1.
            DownloadError: Not an image (e.g. a JSON or HTML page), or too large.
            APIStatusError: The storage host refused (403/404: the URL expired).
            APIConnectionError: The download failed after its retries.
            OSError: ``dest`` could not be written.
        """
        if max_bytes < 1:
            raise ConfigurationError("max_bytes must be at least 1.")
        url = image if isinstance(image, str) else image.url
        return await download_to(
            self._transport, url, Path(dest), max_bytes=max_bytes, name_by_type=name_by_type
        )

    async def estimate(
        self, requests: Iterable[RunRequest], *, probe_inputs: bool = True
    ) -> Estimate:
        """Estimate what ``requests`` will cost, before anything is submitted.

        Args:
            requests: Generate and edit requests.
            probe_inputs: Read each edit input URL's size from its header with a
                small ranged GET (never carrying the API key); unknown sizes are
                assumed per the pricing policy and listed in ``assumptions``. An
                :class:`Asset`'s size and a ``data:`` URI's are read without a request.
        """
        requests = list(requests)
        sizes = known_input_sizes(requests)
        if probe_inputs:
            urls = [
                url
                for r in requests
                if isinstance(r, EditRequest)
                for url in r.input_urls
                if url not in sizes and url.startswith(("https://", "http://"))
            ]
            if urls:
                sizes |= await probe_input_sizes(
                    self._transport.session(), urls, timeout=self._transport.timeout
                )
        return estimate_requests(requests, policy=self.pricing, input_sizes=sizes)

    async def upload(
        self,
        source: bytes | str | os.PathLike[str],
        *,
        filename: str | None = None,
        mime_type: str | None = None,
    ) -> Asset:
        """Upload a local image as an asset, to pass its ``url`` in an edit's ``image_urls``.

        The bytes go to storage without the API key; an expired upload URL starts over once.

        Args:
            source: The file's bytes, or a path to it (its size is checked
                against :data:`MAX_UPLOAD_BYTES` before it is read).
            filename: The asset's name; required for bytes, a path's name otherwise.
            mime_type: Read from the file's magic bytes (PNG, JPEG, WebP, GIF) if omitted.

        Returns:
            The asset; ``width`` and ``height`` are read from the file's header.

        Raises:
            RequestValidationError: Unreadable, empty, too large or unrecognised input.
            APIResponseError: A malformed answer, or an upload URL neither https nor loopback.
            APIError: A step failed after its retries (network, 429, 5xx: unbilled calls).
        """
        data, name = await read_upload_source(source, filename)
        return await upload_asset(self._transport, data, filename=name, mime_type=mime_type)

    async def get_asset(self, asset_id: str) -> Asset:
        """Fetch an asset with a freshly signed ``url`` (asset URLs are short-lived).

        Raises:
            RequestValidationError: A malformed id; nothing was sent.
            NotFoundError: No such asset.
        """
        return await get_asset(self._transport, asset_id)
