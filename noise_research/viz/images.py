"""Image grids written as PNG at native resolution (one image pixel = one PNG pixel).

Halftone dots must survive exactly, so no resampling happens: images are pasted on a canvas with
Pillow, with an optional title band above each one.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Layout, in pixels: gap around and between cells, and height of the title band of each cell.
GRID_PADDING_PX = 4
TITLE_HEIGHT_PX = 16
_TITLE_FONT_SIZE_PX = 11
_BACKGROUND_RGB = (224, 224, 224)
_TITLE_RGB = (0, 0, 0)


def _to_rgb_uint8(image: np.ndarray, value_range: tuple[float, float], index: int) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) values in value_range -> (H, W, 3) uint8 (clipped)."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3) or 0 in image.shape:
        raise ValueError(
            f"images[{index}] must have shape (H, W), (H, W, 1) or (H, W, 3); got {image.shape}."
        )
    low, high = value_range
    unit = np.clip((image - low) / (high - low), 0.0, 1.0)
    rgb = np.broadcast_to(unit, (*image.shape[:2], 3))
    return np.rint(rgb * 255.0).astype(np.uint8)


def save_image_grid(
    path: str | pathlib.Path,
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> pathlib.Path:
    """Writes images (gray or RGB) side by side in one PNG, at native resolution, with titles.

    Every cell is as large as the largest image (smaller ones sit in its top-left corner); cells
    are separated by `GRID_PADDING_PX` and, with titles, topped by a `TITLE_HEIGHT_PX` band
    (titles wider than the cell are cut). The PNG is therefore
    cols · (W_max + pad) + pad wide and rows · (H_max + title + pad) + pad high, with
    cols = min(ncols, len(images)) and rows = ceil(len(images) / cols).

    Args:
      path: PNG file to write; parent directories are created.
      images: arrays of shape (H, W), (H, W, 1) or (H, W, 3), e.g. gray/halftone in [-1, 1].
      titles: one title per image, or None for no title band.
      ncols: maximum number of images per row (>= 1).
      value_range: (low, high) values mapped to black and white; values outside are clipped.

    Returns:
      The path written.
    """
    if len(images) == 0:
        raise ValueError("images must contain at least one image; got an empty sequence.")
    if titles is not None and len(titles) != len(images):
        raise ValueError(
            f"titles must have one entry per image: got {len(titles)} titles "
            f"for {len(images)} images."
        )
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1; got {ncols}.")
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low; got {value_range}.")

    tiles = [_to_rgb_uint8(image, value_range, index) for index, image in enumerate(images)]
    title_height = 0 if titles is None else TITLE_HEIGHT_PX
    cell_width = max(tile.shape[1] for tile in tiles)
    cell_height = max(tile.shape[0] for tile in tiles) + title_height
    columns = min(ncols, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    canvas = Image.new(
        "RGB",
        (
            columns * (cell_width + GRID_PADDING_PX) + GRID_PADDING_PX,
            rows * (cell_height + GRID_PADDING_PX) + GRID_PADDING_PX,
        ),
        _BACKGROUND_RGB,
    )
    font = ImageFont.load_default(size=_TITLE_FONT_SIZE_PX)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        left = GRID_PADDING_PX + column * (cell_width + GRID_PADDING_PX)
        top = GRID_PADDING_PX + row * (cell_height + GRID_PADDING_PX)
        if titles is not None:
            # Drawn on its own band so that a long title is cut at the cell border.
            band = Image.new("RGB", (cell_width, title_height), _BACKGROUND_RGB)
            ImageDraw.Draw(band).text((1, 1), titles[index], fill=_TITLE_RGB, font=font)
            canvas.paste(band, (left, top))
        canvas.paste(Image.fromarray(tile, mode="RGB"), (left, top + title_height))

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
