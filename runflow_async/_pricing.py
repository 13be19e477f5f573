"""Megapixel pricing: the price table and the policy for what Runflow leaves unsaid.

Pure ``Decimal`` arithmetic, no I/O. The client's estimates and the emulator's
billing both come from :class:`PricingPolicy`, so the two can never drift.

Documented (https://docs.runflow.io/models/black-forest-labs/flux-2-klein-9b and
``.../edit``): text-to-image costs $0.006 per output megapixel; edit costs $0.011
per megapixel of input plus output.

Not documented, so decided here (every choice is a field of the policy):

* ``pixels_per_megapixel`` = 2**20: fal.ai, whose prices Runflow's match exactly,
  bills 1024x1024 as exactly one megapixel on its FLUX.2 endpoints.
* ``round_up_per_image`` = False: the model pages state a plain per-megapixel
  price; fal rounds up to whole megapixels on some other FLUX.2 endpoints, so
  that is one switch away.
* Edit inputs are resized to at most ``edit_input_max_megapixels`` (1 MP) before
  billing, as fal documents for klein edit; an input whose size is unknown is
  assumed to be ``assumed_input_size``.
* An edit without ``image_size`` produces an image of the first input's aspect
  ratio and size, scaled down to at most 1 MP (fal's edit endpoints follow the
  input image).
* Each run's cost is rounded half-up to ``cost_quantum`` ($0.000001).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from types import MappingProxyType

__all__ = [
    "EDIT_MODEL",
    "GENERATE_MODEL",
    "PRESET_SIZES",
    "PRICES_USD_PER_MEGAPIXEL",
    "PricingPolicy",
    "Size",
    "resolve_size",
]

GENERATE_MODEL = "black-forest-labs/flux-2-klein-9b"
EDIT_MODEL = "black-forest-labs/flux-2-klein-9b/edit"

Size = tuple[int, int]
"""An image size as ``(width, height)`` in pixels."""

PRESET_SIZES: Mapping[str, Size] = MappingProxyType(
    {
        # Pixel sizes of fal's presets (docs.fal.ai model arguments); Runflow
        # names the presets but does not publish their sizes.
        "square_hd": (1024, 1024),
        "square": (512, 512),
        "portrait_4_3": (768, 1024),
        "portrait_16_9": (576, 1024),
        "landscape_4_3": (1024, 768),
        "landscape_16_9": (1024, 576),
    }
)

PRICES_USD_PER_MEGAPIXEL: Mapping[str, Decimal] = MappingProxyType(
    {GENERATE_MODEL: Decimal("0.006"), EDIT_MODEL: Decimal("0.011")}
)

_DEFAULT_GENERATE_PRESET = "landscape_4_3"  # the text-to-image default on fal and Runflow 4B


@dataclass(frozen=True, slots=True)
class PricingPolicy:
    """How a run's megapixels and price are worked out.

    Attributes:
        pixels_per_megapixel: Pixels in one billed megapixel.
        round_up_per_image: Round each image up to a whole number of megapixels.
        edit_input_max_megapixels: Inputs larger than this are billed at this size
            (the provider resizes them); ``None`` bills inputs at full size.
        assumed_input_size: Size used for an edit input whose size is unknown.
        cost_quantum: A run's cost is rounded half-up to this step.
        prices_usd_per_megapixel: Price per megapixel, by model id.
    """

    pixels_per_megapixel: int = 2**20
    round_up_per_image: bool = False
    edit_input_max_megapixels: Decimal | None = Decimal(1)
    assumed_input_size: Size = (1024, 1024)
    cost_quantum: Decimal = Decimal("0.000001")
    prices_usd_per_megapixel: Mapping[str, Decimal] = field(
        default_factory=lambda: PRICES_USD_PER_MEGAPIXEL
    )

    def price_per_megapixel(self, model: str) -> Decimal:
        """Return the USD price per megapixel of ``model``.

        Raises:
            KeyError: If the model has no price in the table.
        """
        return self.prices_usd_per_megapixel[model]

    def megapixels(self, size: Size) -> Decimal:
        """Return the billed megapixels of one image of ``size``."""
        width, height = size
        mp = Decimal(width * height) / Decimal(self.pixels_per_megapixel)
        if self.round_up_per_image:
            mp = mp.to_integral_value(rounding=ROUND_CEILING)
        return mp

    def input_megapixels(self, size: Size | None) -> Decimal:
        """Return the billed megapixels of one edit input (``None`` = unknown size)."""
        mp = self.megapixels(size or self.assumed_input_size)
        cap = self.edit_input_max_megapixels
        return mp if cap is None else min(mp, cap)

    def default_edit_output_size(self, first_input: Size | None) -> Size:
        """Return the output size of an edit that does not set ``image_size``."""
        width, height = first_input or self.assumed_input_size
        limit = self.pixels_per_megapixel
        if width * height <= limit:
            return (width, height)
        scale = math.sqrt(limit / (width * height))
        return (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))

    def quantize(self, usd: Decimal) -> Decimal:
        """Round an amount to ``cost_quantum``, half-up."""
        return usd.quantize(self.cost_quantum, rounding=ROUND_HALF_UP)

    def generate_megapixels(self, size: Size | None, num_images: int = 1) -> Decimal:
        """Return the billed megapixels of a text-to-image run."""
        return self.megapixels(size or PRESET_SIZES[_DEFAULT_GENERATE_PRESET]) * num_images

    def edit_megapixels(
        self, inputs: Sequence[Size | None], size: Size | None, num_images: int = 1
    ) -> Decimal:
        """Return the billed megapixels (inputs plus outputs) of an edit run."""
        out = size or self.default_edit_output_size(inputs[0] if inputs else None)
        billed_inputs = sum((self.input_megapixels(s) for s in inputs), Decimal(0))
        return billed_inputs + self.megapixels(out) * num_images

    def generate_cost(self, size: Size | None, num_images: int = 1) -> Decimal:
        """Return the USD cost of a text-to-image run, quantized."""
        mp = self.generate_megapixels(size, num_images)
        return self.quantize(mp * self.price_per_megapixel(GENERATE_MODEL))

    def edit_cost(
        self, inputs: Sequence[Size | None], size: Size | None, num_images: int = 1
    ) -> Decimal:
        """Return the USD cost of an edit run, quantized."""
        mp = self.edit_megapixels(inputs, size, num_images)
        return self.quantize(mp * self.price_per_megapixel(EDIT_MODEL))


def resolve_size(image_size: str | Mapping[str, int] | None) -> Size | None:
    """Turn a wire ``image_size`` (preset name or ``{width, height}``) into pixels.

    Returns ``None`` when ``image_size`` is absent.

    Raises:
        KeyError: For an unknown preset name.
    """
    if image_size is None:
        return None
    if isinstance(image_size, str):
        return PRESET_SIZES[image_size]
    return (int(image_size["width"]), int(image_size["height"]))
