"""Coloured shapes: an embedded RGB image set a small GAN learns on a CPU in minutes.

Each image is a flat background of one palette colour with a soft vertical shading, and one or two
shapes (a disc or an axis-aligned square) of other palette colours at random places and sizes.
Few modes (palette × shape × count) and sharp edges: a DCGAN that learns it draws recognisable
shapes after a few hundred steps, and its failures (blurred edges, mixed colours) are visible.
The example at global position n is ``shape_image(seed, n, size)``, a pure function, so batches are
step-indexed and identical for any number of processes.
"""

from __future__ import annotations

import numpy as np

from noise_research.data.base import PositionalImageBatches, check_image_size, check_seed

PALETTE = np.array(
    [
        [0.90, 0.20, 0.15],  # red
        [0.95, 0.75, 0.10],  # yellow
        [0.20, 0.60, 0.25],  # green
        [0.15, 0.35, 0.80],  # blue
        [0.55, 0.25, 0.65],  # purple
        [0.95, 0.95, 0.92],  # white
        [0.12, 0.12, 0.15],  # black
    ],
    np.float32,
)
"""RGB colours in [0, 1] that backgrounds and shapes are drawn from."""


def shape_image(seed: int, index: int, size: tuple[int, int]) -> np.ndarray:
    """Image ``index`` of the set ``seed``: (H, W, 3) float32 in [−1, 1] (module docstring)."""
    height, width = check_image_size(size)
    rng = np.random.default_rng([check_seed(seed), index])
    colours = rng.permutation(len(PALETTE))
    rows = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    columns = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    shading = 1.0 + rng.uniform(-0.15, 0.15) * (rows - 0.5)
    image = np.broadcast_to(PALETTE[colours[0]] * shading[..., None], (height, width, 3)).copy()
    for colour in colours[1 : 1 + rng.integers(1, 3)]:
        centre_row, centre_column = rng.uniform(0.25, 0.75, size=2)
        radius = rng.uniform(0.12, 0.3)
        if rng.random() < 0.5:
            inside = (rows - centre_row) ** 2 + (columns - centre_column) ** 2 <= radius**2
        else:
            inside = (np.abs(rows - centre_row) <= radius) & (
                np.abs(columns - centre_column) <= radius
            )
        image[inside] = PALETTE[colour]
    return (2.0 * np.clip(image, 0.0, 1.0) - 1.0).astype(np.float32)


class ShapeBatches(PositionalImageBatches):
    """Batch source of `shape_image`s: ``{"image": (b, H, W, 3)}`` float32 in [−1, 1]
    (`PositionalImageBatches`)."""

    def image(self, position: int) -> np.ndarray:
        return shape_image(self.seed, position, self.size)
