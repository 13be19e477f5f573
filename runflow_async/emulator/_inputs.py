"""Sizes of edit inputs: known for the emulator's own outputs, assumed for anything else.

An edit chained on an earlier run passes that run's output URL as an input. The
emulator knows the size of its own outputs, so it bills them at their real size,
exactly as a client that measured the image would estimate. Any other URL is left
``None``, and the pricing policy assumes its size.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from runflow_async._pricing import EDIT_MODEL, Size
from runflow_async.emulator._runs import RunRecord
from runflow_async.emulator._validation import CreateRequest

__all__ = ["edit_input_sizes", "own_output_size"]

_FILE_PATH = re.compile(r"/files/(?P<run_id>[^/]+)/(?P<index>\d+)\.(?P<ext>[a-z]+)")


def own_output_size(
    url: str, own_netloc: str, find: Callable[[str], RunRecord | None]
) -> Size | None:
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
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return None
    match = _FILE_PATH.fullmatch(parts.path)
    if match is None or parts.netloc.lower() != own_netloc.lower():
        return None
    run = find(match["run_id"])
    if run is None or int(match["index"]) >= run.request.num_images:
        return None
    return run.size if match["ext"] == run.extension else None


def edit_input_sizes(
    request: CreateRequest, own_netloc: str, find: Callable[[str], RunRecord | None]
) -> tuple[Size | None, ...]:
    """Return the known size (or ``None``) of each input of an edit; ``()`` otherwise."""
    if request.model != EDIT_MODEL:
        return ()
    urls: list[str] = request.input["image_urls"]
    return tuple(own_output_size(url, own_netloc, find) for url in urls)
