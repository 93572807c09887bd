"""Coloured shapes: an embedded RGB image set a small GAN learns on a CPU in minutes.

Each image is a flat background of one palette colour with a soft vertical shading, and one or two
shapes (a disc or an axis-aligned square) of other palette colours at random places and sizes.
Few modes (palette × shape × count) and sharp edges: a DCGAN that learns it draws recognisable
shapes after a few hundred steps, and its failures (blurred edges, mixed colours) are visible.
The example at global position n is ``shape_image(seed, n, size)``, a pure function, so batches are
step-indexed and identical for any number of processes.

Each image's generative factors (the drawing's discrete choices, `FACTOR_CLASSES`) are
``shape_factors(seed, n)``: both come from one draw of the same random sequence, so they always
describe the same picture (and do not depend on the size). A small classifier of these factors is
the feature network of the shapes' domain FID (`noise_research.metrics.domain_features`).
"""

from __future__ import annotations

import dataclasses

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

PALETTE_NAMES = ("red", "yellow", "green", "blue", "purple", "white", "black")
"""Names of the `PALETTE` colours, in order."""

ABSENT, DISC, SQUARE = 0, 1, 2
"""Values of the ``shape_<colour>`` factors."""

KIND_FACTORS = tuple(f"shape_{name}" for name in PALETTE_NAMES)
"""Names of the per-colour shape-kind factors, in `PALETTE` order (the last entries of
`FACTOR_CLASSES`)."""

FACTOR_CLASSES: dict[str, int] = {
    "background": len(PALETTE),
    "shape_count": 2,
    **{name: 3 for name in KIND_FACTORS},
}
"""The generative factors of an image, in the order of `shape_factors`' vector, with their number of
classes: ``background`` the background's `PALETTE` index; ``shape_count`` the number of shapes
minus one (0: one shape, 1: two); ``shape_<colour>`` for each `PALETTE` colour, the kind of the
shape of that colour: `ABSENT`, `DISC` or `SQUARE` (shapes have distinct colours, none the
background's). Together they are all of the drawing's discrete choices but the order in which two
shapes are drawn, which the picture does not show when they do not overlap. A second shape may
cover part of the first, or (rarely) all of it."""


@dataclasses.dataclass(frozen=True)
class _Shape:
    colour: int
    centre_row: float
    centre_column: float
    radius: float
    is_disc: bool


@dataclasses.dataclass(frozen=True)
class _Drawing:
    """All random choices of one image; `_render` turns them into pixels at any size."""

    background: int
    shading_slope: float
    shapes: tuple[_Shape, ...]

    def factors(self) -> np.ndarray:
        kinds = np.full(len(PALETTE), ABSENT, np.int32)
        for shape in self.shapes:
            kinds[shape.colour] = DISC if shape.is_disc else SQUARE
        return np.concatenate([[self.background, len(self.shapes) - 1], kinds]).astype(np.int32)


def _draw(seed: int, index: int) -> _Drawing:
    """The random choices of image ``index`` of the set ``seed``, in the order they are drawn."""
    rng = np.random.default_rng([check_seed(seed), index])
    colours = rng.permutation(len(PALETTE))
    shading_slope = rng.uniform(-0.15, 0.15)
    shapes = []
    for colour in colours[1 : 1 + rng.integers(1, 3)]:
        centre_row, centre_column = rng.uniform(0.25, 0.75, size=2)
        radius = rng.uniform(0.12, 0.3)
        shapes.append(_Shape(int(colour), centre_row, centre_column, radius, rng.random() < 0.5))
    return _Drawing(int(colours[0]), shading_slope, tuple(shapes))


def _render(drawing: _Drawing, size: tuple[int, int]) -> np.ndarray:
    """The image of ``drawing``: (H, W, 3) float32 in [−1, 1]."""
    height, width = check_image_size(size)
    rows = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    columns = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    shading = 1.0 + drawing.shading_slope * (rows - 0.5)
    image = np.broadcast_to(
        PALETTE[drawing.background] * shading[..., None], (height, width, 3)
    ).copy()
    for shape in drawing.shapes:
        if shape.is_disc:
            inside = (rows - shape.centre_row) ** 2 + (
                columns - shape.centre_column
            ) ** 2 <= shape.radius**2
        else:
            inside = (np.abs(rows - shape.centre_row) <= shape.radius) & (
                np.abs(columns - shape.centre_column) <= shape.radius
            )
        image[inside] = PALETTE[shape.colour]
    return (2.0 * np.clip(image, 0.0, 1.0) - 1.0).astype(np.float32)


def shape_image(seed: int, index: int, size: tuple[int, int]) -> np.ndarray:
    """Image ``index`` of the set ``seed``: (H, W, 3) float32 in [−1, 1] (module docstring)."""
    check_image_size(size)
    return _render(_draw(seed, index), size)


def shape_factors(seed: int, index: int) -> np.ndarray:
    """The generative factors of ``shape_image(seed, index, ·)`` (any size): (len(FACTOR_CLASSES),)
    int32, in `FACTOR_CLASSES`' order, each in [0, its number of classes)."""
    return _draw(seed, index).factors()


class ShapeBatches(PositionalImageBatches):
    """Batch source of `shape_image`s: ``{"image": (b, H, W, 3)}`` float32 in [−1, 1]
    (`PositionalImageBatches`); with ``factors=True`` the batches also carry ``"factors"``
    ``(b, len(FACTOR_CLASSES))`` int32, each row's `shape_factors`."""

    def __init__(
        self,
        global_batch_size: int,
        size: tuple[int, int],
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        *,
        factors: bool = False,
    ) -> None:
        super().__init__(global_batch_size, size, seed, process_index, process_count)
        self.factors = bool(factors)

    def image(self, position: int) -> np.ndarray:
        return shape_image(self.seed, position, self.size)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if not self.factors:
            return super().batch(step)
        positions = self.process_slice.global_positions(step)
        drawings = [_draw(self.seed, position) for position in positions]
        return {
            "image": np.stack([_render(drawing, self.size) for drawing in drawings]),
            "position": np.asarray(positions, np.int32),
            "factors": np.stack([drawing.factors() for drawing in drawings]),
        }
