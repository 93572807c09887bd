"""Colour training and evaluation images for colour hiding (the NIB paper's section 4.2): the colour
scikit-image samples (offline) and the flat-colour procedural comics.

The invertible-grayscale model (Xia et al. 2018) is trained on natural colour photographs (VOC2012
patches in the authors' code, evaluated on DIV2K in the NIB paper's Table 3), which cannot be
downloaded here. The stand-ins: random crops of the colour samples that ship with scikit-image
(`TRAINING_COLOUR_SAMPLES`) and flat-colour comics (`colour_comic_image`), the case where a
plain encoder fails (Figure 7). `HELD_OUT_COLOUR_SAMPLES` never appear in training (``cat`` is
the same photograph as ``chelsea`` and is left out everywhere).

Convention: RGB float32 in [−1, 1], shape (H, W, 3).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from noise_research.data.base import (
    PositionalImageBatches,
    check_integer,
    uint8_scale_to_signed_unit,
)
from noise_research.data.procedural import colour_comic_image
from noise_research.data.sample_images import _center_square_crop

TRAINING_COLOUR_SAMPLES = ("astronaut", "hubble_deep_field", "immunohistochemistry", "rocket")
HELD_OUT_COLOUR_SAMPLES = ("chelsea", "coffee")
"""Colour photographs bundled with scikit-image: crops of the first train, the second are the
held-out "embedded images" of the evaluation."""

TRAINING_SOURCES = ("comic", "samples", "mixed")
"""What training crops are: flat-colour comics, sample crops, or both (even / odd positions)."""


@functools.lru_cache(maxsize=8)
def colour_sample_image(name: str, side: int) -> np.ndarray:
    """The scikit-image colour sample ``name``, centre-cropped to a square and resized to
    (side, side, 3) with Pillow's Lanczos filter, RGB float32 in [−1, 1] (read-only, cached)."""
    import skimage.data

    allowed = TRAINING_COLOUR_SAMPLES + HELD_OUT_COLOUR_SAMPLES
    if name not in allowed:
        raise ValueError(f"name={name!r} is not a colour sample; allowed: {allowed}.")
    side = check_integer(side, "side", 1)
    square = _center_square_crop(np.asarray(getattr(skimage.data, name)())[..., :3])
    resized = Image.fromarray(square).resize((side, side), Image.Resampling.LANCZOS)
    image = uint8_scale_to_signed_unit(np.asarray(resized))
    image.flags.writeable = False
    return image


def colour_sample_crop(seed: int, position: int, crop_size: int) -> np.ndarray:
    """A (crop_size, crop_size, 3) crop of a training colour sample, a pure function of (seed,
    position): the image, its scale (side 256 or 512, at least 2·crop_size), the corner and a
    horizontal flip come from ``default_rng([seed, position])``."""
    crop_size = check_integer(crop_size, "crop_size", 1)
    rng = np.random.default_rng([seed, position])
    name = TRAINING_COLOUR_SAMPLES[int(rng.integers(len(TRAINING_COLOUR_SAMPLES)))]
    image = colour_sample_image(name, max(int(rng.choice([256, 512])), 2 * crop_size))
    top, left = rng.integers(image.shape[0] - crop_size + 1, size=2)
    crop = image[top : top + crop_size, left : left + crop_size]
    if rng.integers(2):
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop, dtype=np.float32)


class ColourCropBatches(PositionalImageBatches):
    """Training batches ``{"image": (b, S, S, 3), "position": (b,)}`` of colour crops; the row at
    global position n is `colour_comic_image` (seed, n) drawn at S², `colour_sample_crop`
    (seed, n, S), or with ``source = 'mixed'`` the first for even n and the second for odd n."""

    def __init__(self, *args, source: str = "mixed", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if source not in TRAINING_SOURCES:
            raise ValueError(f"source={source!r} is not supported; allowed: {TRAINING_SOURCES}.")
        if self.size[0] != self.size[1]:
            raise ValueError(f"colour crops are square; got size {self.size}.")
        self.source = source

    def image(self, position: int) -> np.ndarray:
        if self.source == "comic" or (self.source == "mixed" and position % 2 == 0):
            return colour_comic_image(self.seed, position, self.size)
        return colour_sample_crop(self.seed, position, self.size[0])


def held_out_colour_samples(size: int) -> np.ndarray:
    """The evaluation's embedded images, (4·len(HELD_OUT_COLOUR_SAMPLES), size, size, 3): each
    held-out sample resized to (2·size)² and cut into its four quadrants, in a fixed order."""
    size = check_integer(size, "size", 1)
    quadrants = []
    for name in HELD_OUT_COLOUR_SAMPLES:
        image = colour_sample_image(name, 2 * size)
        for top in (0, size):
            for left in (0, size):
                quadrants.append(image[top : top + size, left : left + size])
    return np.stack(quadrants).astype(np.float32)
