"""One finished item's images: downloaded to their ready files, with their manifest rows."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from runflow_async._core.errors import APIError, APIResponseError
from runflow_async._core.models import GenerationResult, ImageOutput, Run
from runflow_async._dataset.input import DatasetItem
from runflow_async._dataset.manifest import named_by_type, ready_path
from runflow_async._dataset.outputs import manifest_row, split_cost
from runflow_async._http.download import DownloadedFile

if TYPE_CHECKING:
    from runflow_async._client.client import RunflowClient

__all__ = ["ImageFetcher"]

logger = logging.getLogger("runflow_async")

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class ImageFetcher:
    """Downloads items' images into ``out_dir``, ``limiter`` bounding how many at once."""

    def __init__(
        self,
        client: RunflowClient,
        out_dir: Path,
        limiter: anyio.CapacityLimiter,
        max_image_bytes: int,
    ) -> None:
        self.client = client
        self.out_dir = out_dir
        self.limiter = limiter
        self.max_image_bytes = max_image_bytes

    async def download(
        self,
        item: DatasetItem,
        result: GenerationResult,
        cost: Decimal | None,
        reserved: Decimal | None,
    ) -> tuple[list[dict[str, Any]], list[Path]]:
        """The item's images downloaded: their manifest rows, and where each was saved."""
        run = result.run
        images = result.images
        parts = max(1, len(images))
        costs, estimates = split_cost(cost, parts), split_cost(reserved, parts)
        rows, paths = [], []
        for n, (image, share, estimated) in enumerate(zip(images, costs, estimates, strict=False)):
            ext = _EXTENSIONS.get(image.content_type or "", item.value("output_format") or "png")
            # The suffix is a first guess: the file is named by its real type
            # (:func:`publish` renames its ready file to match, if need be).
            guess = f"{item.key}-{n}.{'jpg' if ext == 'jpeg' else ext}"
            async with self.limiter:
                saved = await self._fetch(run, n, image, ready_path(self.out_dir, guess))
            name = named_by_type(guess, saved)
            rows.append(manifest_row(item, run, image, name, share, saved.sha256, estimated))
            paths.append(saved.path)
        return rows, paths

    async def _fetch(self, run: Run, n: int, image: ImageOutput, dest: Path) -> DownloadedFile:
        try:
            return await self._save(image, dest)
        except APIError as exc:  # expired, missing, not an image: re-sign once, try again
            logger.info("run %s image %s: %s; reading the run again", run.id, n, exc)
            fresh = await self.client.get_run(run.id)
            if n >= len(fresh.images):  # the re-read shows no images: try on the next run
                raise APIResponseError(
                    f"Run {run.id} was read again without image {n}", method="GET", path=run.id
                ) from None
            return await self._save(fresh.images[n], dest)

    async def _save(self, image: ImageOutput, dest: Path) -> DownloadedFile:
        return await self.client.download(image, dest, max_bytes=self.max_image_bytes)
