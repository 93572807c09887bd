"""Training crops of natural images for the dithering task: the scikit-image samples that the
evaluation does not use, optionally mixed with procedural comics.

The NIB paper's section 4.3 trains and tests deep neural dithering on natural images (Table 4: the
*Structure* dataset of Pang et al. 2008), which cannot be downloaded here. The structure (SSIM)
term needs texture to act on: on the flat regions that fill a procedural comic, 1 − SSIM is lowest
for a flat output (the gray's local variance is 0), so comics alone teach the structure term only
"do not dither". These crops give it texture. The evaluation images
(`DEFAULT_SAMPLE_IMAGE_NAMES`: camera, astronaut, coffee, chelsea, rocket) are held out, and so is
``cat`` (the same photograph as ``chelsea``).
"""

from __future__ import annotations

import functools

import numpy as np

from noise_research.data.base import PositionalImageBatches, check_integer
from noise_research.data.procedural import comic_image
from noise_research.data.sample_images import (
    DEFAULT_SAMPLE_IMAGE_NAMES,
    SAMPLE_IMAGE_NAMES,
    sample_images,
)

TRAINING_SAMPLE_NAMES = tuple(
    name for name in SAMPLE_IMAGE_NAMES if name not in (*DEFAULT_SAMPLE_IMAGE_NAMES, "cat")
)
"""The scikit-image samples crops are drawn from: every offline sample but the evaluation's."""


@functools.lru_cache(maxsize=4)
def _training_images(side: int) -> tuple[np.ndarray, ...]:
    """The training samples as (side, side, 1) gray squares in [−1, 1], loaded once per side."""
    return tuple(sample_images(TRAINING_SAMPLE_NAMES, size=side).values())


def sample_crop(seed: int, position: int, crop_size: int) -> np.ndarray:
    """A (crop_size, crop_size, 1) crop of one training sample, a pure function of (seed,
    position): the image, the crop's corner and one of the 8 flips / quarter turns are drawn
    from ``default_rng([seed, position])``. The samples are resized to max(256, 2·crop_size) first,
    so every crop sees a part of its image, not the whole of it."""
    crop_size = check_integer(crop_size, "crop_size", 1)
    images = _training_images(max(256, 2 * crop_size))
    rng = np.random.default_rng([seed, position])
    image = images[rng.integers(len(images))]
    top, left = rng.integers(image.shape[0] - crop_size + 1, size=2)
    crop = image[top : top + crop_size, left : left + crop_size]
    crop = np.rot90(crop, k=int(rng.integers(4)))
    if rng.integers(2):
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop, dtype=np.float32)


class SampleCropBatches(PositionalImageBatches):
    """Batch source of `sample_crop`s, ``{"image": (b, S, S, 1)}`` in [−1, 1]; with
    ``mix_comics=True`` the even global positions are procedural comics (`comic_image`) and the
    odd ones sample crops, so every batch of two or more rows holds both."""

    def __init__(self, *args, mix_comics: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.size[0] != self.size[1]:
            raise ValueError(f"sample crops are square; got size {self.size}.")
        self.mix_comics = mix_comics

    def image(self, position: int) -> np.ndarray:
        if self.mix_comics and position % 2 == 0:
            return comic_image(self.seed, position, self.size)
        return sample_crop(self.seed, position, self.size[0])
