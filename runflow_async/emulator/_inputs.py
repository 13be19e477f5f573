"""Sizes of edit inputs: known for the emulator's own URLs, assumed for anything else.

An edit chained on an earlier run passes that run's output URL as an input, and an
edit of a local file passes the URL of the asset it was uploaded as. The emulator
knows the size of both (outputs are rendered at a chosen size; an asset's size is
read from its bytes at confirmation), so it bills them at their real size, exactly
as a client that measured the image would estimate. Any other URL is left
``None``, and the pricing policy assumes its size.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

from runflow_async._pricing import EDIT_MODEL, Size
from runflow_async.emulator._runs import RunRecord
from runflow_async.emulator._validation import CreateRequest

__all__ = ["edit_input_sizes", "own_input_size", "own_output_size"]

_FILE_PATH = re.compile(r"/files/(?P<run_id>[^/]+)/(?P<index>\d+)\.(?P<ext>[a-z]+)")
_ASSET_PATH = re.compile(r"/assets/(?P<asset_id>[^/]+)/content")

FindRun = Callable[[str], RunRecord | None]
AssetSize = Callable[[str], Size | None]


def _own_parts(url: str, own_netloc: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return None
    return parts if parts.netloc.lower() == own_netloc.lower() else None


def own_output_size(url: str, own_netloc: str, find: FindRun) -> Size | None:
    """Return the size of the output image ``url`` names, if it is one of ours.

    Args:
        url: An edit input URL.
        own_netloc: ``host:port`` clients reach this emulator by (the ``Host`` header
            of the create, which is also the host its output URLs are signed for).
        find: Looks a kept run up by id.

    Returns:
        ``(width, height)`` when ``url`` is on ``own_netloc`` and its path (the query
        is ignored) names an existing output of a kept run; ``None`` otherwise.
    """
    parts = _own_parts(url, own_netloc)
    match = None if parts is None else _FILE_PATH.fullmatch(parts.path)
    if match is None:
        return None
    run = find(match["run_id"])
    if run is None or int(match["index"]) >= run.request.num_images:
        return None
    return run.size if match["ext"] == run.extension else None


def own_input_size(url: str, own_netloc: str, find: FindRun, asset_size: AssetSize) -> Size | None:
    """Return the size of ``url`` if it is one of our outputs or confirmed assets.

    Args:
        url: An edit input URL.
        own_netloc: ``host:port`` clients reach this emulator by.
        find: Looks a kept run up by id.
        asset_size: Returns the pixel size of a confirmed asset by id (``None`` if
            there is no such asset or its bytes are not a recognised image).
    """
    parts = _own_parts(url, own_netloc)
    match = None if parts is None else _ASSET_PATH.fullmatch(parts.path)
    if match is not None:
        return asset_size(match["asset_id"])
    return own_output_size(url, own_netloc, find)


def edit_input_sizes(
    request: CreateRequest, own_netloc: str, find: FindRun, asset_size: AssetSize
) -> tuple[Size | None, ...]:
    """Return the known size (or ``None``) of each input of an edit; ``()`` otherwise."""
    if request.model != EDIT_MODEL:
        return ()
    urls: list[str] = request.input["image_urls"]
    return tuple(own_input_size(url, own_netloc, find, asset_size) for url in urls)
