"""Sizes of edit inputs: known for the emulator's own URLs, assumed for anything else.

An edit chained on an earlier run passes that run's output URL as an input, and an
edit of a local file passes the URL of the asset it was uploaded as, or its
``runflow://assets/{id}`` ref, or a small ``data:`` image. The emulator knows the
size of all of these (outputs are rendered at a chosen size; an asset's size is
read from its bytes at confirmation; a ``data:`` image is decoded), so it bills
them at their real size, exactly as a client that measured the image would
estimate. Any other URL is left ``None``, and the pricing policy assumes its size.

Refs are resolved when the run is created (:func:`unresolved_refs`): each must
name a confirmed asset of the organisation, or the create is ``422``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

from runflow_async._pricing import EDIT_MODEL, Size
from runflow_async.emulator._assets import AssetStore
from runflow_async.emulator._media import asset_ref_id, data_uri_size
from runflow_async.emulator._runs import RunRecord
from runflow_async.emulator._validation import CreateRequest, FieldError, field_error

__all__ = ["edit_input_sizes", "own_input_size", "own_output_size", "unresolved_refs"]

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


def _input_size(
    url: str, own_netloc: str, find: FindRun, asset_size: AssetSize, data_limit: int
) -> Size | None:
    if url.startswith("data:"):
        return data_uri_size(url, data_limit)
    asset_id = asset_ref_id(url)
    if asset_id is not None:
        return asset_size(asset_id)
    return own_input_size(url, own_netloc, find, asset_size)


def edit_input_sizes(
    request: CreateRequest,
    own_netloc: str,
    find: FindRun,
    asset_size: AssetSize,
    data_limit: int = 1_048_576,
) -> tuple[Size | None, ...]:
    """Return the known size (or ``None``) of each input of an edit; ``()`` otherwise.

    Args:
        request: The validated create.
        own_netloc: ``host:port`` clients reach this emulator by.
        find: Looks a kept run up by id.
        asset_size: The pixel size of a confirmed asset by id.
        data_limit: ``EmulatorConfig.data_uri_max_bytes`` (``data:`` inputs passed it).
    """
    if request.model != EDIT_MODEL:
        return ()
    urls: list[str] = request.input["image_urls"]
    return tuple(_input_size(url, own_netloc, find, asset_size, data_limit) for url in urls)


def unresolved_refs(request: CreateRequest, assets: AssetStore) -> list[FieldError]:
    """Return a ``422`` error for each ``runflow://assets/{id}`` input that names no asset.

    A ref must name an upload of this organisation that has been confirmed; an
    upload session still open (bytes PUT or not) is not an asset yet. The emulator
    serves one organisation, so another's asset is an unknown id here. Call it on
    a validated create before admitting it, so that a refused ref bills nothing.
    """
    if request.model != EDIT_MODEL:
        return []
    errors: list[FieldError] = []
    for index, url in enumerate(request.input["image_urls"]):
        asset_id = asset_ref_id(url)
        if asset_id is None:
            continue
        field = f"input.image_urls.{index}"
        if asset_id not in assets.by_id:
            message = f"asset {asset_id} does not exist in this organisation"
            errors.append(field_error(field, message, "asset_not_found"))
        elif assets.confirmed(asset_id) is None:
            message = f"asset {asset_id} is not confirmed yet; confirm the upload first"
            errors.append(field_error(field, message, "asset_not_confirmed"))
    return errors
