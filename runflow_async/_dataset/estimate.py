"""Estimating a dataset before anything is sent: local inputs measured, remote ones probed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import aiohttp

from runflow_async._core.estimate import Estimate, estimate_requests
from runflow_async._core.requests import EditRequest, RunRequest
from runflow_async._dataset.input import DatasetItem
from runflow_async._http.probe import probe_input_sizes
from runflow_async._imagesize import image_size_from_path
from runflow_async._pricing import PricingPolicy, Size

__all__ = ["estimate_items"]


async def estimate_items(items: Sequence[DatasetItem], policy: PricingPolicy) -> Estimate:
    """Estimate ``items``: local images' sizes read from disk, remote ones probed (no key).

    A local image is priced under its ``file://`` URI (the name it has before
    upload), so every input is keyed by where it really is.
    """
    remote = [
        url
        for item in items
        if item.edit
        for pos, url in enumerate(item.value("image_urls"))
        if pos not in item.local_positions
    ]
    sizes: dict[str, Size | None] = {}
    if remote:
        async with aiohttp.ClientSession() as session:
            sizes.update(await probe_input_sizes(session, remote))
    for item in items:  # every size known before the estimate reads any
        for path in item.local_images:
            sizes[path.resolve().as_uri()] = image_size_from_path(path)

    def requests() -> Iterator[RunRequest]:  # one at a time: items keep no request
        for item in items:
            request = item.request
            if isinstance(request, EditRequest) and item.local_images:
                urls = list(request.image_urls)
                for pos, path in zip(item.local_positions, item.local_images, strict=True):
                    urls[pos] = path.resolve().as_uri()
                request = request.model_copy(update={"image_urls": urls})
            yield request

    return estimate_requests(requests(), policy=policy, input_sizes=sizes)
