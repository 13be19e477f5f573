"""Cost estimates for lists of runs, and probing edit inputs for their size.

Pure ``Decimal`` sums of what :class:`PricingPolicy` (which the emulator bills
with) says, plus a sentence for every guess. Runflow does not document how it
counts megapixels, so a finished run's ``cost`` is the authoritative number.
The only I/O is :func:`probe_input_sizes`, a ranged GET of each input's header.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from runflow_async._core.assets import data_uri_bytes
from runflow_async._core.requests import EditRequest, GenerateRequest, RunRequest
from runflow_async._imagesize import image_size_from_bytes
from runflow_async._pricing import (
    _DEFAULT_GENERATE_PRESET,
    GENERATE_MODEL,
    PRESET_SIZES,
    PricingPolicy,
    Size,
)

__all__ = [
    "Estimate",
    "ItemEstimate",
    "estimate_request",
    "estimate_requests",
    "known_input_sizes",
    "policy_assumptions",
]

"""Per-URL limit of :func:`probe_input_sizes` when the caller gives none."""


@dataclass(frozen=True, slots=True)
class ItemEstimate:
    """The estimated cost of one run.

    Attributes:
        index: Position of the request in the list that was estimated.
        model: The request's model id.
        images: Images the run will produce.
        output_size: Size of each output image, defaults resolved.
        input_sizes: Size of each edit input (``None``: unknown); ``()`` for text-to-image.
        megapixels: Billed megapixels, inputs plus outputs.
        usd: Estimated cost, rounded as the policy rounds one run.
        assumptions: What was assumed for this run, one sentence each.
    """

    index: int
    model: str
    images: int
    output_size: Size
    input_sizes: tuple[Size | None, ...]
    megapixels: Decimal
    usd: Decimal
    assumptions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Estimate:
    """The estimated cost of a list of runs.

    Attributes:
        items: One estimate per request, in order.
        total_usd: Sum of the items' ``usd``.
        megapixels: Sum of the items' billed megapixels.
        images: Sum of the items' images.
        assumptions: The policy's rules, then every item's assumptions once each.
    """

    items: tuple[ItemEstimate, ...]
    total_usd: Decimal
    megapixels: Decimal
    images: int
    assumptions: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        """Return one line, e.g. ``"12 runs, 14 images, 9.75 MP, $0.0585 (estimate)"``."""
        runs = len(self.items)
        mp = self.megapixels.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        return (
            f"{runs} run{'' if runs == 1 else 's'}, "
            f"{self.images} image{'' if self.images == 1 else 's'}, "
            f"{mp} MP, ${_usd_text(self.total_usd)} (estimate)"
        )


def _number(value: Decimal) -> str:
    """Plain notation without trailing zeros: ``1``, ``0.25``, ``100``."""
    return f"{value.normalize():f}"


def _usd_text(value: Decimal) -> str:
    """Dollars with at least cents and no trailing zeros beyond: ``0.0585``, ``1.50``."""
    text = _number(value)
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def _check_count(sizes: Sequence[Size | None] | None, expected: int) -> None:
    if sizes is not None and len(sizes) != expected:
        raise ValueError(f"{len(sizes)} input sizes given for a request with {expected} inputs")


def _unknown_input_sentence(policy: PricingPolicy, number: int, url: str) -> str:
    shown = url.split("?", 1)[0].split("#", 1)[0]  # presigned query strings are credentials
    if url.startswith("data:"):  # not the whole image
        shown = url.split(",", 1)[0] + ",..."
    width, height = policy.assumed_input_size
    billed = _number(policy.input_megapixels(None))
    return f"input {number} ({shown}): size unknown, assumed {width}x{height} (billed {billed} MP)"


def estimate_request(
    request: RunRequest,
    *,
    policy: PricingPolicy,
    input_sizes: Sequence[Size | None] | None = None,
    index: int = 0,
) -> ItemEstimate:
    """Estimate the cost of one run.

    Args:
        request: A :class:`GenerateRequest` or :class:`EditRequest`.
        policy: The pricing rules.
        input_sizes: Size of each of an edit's ``image_urls``, ``None`` where
            unknown (billed as the policy's ``assumed_input_size``); default all unknown.
        index: Stored as :attr:`ItemEstimate.index`.

    Returns:
        The run's estimate.

    Raises:
        ValueError: If ``input_sizes`` does not match the request's inputs.
        TypeError: If ``request`` is neither a generate nor an edit request.
        KeyError: If the policy has no price for the request's model.
    """
    images = request.images_per_run
    if isinstance(request, GenerateRequest):
        _check_count(input_sizes, 0)
        return ItemEstimate(index, *_generate_facts(policy, request.model, request.size, images))
    if isinstance(request, EditRequest):
        urls = request.input_urls
        sizes = (None,) * len(urls) if input_sizes is None else tuple(input_sizes)
        _check_count(sizes, len(urls))
        assumptions = [
            _unknown_input_sentence(policy, number, url)
            for number, (url, size) in enumerate(zip(urls, sizes, strict=True), start=1)
            if size is None
        ]
        output = request.size or policy.default_edit_output_size(sizes[0])
        if request.size is None:
            assumptions.append(
                f"image_size not set: edit output assumed {output[0]}x{output[1]}, "
                "following input 1 (scaled down to at most 1 MP)"
            )
        megapixels = policy.edit_megapixels(sizes, request.size, images)
        usd = policy.edit_cost(sizes, request.size, images)
        facts = (request.model, images, output, sizes, megapixels, usd, tuple(assumptions))
        return ItemEstimate(index, *facts)
    raise TypeError(f"cannot estimate a {type(request).__name__}")


_Facts = tuple[str, int, Size, tuple[Size | None, ...], Decimal, Decimal, tuple[str, ...]]
# A text-to-image estimate depends only on the policy, the size and the image
# count: worked out once per shape (an engine estimates every item it admits).
# Keyed by the policy's identity and its price (its one mutable part, a mapping
# the caller may change); the entry keeps the policy, so the id is not reused.
_Shape = tuple[int, str, Size | None, int, Decimal]
_GENERATE_FACTS: dict[_Shape, tuple[PricingPolicy, _Facts]] = {}
_GENERATE_FACTS_MAX = 256


def _generate_facts(policy: PricingPolicy, model: str, size: Size | None, images: int) -> _Facts:
    """What :class:`ItemEstimate` says of a text-to-image run, but its index."""
    key = (id(policy), model, size, images, policy.price_per_megapixel(GENERATE_MODEL))
    cached = _GENERATE_FACTS.get(key)
    if cached is not None and cached[0] is policy:
        return cached[1]
    output = size or PRESET_SIZES[_DEFAULT_GENERATE_PRESET]
    assumptions = (
        (f"image_size not set: assumed {_DEFAULT_GENERATE_PRESET} {output[0]}x{output[1]}",)
        if size is None
        else ()
    )
    megapixels = policy.generate_megapixels(size, images)
    usd = policy.generate_cost(size, images)
    facts: _Facts = (model, images, output, (), megapixels, usd, assumptions)
    if len(_GENERATE_FACTS) >= _GENERATE_FACTS_MAX:
        _GENERATE_FACTS.clear()
    _GENERATE_FACTS[key] = (policy, facts)
    return facts


def policy_assumptions(policy: PricingPolicy) -> tuple[str, ...]:
    """Return the policy's undocumented choices as sentences, for any estimate."""
    ppm = policy.pixels_per_megapixel
    cap = policy.edit_input_max_megapixels
    prices = ", ".join(
        f"{model} ${_number(price)}" for model, price in policy.prices_usd_per_megapixel.items()
    )
    return (
        "estimate only: Runflow does not document how megapixels are counted; "
        "a finished run's cost is authoritative",
        f"price per MP: {prices} (text-to-image bills output MP, edit bills input + output MP)",
        f"1 MP = {ppm:,} px" + (" (2^20)" if ppm == 2**20 else ""),
        "each image rounded up to a whole MP"
        if policy.round_up_per_image
        else "each image billed at its exact MP, not rounded up",
        f"each run's cost rounded half-up to ${_number(policy.cost_quantum)}",
        "edit inputs billed at full size"
        if cap is None
        else f"edit inputs capped at {_number(cap)} MP (the provider resizes larger inputs)",
    )


def estimate_requests(
    requests: Iterable[RunRequest],
    *,
    policy: PricingPolicy,
    input_sizes: Mapping[str, Size | None] | None = None,
) -> Estimate:
    """Estimate the cost of a list of runs.

    Args:
        requests: The runs, in order.
        policy: The pricing rules.
        input_sizes: Known sizes of edit inputs by URL (for example from
            :func:`probe_input_sizes`); a URL missing or mapped to ``None`` is unknown.

    Returns:
        The estimate: per-run items, totals, and every assumption made.

    Raises:
        TypeError: If a request is neither a generate nor an edit request.
        KeyError: If the policy has no price for a request's model.
    """
    known = input_sizes or {}
    items: list[ItemEstimate] = []
    for index, request in enumerate(requests):
        sizes = None
        if isinstance(request, EditRequest):
            sizes = [known.get(url) for url in request.input_urls]
        items.append(estimate_request(request, policy=policy, input_sizes=sizes, index=index))
    item_assumptions = (sentence for item in items for sentence in item.assumptions)
    return Estimate(
        items=tuple(items),
        total_usd=sum((item.usd for item in items), policy.quantize(Decimal(0))),
        megapixels=sum((item.megapixels for item in items), Decimal(0)),
        images=sum(item.images for item in items),
        assumptions=tuple(dict.fromkeys((*policy_assumptions(policy), *item_assumptions))),
    )


def known_input_sizes(requests: Iterable[RunRequest]) -> dict[str, Size | None]:
    """The sizes of edit inputs known without a request: :class:`Asset` items, ``data:`` URIs.

    Keyed by each input's wire form (:attr:`EditRequest.input_urls`).
    """
    sizes: dict[str, Size | None] = {}
    for request in requests:
        if not isinstance(request, EditRequest):
            continue
        for item, url in zip(request.image_urls, request.input_urls, strict=True):
            if not isinstance(item, str):
                if item.width and item.height:
                    sizes[url] = (item.width, item.height)
            elif url.startswith("data:"):
                data = data_uri_bytes(url, max_bytes=request.max_data_uri_bytes)
                sizes[url] = image_size_from_bytes(data)
    return sizes
