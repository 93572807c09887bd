"""Procedural label maps and the textured photographs rendered from them: a tiny Cityscapes.

The NIB paper's semantic synthesis (section 4.1) turns a piece-wise flat semantic layout into a
photo-realistic image; a plain CNN degrades inside large flat label segments ("flatness
degradation"), where the photograph has texture. This module is the embedded stand-in for
Cityscapes:

* a **label map** (H, W) int32 of :data:`NUM_CLASSES` classes (:data:`CLASS_NAMES`): sky above a
  sloped horizon, ground below it, often a road (a trapezoid towards a vanishing point), 0–2
  buildings standing on the horizon, 0–2 foliage blobs and 0–2 small objects on the ground. Every
  segment is flat: one class id, no outlines, no shading;
* the **photograph** (H, W, 3) float32 in [−1, 1] of the same drawing: each class is filled from its
  own texture family with random per-image parameters — colour jitter, and a sky gradient with
  faint clouds, grainy ground noise, asphalt grain with or without dashed lane markings, window
  grids on a facade, blobby foliage, striped objects — so the pixels of one flat label segment are
  not flat, which is what a generator must create.

Both are pure functions of (seed, index): ``label_map_pair(seed, index, size)``. The drawing's
discrete texture choices are its **factors** (:data:`FACTOR_CLASSES`), one draw of the same random
sequence, so they always describe the picture; the domain-FID feature network of the synthesis
task (``metrics/label_map_features.py``) is trained to recognise them, which makes its features
see textures rather than only colours. Geometry is drawn in unit coordinates, so one drawing
renders at any size (the per-pixel grain is drawn at the rendered size).

:class:`LabelMapBatches` is the positional batch source (``data/base.py``): ``{"label": (b, H, W)
int32, "image": (b, H, W, 3), "factors": (b, 6), "position": (b,)}``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from noise_research.data.base import PositionalImageBatches, check_image_size, check_seed

CLASS_NAMES = ("sky", "ground", "road", "building", "foliage", "object")
"""The label classes, in id order."""

NUM_CLASSES = len(CLASS_NAMES)
SKY, GROUND, ROAD, BUILDING, FOLIAGE, OBJECT = range(NUM_CLASSES)

CLASS_COLOURS = np.array(
    [
        [0.45, 0.65, 0.95],  # sky
        [0.35, 0.55, 0.20],  # ground
        [0.35, 0.35, 0.38],  # road
        [0.70, 0.45, 0.35],  # building
        [0.15, 0.45, 0.15],  # foliage
        [0.85, 0.20, 0.20],  # object
    ],
    np.float32,
)
"""Each class's mean colour (RGB in [0, 1]); also the palette of the label-map pictures."""

SKY_TINTS = np.array([[0.45, 0.65, 0.95], [0.70, 0.72, 0.75], [0.95, 0.60, 0.35]], np.float32)
"""The sky's colour families: clear blue, overcast gray, dusk orange."""
FOLIAGE_COLOURS = np.array([[0.15, 0.45, 0.15], [0.08, 0.28, 0.10], [0.80, 0.45, 0.10]], np.float32)
"""Foliage colour families: green, dark green, autumn."""
GROUND_GRAIN_CELLS = (16, 8, 4)
"""Ground grain: cells of the value noise per image side (fine, medium, coarse)."""
WINDOW_SPACINGS = (3.0 / 32, 5.0 / 32, 8.0 / 32)
"""Window-grid periods of the facades, in image sides (small, medium, large)."""
STRIPE_ANGLES = (0.0, 45.0, 90.0, 135.0)
"""Stripe orientations of the objects, in degrees."""

FACTOR_CLASSES: dict[str, int] = {
    "sky_tint": len(SKY_TINTS),
    "ground_grain": len(GROUND_GRAIN_CELLS),
    "road": 3,  # absent, plain asphalt, dashed lanes
    "building_windows": 1 + len(WINDOW_SPACINGS),  # absent, or the window spacing
    "foliage_colour": 1 + len(FOLIAGE_COLOURS),  # absent, or the colour family
    "object_stripes": 1 + len(STRIPE_ANGLES),  # absent, or the stripe orientation
}
"""The drawing's discrete texture choices, in the order of `label_map_factors`' vector, with their
number of classes (0 means "absent" for the optional classes)."""


@dataclasses.dataclass(frozen=True)
class _Box:
    """An axis-aligned box or ellipse in unit coordinates (rows, columns in [0, 1])."""

    top: float
    bottom: float
    left: float
    right: float
    ellipse: bool = False

    def mask(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        if self.ellipse:
            centre_row, centre_column = (self.top + self.bottom) / 2, (self.left + self.right) / 2
            half_height, half_width = (self.bottom - self.top) / 2, (self.right - self.left) / 2
            return ((rows - centre_row) / half_height) ** 2 + (
                (columns - centre_column) / half_width
            ) ** 2 <= 1.0
        return (
            (rows >= self.top)
            & (rows <= self.bottom)
            & (columns >= self.left)
            & (columns <= self.right)
        )


@dataclasses.dataclass(frozen=True)
class _Drawing:
    """All random choices of one picture but the per-pixel grain (drawn at render time)."""

    horizon_left: float
    horizon_right: float
    road: int  # 0 absent, 1 plain, 2 dashed lanes
    road_bottom_half_width: float
    vanishing_column: float
    buildings: tuple[_Box, ...]
    foliage: tuple[_Box, ...]
    objects: tuple[_Box, ...]
    sky_tint: int
    ground_grain: int
    window_spacing: int
    foliage_colour: int
    stripe_angle: int
    colour_jitter: np.ndarray  # (NUM_CLASSES, 3) added to the class colours
    texture_phase: np.ndarray  # (2,) phases of the window grid and the stripes, in periods
    stripe_period: float  # in image sides

    def factors(self) -> np.ndarray:
        return np.array(
            [
                self.sky_tint,
                self.ground_grain,
                self.road,
                (1 + self.window_spacing) if self.buildings else 0,
                (1 + self.foliage_colour) if self.foliage else 0,
                (1 + self.stripe_angle) if self.objects else 0,
            ],
            np.int32,
        )


def _draw(seed: int, index: int) -> _Drawing:
    """The random choices of picture ``index`` of the set ``seed``, in the order they are drawn."""
    rng = np.random.default_rng([check_seed(seed), index])
    horizon_left, horizon_right = rng.uniform(0.3, 0.55, size=2)
    horizon = min(horizon_left, horizon_right)
    road = int(rng.choice(3, p=[0.3, 0.35, 0.35]))
    road_bottom_half_width = rng.uniform(0.2, 0.45)
    vanishing_column = rng.uniform(0.3, 0.7)
    buildings = []
    for _ in range(rng.integers(0, 3)):
        width, height = rng.uniform(0.15, 0.35), rng.uniform(0.15, horizon - 0.05)
        left = rng.uniform(0.0, 1.0 - width)
        base = horizon + 0.02
        buildings.append(_Box(base - height, base, left, left + width))
    foliage = []
    for _ in range(rng.integers(0, 3)):
        width, height = rng.uniform(0.15, 0.3), rng.uniform(0.12, 0.25)
        left, centre = rng.uniform(0.0, 1.0 - width), horizon + rng.uniform(-0.05, 0.1)
        foliage.append(_Box(centre - height / 2, centre + height / 2, left, left + width, True))
    objects = []
    for _ in range(rng.integers(0, 3)):
        width, height = rng.uniform(0.12, 0.25), rng.uniform(0.1, 0.2)
        left, top = rng.uniform(0.0, 1.0 - width), rng.uniform(horizon + 0.15, 0.95 - height)
        objects.append(_Box(top, top + height, left, left + width, bool(rng.random() < 0.3)))
    return _Drawing(
        horizon_left=float(horizon_left),
        horizon_right=float(horizon_right),
        road=road,
        road_bottom_half_width=float(road_bottom_half_width),
        vanishing_column=float(vanishing_column),
        buildings=tuple(buildings),
        foliage=tuple(foliage),
        objects=tuple(objects),
        sky_tint=int(rng.integers(len(SKY_TINTS))),
        ground_grain=int(rng.integers(len(GROUND_GRAIN_CELLS))),
        window_spacing=int(rng.integers(len(WINDOW_SPACINGS))),
        foliage_colour=int(rng.integers(len(FOLIAGE_COLOURS))),
        stripe_angle=int(rng.integers(len(STRIPE_ANGLES))),
        colour_jitter=rng.uniform(-0.08, 0.08, size=(NUM_CLASSES, 3)).astype(np.float32),
        texture_phase=rng.uniform(0.0, 1.0, size=2),
        stripe_period=float(rng.uniform(4.0, 7.0) / 32),
    )


def _unit_grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in unit coordinates: rows (H, 1) and columns (1, W)."""
    height, width = check_image_size(size)
    rows = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    columns = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    return rows, columns


def _label_map(drawing: _Drawing, size: tuple[int, int]) -> np.ndarray:
    """The flat label map (H, W) int32 of ``drawing``: later layers cover earlier ones."""
    rows, columns = _unit_grid(size)
    horizon = drawing.horizon_left + (drawing.horizon_right - drawing.horizon_left) * columns
    labels = np.where(rows < horizon, SKY, GROUND).astype(np.int32)
    if drawing.road:
        top = min(drawing.horizon_left, drawing.horizon_right)
        depth = np.clip((rows - top) / (1.0 - top), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom
        half_width = drawing.road_bottom_half_width * depth
        road = (np.abs(columns - drawing.vanishing_column) <= half_width) & (rows >= horizon)
        labels[road] = ROAD
    for label, boxes in (
        (BUILDING, drawing.buildings),
        (FOLIAGE, drawing.foliage),
        (OBJECT, drawing.objects),
    ):
        for box in boxes:
            labels[box.mask(rows, columns)] = label
    return labels


def _value_noise(rng: np.random.Generator, cells: int, size: tuple[int, int]) -> np.ndarray:
    """Smooth noise (H, W), about unit std: a ``cells`` × ``cells`` grid of N(0, 1) values,
    bilinearly interpolated to the image (one interpolation matrix per axis)."""
    grid = rng.normal(size=(cells + 1, cells + 1))
    knots = np.eye(cells + 1)

    def interpolation(side: int) -> np.ndarray:
        positions = np.linspace(0.0, cells, side)
        return np.stack([np.interp(positions, np.arange(cells + 1), k) for k in knots], axis=1)

    return (interpolation(size[0]) @ grid @ interpolation(size[1]).T).astype(np.float32)


def _textures(drawing: _Drawing, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photograph (H, W, 3) in [0, 1]: each pixel from its class's texture (module
    docstring); the grain comes from ``rng`` (the picture's own stream, after the drawing)."""
    height, width = labels.shape
    rows, columns = _unit_grid((height, width))
    base = CLASS_COLOURS.copy()
    base[SKY] = SKY_TINTS[drawing.sky_tint]
    base[FOLIAGE] = FOLIAGE_COLOURS[drawing.foliage_colour]
    base = np.clip(base + drawing.colour_jitter, 0.0, 1.0)
    white = rng.normal(size=(height, width)).astype(np.float32)
    shade = np.zeros((NUM_CLASSES, height, width), np.float32)
    shade[SKY] = 0.25 * (rows - 0.5) + 0.06 * _value_noise(rng, 4, (height, width))
    grain = _value_noise(rng, GROUND_GRAIN_CELLS[drawing.ground_grain], (height, width))
    shade[GROUND] = 0.12 * grain + 0.05 * white
    shade[ROAD] = 0.07 * white
    if drawing.road == 2:  # dashed lane markings along the road's centre line
        top = min(drawing.horizon_left, drawing.horizon_right)
        depth = np.clip((rows - top) / (1.0 - top), 0.0, 1.0)
        centre = np.abs(columns - drawing.vanishing_column) <= 0.025 * depth + 0.5 / width
        dashes = np.sin(2 * np.pi * (rows * 6.0 / np.maximum(depth, 0.2))) > 0
        shade[ROAD] += 0.55 * (centre & dashes)
    spacing = WINDOW_SPACINGS[drawing.window_spacing]
    phase_row, phase_column = drawing.texture_phase * spacing
    windows = (np.mod(rows + phase_row, spacing) < spacing / 2) & (
        np.mod(columns + phase_column, spacing) < spacing / 2
    )
    shade[BUILDING] = -0.3 * windows + 0.03 * white
    shade[FOLIAGE] = 0.15 * _value_noise(rng, 10, (height, width)) + 0.04 * white
    angle = np.deg2rad(STRIPE_ANGLES[drawing.stripe_angle])
    along = rows * np.sin(angle) + columns * np.cos(angle)
    stripes = np.sin(2 * np.pi * (along / drawing.stripe_period + drawing.texture_phase[1]))
    shade[OBJECT] = 0.25 * np.sign(stripes)
    picked = np.take_along_axis(shade, labels[None], axis=0)[0]
    return np.clip(base[labels] + picked[..., None], 0.0, 1.0)


def label_map_pair(seed: int, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Picture ``index`` of the set ``seed``: ``(label map (H, W) int32 in [0, NUM_CLASSES),
    photograph (H, W, 3) float32 in [−1, 1])`` (module docstring). Deterministic in (seed, index,
    size)."""
    size = check_image_size(size)
    drawing = _draw(seed, index)
    labels = _label_map(drawing, size)
    grain_rng = np.random.default_rng([check_seed(seed), index, 1])
    image = _textures(drawing, labels, grain_rng)
    return labels, (2.0 * image - 1.0).astype(np.float32)


def label_map_factors(seed: int, index: int) -> np.ndarray:
    """The texture factors of picture ``index`` of the set ``seed`` (any size):
    (len(FACTOR_CLASSES),) int32 in `FACTOR_CLASSES`' order."""
    return _draw(seed, index).factors()


def colour_label_map(labels: np.ndarray) -> np.ndarray:
    """A label map (..., H, W) drawn in the class colours, float32 in [−1, 1] (..., H, W, 3)."""
    return (2.0 * CLASS_COLOURS[np.asarray(labels)] - 1.0).astype(np.float32)


class LabelMapBatches(PositionalImageBatches):
    """Batch source of `label_map_pair`s: ``{"label": (b, H, W) int32, "image": (b, H, W, 3)
    float32 in [−1, 1], "factors": (b, len(FACTOR_CLASSES)) int32, "position": (b,) int32}``
    (`PositionalImageBatches`: the example at global position n is picture n of the set
    ``seed``)."""

    def batch(self, step: int) -> dict[str, np.ndarray]:
        positions = self.process_slice.global_positions(step)
        drawings = [_draw(self.seed, position) for position in positions]
        pairs = [label_map_pair(self.seed, position, self.size) for position in positions]
        return {
            "label": np.stack([labels for labels, _ in pairs]),
            "image": np.stack([image for _, image in pairs]),
            "factors": np.stack([drawing.factors() for drawing in drawings]),
            "position": np.asarray(positions, np.int32),
        }
