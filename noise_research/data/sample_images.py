"""Natural gray test images that ship with scikit-image (offline).

DESIGN.md, "Embedded data": demos and tests use images that packages ship. Every name in
`SAMPLE_IMAGE_NAMES` is bundled with scikit-image itself (no pooch download), checked against
scikit-image 0.26.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from noise_research.data.base import (
    check_integer,
    resize_gray,
    rgb_to_gray,
    uint8_scale_to_signed_unit,
)

# skimage.data loaders whose files ship inside the scikit-image wheel, gray or RGB uint8.
SAMPLE_IMAGE_NAMES = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "text",
)
DEFAULT_SAMPLE_IMAGE_NAMES = ("camera", "astronaut", "coffee", "chelsea", "rocket")


def _center_square_crop(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def sample_images(
    names: Sequence[str] = DEFAULT_SAMPLE_IMAGE_NAMES, size: int = 256
) -> dict[str, np.ndarray]:
    """scikit-image sample images as gray squares, {name: (size, size, 1) float32 in [−1, 1]}.

    Each image is converted to gray (0.299R + 0.587G + 0.114B, DESIGN.md "NIB / halftoning"),
    centre-cropped to a square and resized to `size` with Pillow's Lanczos filter.

    Args:
      names: loaders of `skimage.data`, each one of `SAMPLE_IMAGE_NAMES`.
      size: side of the output squares in pixels.
    """
    import skimage.data

    if isinstance(names, str):
        raise ValueError(f"names must be a sequence of image names, got the string {names!r}.")
    unknown = [name for name in names if name not in SAMPLE_IMAGE_NAMES]
    if unknown:
        raise ValueError(
            f"names contains {unknown}, which are not offline scikit-image samples; "
            f"allowed: {SAMPLE_IMAGE_NAMES}."
        )
    size = check_integer(size, "size", 1)
    images = {}
    for name in names:
        gray = _center_square_crop(rgb_to_gray(getattr(skimage.data, name)()))
        images[name] = uint8_scale_to_signed_unit(resize_gray(gray, (size, size)))
    return images
