"""Procedural images: gray and flat-colour comic panels, constant-gray batches, ramps and step
wedges.

DESIGN.md, "Embedded data": machines without network train and test on procedural data sets, here
flat-shaded "comic" images (gray, and a flat-colour version for colour hiding, the NIB paper's
section 4.2). The halftoning trainer also needs a batch of **constant-gray** images
for its blue-noise loss (DESIGN.md, "NIB / halftoning": the DCT low-frequency L1 is "computed only
on a batch of constant-gray images"), and evaluation pictures use a gray ramp and gray steps.

All images follow the project convention: float32 in [−1, 1] (−1 black, +1 white), shape
(H, W, 1) per example ((H, W, 3) RGB for the colour comics), deterministic in their seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from noise_research.data.base import (
    PositionalImageBatches,
    ProcessSlice,
    check_image_size,
    check_integer,
    check_seed,
    uint8_scale_to_signed_unit,
)

SHAPE_KINDS = ("rectangle", "rounded_rectangle", "ellipse", "polygon")
# How a shape is filled, with its probability: mostly flat, like a comic's cel shading.
FILL_STYLES = ("flat", "linear_gradient", "radial_gradient", "hatched", "dotted")
FILL_STYLE_PROBABILITIES = (0.55, 0.13, 0.12, 0.1, 0.1)
# 0…255 level ranges: outlines and ink, and the three flat tones every image is given.
INK_LEVELS = (0, 24)
NEAR_BLACK_LEVELS = (0, 24)
NEAR_WHITE_LEVELS = (232, 255)
MID_TONE_LEVELS = (96, 160)


# Colour comics are cel-shaded: flat fills and a few gradients, no hatching or dots.
COLOUR_FILL_STYLES = ("flat", "linear_gradient", "radial_gradient")
COLOUR_FILL_STYLE_PROBABILITIES = (0.76, 0.12, 0.12)

Paint = int | tuple[int, int, int]
"""A Pillow fill: a 0…255 level (mode "L") or an RGB triple (mode "RGB")."""


def _random_level(rng: np.random.Generator, level_range: tuple[int, int]) -> int:
    return int(rng.integers(level_range[0], level_range[1] + 1))


def _random_paint(rng: np.random.Generator, level_range: tuple[int, int], channels: int) -> Paint:
    """A level (``channels`` = 1, the one draw `_random_level` makes) or an RGB triple with each
    channel drawn from ``level_range`` (``channels`` = 3, one draw of three values)."""
    if channels == 1:
        return _random_level(rng, level_range)
    return tuple(int(v) for v in rng.integers(level_range[0], level_range[1] + 1, size=3))


def _random_geometry(
    rng: np.random.Generator, kind: str, width: int, height: int
) -> list[float] | list[tuple[float, float]]:
    """A bounding box [x0, y0, x1, y1] (rectangles, ellipses) or a vertex list (polygons)."""
    center_x, center_y = rng.uniform(0, width), rng.uniform(0, height)
    half_width = rng.uniform(0.08, 0.35) * width
    half_height = rng.uniform(0.08, 0.35) * height
    if kind == "polygon":
        vertex_count = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * math.pi, vertex_count))
        radii = rng.uniform(0.5, 1.0, vertex_count)
        return [
            (center_x + r * half_width * math.cos(a), center_y + r * half_height * math.sin(a))
            for r, a in zip(radii, angles, strict=True)
        ]
    return [
        center_x - half_width,
        center_y - half_height,
        center_x + half_width,
        center_y + half_height,
    ]


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    kind: str,
    geometry: list,
    fill: int | None,
    outline: int | None = None,
    outline_width: int = 0,
) -> None:
    if kind == "rectangle":
        draw.rectangle(geometry, fill=fill, outline=outline, width=outline_width)
    elif kind == "rounded_rectangle":
        x0, y0, x1, y1 = geometry
        short_side = min(x1 - x0, y1 - y0)
        # Pillow's rounded_rectangle fails on outlines when the box is barely wider than the
        # corner diameter; boxes that small are drawn with square corners.
        if short_side < 8:
            draw.rectangle(geometry, fill=fill, outline=outline, width=outline_width)
        else:
            draw.rounded_rectangle(
                geometry, radius=short_side / 4, fill=fill, outline=outline, width=outline_width
            )
    elif kind == "ellipse":
        draw.ellipse(geometry, fill=fill, outline=outline, width=outline_width)
    else:
        draw.polygon(geometry, fill=fill, outline=outline, width=outline_width)


def _bounding_box(kind: str, geometry: list) -> tuple[float, float, float, float]:
    if kind == "polygon":
        xs, ys = zip(*geometry, strict=True)
        return min(xs), min(ys), max(xs), max(ys)
    return tuple(geometry)


def _gradient_position(
    rng: np.random.Generator,
    style: str,
    bounding_box: tuple[float, float, float, float],
    width: int,
    height: int,
) -> np.ndarray:
    """(H, W) float32 in [0, 1]: where each pixel lies along a linear or radial gradient across
    the shape's box (0 at the gradient's start)."""
    x0, y0, x1, y1 = bounding_box
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if style == "linear_gradient":
        angle = rng.uniform(0, 2 * math.pi)
        projection = xs * math.cos(angle) + ys * math.sin(angle)
        corner_projections = [
            x * math.cos(angle) + y * math.sin(angle) for x in (x0, x1) for y in (y0, y1)
        ]
        start, stop = min(corner_projections), max(corner_projections)
        position = (projection - start) / max(stop - start, 1.0)
    else:
        focus_x = rng.uniform(x0, x1) if x1 > x0 else x0
        focus_y = rng.uniform(y0, y1) if y1 > y0 else y0
        radius = max(x1 - x0, y1 - y0, 1.0)
        position = np.hypot(xs - focus_x, ys - focus_y) / radius
    return np.clip(position, 0.0, 1.0)


def _gradient_layer(
    rng: np.random.Generator,
    style: str,
    bounding_box: tuple[float, float, float, float],
    width: int,
    height: int,
    start: Paint,
) -> Image.Image:
    """A linear or radial gradient from the paint `start` to a random paint of as many channels
    (a level or an RGB triple) across the shape's box."""
    channels = 1 if isinstance(start, int) else 3
    end = np.asarray(_random_paint(rng, (0, 255), channels), np.float32)
    position = _gradient_position(rng, style, bounding_box, width, height)
    start_array = np.asarray(start, np.float32)
    if channels == 3:
        position = position[..., None]
    levels = start_array + (end - start_array) * position
    return Image.fromarray(np.round(levels).astype(np.uint8))


def _hatched_layer(
    rng: np.random.Generator,
    bounding_box: tuple[float, float, float, float],
    width: int,
    height: int,
    paper_level: int,
) -> Image.Image:
    """Parallel ink lines at 0°, 45°, 90° or 135° over a flat `paper_level`."""
    layer = Image.new("L", (width, height), paper_level)
    draw = ImageDraw.Draw(layer)
    spacing = int(rng.integers(3, max(4, min(width, height) // 12) + 1))
    line_width = int(rng.integers(1, max(1, spacing // 2) + 1))
    angle = math.radians(float(rng.choice([0.0, 45.0, 90.0, 135.0])))
    direction = (math.cos(angle), math.sin(angle))
    normal = (-direction[1], direction[0])
    x0, y0, x1, y1 = bounding_box
    center_x, center_y = (x0 + x1) / 2, (y0 + y1) / 2
    half_diagonal = math.hypot(x1 - x0, y1 - y0) / 2 + spacing
    ink = _random_level(rng, INK_LEVELS)
    for offset in np.arange(-half_diagonal, half_diagonal, spacing):
        base_x, base_y = center_x + offset * normal[0], center_y + offset * normal[1]
        draw.line(
            [
                (base_x - half_diagonal * direction[0], base_y - half_diagonal * direction[1]),
                (base_x + half_diagonal * direction[0], base_y + half_diagonal * direction[1]),
            ],
            fill=ink,
            width=line_width,
        )
    return layer


def _dotted_layer(
    rng: np.random.Generator,
    bounding_box: tuple[float, float, float, float],
    width: int,
    height: int,
    paper_level: int,
) -> Image.Image:
    """Ben-Day-like dots on a staggered grid over a flat `paper_level`."""
    layer = Image.new("L", (width, height), paper_level)
    draw = ImageDraw.Draw(layer)
    spacing = int(rng.integers(4, max(5, min(width, height) // 10) + 1))
    dot_radius = spacing * rng.uniform(0.2, 0.4)
    dot_level = _random_level(rng, (0, 255))
    x0, y0, x1, y1 = bounding_box
    for row, y in enumerate(np.arange(max(y0, 0), min(y1, height) + spacing, spacing)):
        stagger = spacing / 2 if row % 2 else 0.0
        for x in np.arange(max(x0, 0) + stagger, min(x1, width) + spacing, spacing):
            draw.ellipse(
                [x - dot_radius, y - dot_radius, x + dot_radius, y + dot_radius], fill=dot_level
            )
    return layer


def _draw_background(canvas: Image.Image, rng: np.random.Generator) -> None:
    """A sky (flat, or a vertical gradient) and often a flat ground below a sloped horizon; gray
    levels on an "L" canvas, RGB paints on an "RGB" one."""
    width, height = canvas.size
    channels = 1 if canvas.mode == "L" else 3
    draw = ImageDraw.Draw(canvas)
    sky = _random_paint(rng, (150, 255), channels)
    if rng.uniform() < 0.65:
        draw.rectangle([0, 0, width, height], fill=sky)
    else:
        horizon = _random_paint(rng, (60, 255), channels)
        rows = np.linspace(sky, horizon, height, dtype=np.float32)
        canvas.paste(Image.fromarray(np.round(np.repeat(rows[:, None], width, 1)).astype(np.uint8)))
    if rng.uniform() < 0.7:
        left_y, right_y = rng.uniform(0.5, 0.85, 2) * height
        ground = [(0, left_y), (width, right_y), (width, height), (0, height)]
        draw.polygon(ground, fill=_random_paint(rng, (0, 200), channels))


def _comic_canvas(seed: int, index: int, size: tuple[int, int], channels: int) -> np.ndarray:
    """The comic panel of (seed, index) as a (H, W) uint8 ("L", ``channels`` = 1) or (H, W, 3)
    ("RGB", ``channels`` = 3) array; see `comic_image` and `colour_comic_image`."""
    seed = check_seed(seed)
    index = check_integer(index, "index")
    height, width = check_image_size(size)
    rng = np.random.default_rng([seed, index])
    canvas = Image.new("L" if channels == 1 else "RGB", (width, height))
    _draw_background(canvas, rng)
    draw = ImageDraw.Draw(canvas)

    shape_count = int(rng.integers(4, 9))
    paints = [
        _random_paint(rng, NEAR_BLACK_LEVELS, channels),
        _random_paint(rng, NEAR_WHITE_LEVELS, channels),
        _random_paint(rng, MID_TONE_LEVELS, channels),
    ] + [_random_paint(rng, (0, 255), channels) for _ in range(shape_count - 3)]
    fill_styles, probabilities = (
        (FILL_STYLES, FILL_STYLE_PROBABILITIES)
        if channels == 1
        else (COLOUR_FILL_STYLES, COLOUR_FILL_STYLE_PROBABILITIES)
    )
    styles = ["flat"] * 3 + list(rng.choice(fill_styles, size=shape_count - 3, p=probabilities))
    draw_order = rng.permutation(shape_count)
    max_outline_width = max(1, min(width, height) // 40)

    for shape_number in draw_order:
        paint, style = paints[shape_number], styles[shape_number]
        kind = str(rng.choice(SHAPE_KINDS))
        geometry = _random_geometry(rng, kind, width, height)
        outline = _random_paint(rng, INK_LEVELS, channels)
        outline_width = int(rng.integers(1, max_outline_width + 1))
        if style == "flat":
            _draw_shape(draw, kind, geometry, paint, outline, outline_width)
            continue
        bounding_box = _bounding_box(kind, geometry)
        if style in ("linear_gradient", "radial_gradient"):
            layer = _gradient_layer(rng, style, bounding_box, width, height, paint)
        elif style == "hatched":
            layer = _hatched_layer(rng, bounding_box, width, height, paint)
        else:
            layer = _dotted_layer(rng, bounding_box, width, height, paint)
        mask = Image.new("L", (width, height), 0)
        _draw_shape(ImageDraw.Draw(mask), kind, geometry, 255)
        canvas.paste(layer, mask=mask)
        _draw_shape(draw, kind, geometry, None, outline, outline_width)

    if rng.uniform() < 0.5:
        frame_width = int(rng.integers(1, max_outline_width + 1))
        black = 0 if channels == 1 else (0, 0, 0)
        draw.rectangle([0, 0, width - 1, height - 1], outline=black, width=frame_width)
    return np.asarray(canvas)


def comic_image(seed: int, index: int, size: tuple[int, int]) -> np.ndarray:
    """A flat-shaded comic panel, (H, W, 1) float32 in [−1, 1], deterministic in (seed, index).

    DESIGN.md, "Embedded data": the procedural stand-in for natural images. Each image has a sky
    background (flat or a vertical gradient) with an optional ground, 4–8 shapes (rectangles,
    rounded rectangles, ellipses, polygons) with black outlines of varying width, filled flat or
    with a linear/radial gradient, hatching or dots, and an optional black panel frame. Three of
    the shapes are flat near-black, near-white and mid-gray, so every image spans the gray range.
    Everything is drawn with Pillow at the target size (no resampling of flat regions).

    Args:
      seed: data-set seed in [0, 2**32 − 1].
      index: position of the image in the data set (non-negative).
      size: (height, width) in pixels.
    """
    return uint8_scale_to_signed_unit(_comic_canvas(seed, index, size, channels=1))[..., None]


def colour_comic_image(seed: int, index: int, size: tuple[int, int]) -> np.ndarray:
    """A flat-COLOUR comic panel, (H, W, 3) RGB float32 in [−1, 1], deterministic in (seed,
    index): the layout of `comic_image` (same drawing code) painted in colour.

    The colour-hiding task's hard case (NIB paper, section 4.2 and Figure 7: invertible grayscale
    "fails to accurately encode color information into the grayscale image in flat regions"):
    a sky (one colour, or a vertical gradient between two), often a flat-coloured ground, 4–8
    shapes with near-black ink outlines, cel-shaded: most filled with one exact colour, some
    with a linear or radial gradient between two colours (`COLOUR_FILL_STYLES`, no hatching or
    dots). Three shapes are flat near-black, near-white and a muted mid tone; the others take
    colours with each channel uniform in 0…255, so two regions of equal luminance and different
    hue are common. For a given (seed, index) it is a different image from `comic_image`'s (the
    colour draws take other values from the same generator).
    """
    return uint8_scale_to_signed_unit(_comic_canvas(seed, index, size, channels=3))


class ComicBatches(PositionalImageBatches):
    """Batch source of `comic_image`s: the example at global position n is comic_image(seed, n),
    ``{"image": (b, H, W, 1)}`` float32 in [−1, 1] (`PositionalImageBatches`)."""

    def image(self, position: int) -> np.ndarray:
        return comic_image(self.seed, position, self.size)


class ColourComicBatches(PositionalImageBatches):
    """Batch source of `colour_comic_image`s: the example at global position n is
    colour_comic_image(seed, n), ``{"image": (b, H, W, 3)}`` RGB float32 in [−1, 1]."""

    def image(self, position: int) -> np.ndarray:
        return colour_comic_image(self.seed, position, self.size)


def constant_gray_batch(
    seed: int,
    step: int,
    global_batch_size: int,
    size: tuple[int, int],
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """This process's share of `global_batch_size` constant images (b, H, W, 1), each one level
    drawn uniformly in [−1, 1].

    The halftoning blue-noise loss is computed only on constant-gray images (DESIGN.md, "NIB /
    halftoning"). The step's levels are drawn from (seed, step) for the whole global batch and
    split between processes as every batch is (`ProcessSlice`), so the global batch is the same
    for any number of processes, and a resumed run sees the same levels.
    """
    seed = check_seed(seed)
    step = check_integer(step, "step")
    rows = ProcessSlice(global_batch_size, process_index, process_count).global_positions(0)
    height, width = check_image_size(size)
    levels = np.random.default_rng([seed, step]).uniform(-1.0, 1.0, size=global_batch_size)
    levels = levels.astype(np.float32)[rows.start : rows.stop]
    return np.broadcast_to(levels[:, None, None, None], (len(levels), height, width, 1)).copy()


def gray_ramp(size: tuple[int, int]) -> np.ndarray:
    """A horizontal linear ramp from −1 (left column) to +1 (right column), (H, W, 1) float32."""
    height, width = check_image_size(size)
    ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32)
    return np.broadcast_to(ramp[None, :, None], (height, width, 1)).copy()


def gray_steps(levels: Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """A row of constant patches at `levels` (left to right), (H, W, 1) float32.

    With K levels, column c belongs to patch ⌊cK/W⌋, so patch widths differ by at most one.
    """
    height, width = check_image_size(size)
    levels_array = np.asarray(levels, dtype=np.float32)
    if levels_array.ndim != 1 or levels_array.size == 0:
        raise ValueError(f"levels must be a non-empty sequence of numbers, got {levels!r}.")
    if np.any(np.abs(levels_array) > 1.0) or not np.all(np.isfinite(levels_array)):
        raise ValueError(f"levels must lie in [-1, 1], got {levels!r}.")
    if levels_array.size > width:
        raise ValueError(
            f"size width {width} is smaller than the number of levels {levels_array.size}; "
            "each level needs at least one column."
        )
    patch_of_column = np.arange(width) * levels_array.size // width
    return np.broadcast_to(levels_array[patch_of_column][None, :, None], (height, width, 1)).copy()
