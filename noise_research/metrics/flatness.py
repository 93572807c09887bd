"""A flatness probe: where does a network keep a constant input flat? (NIB paper, section 1).

"Given a flat input X, the transformation by CNN degrades to a scaling operation": a convolution of
a constant map is constant, so every layer of a plain CNN maps a constant image to constant feature
maps — away from the border, where zero padding breaks the constancy. A Noise Incentive Block as
first layer breaks it everywhere (Ĩ = f1(I + N) + f2(I − N) varies with the noise map N), and its
successors inherit the non-flat maps. `flatness_profile` measures this layer by layer.

Probe: for each gray level c the block sees the constant input ``full(shape, c)``; Flax's
``capture_intermediates`` (plus anything the block sows into 'intermediates', e.g. the NIB's noise
map) gives every submodule's output; outputs of rank 4, (B, H, W, C), are kept, in call order. For
each such layer and level the figure is the spatial standard deviation over the layer's interior,
i.e. its map with ``margin`` pixels cropped on each side, taken per sample and channel, reported
as the largest over samples and channels (one non-flat channel makes the layer non-flat). Computed
in float64 on the host from the layer's values. A layer whose interior has fewer than 2 pixels
gets NaN (no border-free region at that input size: use a larger shape).

The margin (pixels cropped on each side, in the layer's own grid):

* ``margin=None`` (auto, the default): the receptive-field growth, measured. One JVP per level
  pushes a one-pixel change at the input's centre through the network; the layer's margin is how
  far from the centre (in its own grid) the change reaches, +1 when the layer's grid differs from
  the input's (pooling, upsampling). A layer pixel at least that far from the border depends on no
  padded pixel of any layer before it (exactly so for stride-1 'SAME' convolutions). The largest
  reach over the levels is used. A layer the change does not reach (zero derivative: a noise map,
  a rounding) and every layer of a block whose input is not a float image (B, H, W, C) fall back
  to ``min(H, W) // 4``: a quarter of the shorter side. The source is recorded per layer.
* ``margin=k``: k pixels of every layer's own grid; ``margin=0`` measures the whole map, border
  included (non-zero for any zero-padded net).

The block is applied as given (evaluation mode where its top-level ``__call__`` takes ``train``:
``train=False`` is passed) with the given ``rngs``: pass a fixed 'noise' key for blocks with
dynamic noise so the probe is deterministic; every level uses the same keys.
"""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
import math
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from noise_research.metrics.gan_geometry import intermediate_features

DEFAULT_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
"""The constant gray levels of the probe (raw input values: the block's own input range)."""

FALLBACK_MARGIN_DIVISOR = 4
"""Fallback margin: ``min(H, W) // FALLBACK_MARGIN_DIVISOR`` (a quarter of the shorter side)."""

PLOT_FLOOR = 1e-10
"""Spatial stds below this (exact zeros included) are drawn at this value on the log axis."""

MARGIN_SOURCES = ("reach", "quarter", "given")
"""How a layer's margin was chosen: measured reach (auto), the quarter fallback, or `margin=k`."""


@dataclasses.dataclass(frozen=True)
class LayerFlatness:
    """One layer of a flatness profile.

    Attributes:
      shape: the layer's output shape (B, H, W, C).
      margin: pixels cropped on each side of H and W before the std is taken.
      margin_source: one of `MARGIN_SOURCES`.
      stds: spatial std over the interior, per level (max over samples and channels); NaN where the
        interior has fewer than 2 pixels.
    """

    shape: tuple[int, ...]
    margin: int
    margin_source: str
    stds: tuple[float, ...]

    @property
    def max_std(self) -> float:
        """The largest std over the levels (NaN if every level is NaN)."""
        finite = [std for std in self.stds if not math.isnan(std)]
        return max(finite) if finite else math.nan


def _takes_train(module: nn.Module) -> bool:
    return "train" in pyinspect.signature(type(module).__call__).parameters


def _is_spatial(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and len(value.shape) == 4


def layer_outputs_fn(
    module: nn.Module,
    variables: Any,
    shape: Sequence[int],
    rngs: Mapping[str, jax.Array],
    dtype: Any = jnp.float32,
) -> tuple[list[str], Callable[[Any, jax.Array, Any], list[jax.Array]]]:
    """The block's rank-4 layer outputs as a pure function.

    Returns ``(names, outputs)``: ``outputs(variables, inputs, rngs)`` is the list of the rank-4
    arrays among ``module``'s intermediates (`intermediate_features` names: 'path/to/module', the
    root's own output 'output') in call order, and ``names`` their names in that order (read
    while tracing at ``shape`` with ``variables`` and ``rngs``: JAX transforms return dicts
    key-sorted, lists keep the order).
    """
    kwargs = {"train": False} if _takes_train(module) else {}

    def spatial_intermediates(variables: Any, inputs: jax.Array, rngs: Any) -> dict[str, Any]:
        _, state = module.apply(
            variables,
            inputs,
            rngs=rngs,
            capture_intermediates=True,
            mutable=["intermediates"],
            **kwargs,
        )
        features = intermediate_features(state["intermediates"])
        return {name: value for name, value in features.items() if _is_spatial(value)}

    names: list[str] = []

    def record_names(variables: Any, inputs: jax.Array, rngs: Any) -> None:
        names.extend(spatial_intermediates(variables, inputs, rngs))

    jax.eval_shape(record_names, variables, jax.ShapeDtypeStruct(tuple(shape), dtype), rngs)

    def outputs(variables: Any, inputs: jax.Array, rngs: Any) -> list[jax.Array]:
        values = spatial_intermediates(variables, inputs, rngs)
        return [values[name] for name in names]

    return names, outputs


def _interior_std(value: np.ndarray, margin: int) -> float:
    """Max over samples and channels of the spatial std of `value` (B, H, W, C) cropped by
    `margin` on each side; NaN when fewer than 2 pixels remain."""
    height, width = value.shape[1:3]
    if (height - 2 * margin) * (width - 2 * margin) < 2 or min(height, width) <= 2 * margin:
        return math.nan
    interior = np.asarray(value, np.float64)[:, margin : height - margin, margin : width - margin]
    return float(interior.std(axis=(1, 2)).max())


def _reach(tangent: np.ndarray, input_hw: tuple[int, int]) -> int | None:
    """How far from the centre (in the layer's grid) a one-pixel input change at the centre
    reaches in `tangent` (B, H, W, C); None where it reaches no pixel."""
    height, width = tangent.shape[1:3]
    touched = np.any(tangent != 0, axis=(0, 3))
    if not touched.any():
        return None
    rows = np.nonzero(touched.any(axis=1))[0]
    cols = np.nonzero(touched.any(axis=0))[0]
    centre_row = (input_hw[0] // 2) * height // input_hw[0]
    centre_col = (input_hw[1] // 2) * width // input_hw[1]
    reach = max(
        centre_row - rows.min(),
        rows.max() - centre_row,
        centre_col - cols.min(),
        cols.max() - centre_col,
    )
    return int(reach) + (0 if (height, width) == tuple(input_hw) else 1)


def flatness_profile(
    module: nn.Module,
    variables: Any,
    shape: Sequence[int],
    levels: Sequence[float] = DEFAULT_LEVELS,
    margin: int | None = None,
    rngs: Mapping[str, jax.Array] | None = None,
    dtype: Any = jnp.float32,
) -> dict[str, LayerFlatness]:
    """Layer name → `LayerFlatness` of ``module`` fed constant inputs (module docstring).

    Args:
      module: a linen module; ``module.apply(variables, inputs, rngs=rngs)`` (with
        ``train=False`` if its ``__call__`` takes ``train``) is the block.
      variables: its variables (e.g. from ``module.init``).
      shape: the input shape, e.g. (1, 64, 64, 1).
      levels: the constant input values (raw: a halftoning model reads [−1, 1]).
      margin: None (auto: the measured receptive-field growth) or pixels cropped on each side.
      rngs: the rng streams ``apply`` needs (e.g. a fixed 'noise' key), the same for every level.
      dtype: the input dtype.

    Returns:
      An insertion-ordered dict in call order: the rank-4 outputs of every submodule (and what
      the block sows into 'intermediates'), the root's output last as 'output'.
    """
    if not levels:
        raise ValueError("levels must hold at least one gray level; got none.")
    if margin is not None and margin < 0:
        raise ValueError(f"margin={margin!r} must be None (auto) or an integer >= 0.")
    shape = tuple(shape)
    rngs = dict(rngs or {})
    names, outputs = layer_outputs_fn(module, variables, shape, rngs, dtype)
    if not names:
        raise ValueError(
            f"{type(module).__name__} at input shape {shape} has no (B, H, W, C) layer outputs "
            "to probe."
        )
    image_input = len(shape) == 4 and jnp.issubdtype(dtype, jnp.floating)
    measure_reach = margin is None and image_input
    if measure_reach:
        delta = jnp.zeros(shape, dtype).at[:, shape[1] // 2, shape[2] // 2, :].set(1)

        def forward(variables: Any, inputs: jax.Array, rngs: Any) -> tuple[list, list]:
            return jax.jvp(lambda x: outputs(variables, x, rngs), (inputs,), (delta,))

    else:
        forward = outputs
    forward = jax.jit(forward)
    values_per_level: list[list[np.ndarray]] = []
    reaches: list[int | None] = [None] * len(names)
    for level in levels:
        inputs = jnp.full(shape, level, dtype)
        if measure_reach:
            values, tangents = forward(variables, inputs, rngs)
            for index, tangent in enumerate(tangents):
                reach = _reach(np.asarray(tangent), shape[1:3])
                if reach is not None:
                    reaches[index] = max(reach, reaches[index] or 0)
        else:
            values = forward(variables, inputs, rngs)
        values_per_level.append([np.asarray(value) for value in values])

    profile: dict[str, LayerFlatness] = {}
    for index, name in enumerate(names):
        layer_shape = tuple(values_per_level[0][index].shape)
        if margin is not None:
            layer_margin, source = margin, "given"
        elif reaches[index] is not None:
            layer_margin, source = reaches[index], "reach"
        else:
            layer_margin = min(layer_shape[1:3]) // FALLBACK_MARGIN_DIVISOR
            source = "quarter"
        stds = tuple(_interior_std(values[index], layer_margin) for values in values_per_level)
        profile[name] = LayerFlatness(layer_shape, layer_margin, source, stds)
    return profile


def save_flatness_plot(
    path: str | pathlib.Path,
    profile: Mapping[str, LayerFlatness],
    levels: Sequence[float],
    title: str,
) -> pathlib.Path:
    """Writes a PNG: layers on x (call order), spatial std on a log y axis, one line per level.

    Values below `PLOT_FLOOR` (exact zeros: flat) are drawn at the floor, marked by a dashed line;
    NaN (no interior) is left out.
    """
    names = list(profile)
    figure = Figure(figsize=(min(max(6.4, 0.28 * len(names) + 2), 40), 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x = np.arange(len(names))
    top = PLOT_FLOOR
    for index, level in enumerate(levels):
        stds = np.array([profile[name].stds[index] for name in names], np.float64)
        floored = np.maximum(stds, PLOT_FLOOR)  # NaN stays NaN: not drawn
        top = max(top, float(np.nanmax(floored, initial=PLOT_FLOOR)))
        axes.plot(x, floored, marker="o", markersize=3, label=f"{level:g}")
    axes.axhline(PLOT_FLOOR, color="gray", linestyle="--", linewidth=0.8, label="floor (flat)")
    axes.set_ylim(PLOT_FLOOR / 10, max(top * 10, PLOT_FLOOR * 1e3))  # before the log scale:
    axes.set_yscale("log")  # an all-flat profile has no y range of its own
    axes.set_xticks(x, names, rotation=90, fontsize="x-small")
    axes.set_xlabel("layer (call order)")
    axes.set_ylabel("spatial std away from the border")
    axes.set_title(title, fontsize="small")
    axes.grid(True, alpha=0.3)
    axes.legend(title="input level", fontsize="x-small")
    figure.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path
