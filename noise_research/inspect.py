"""Print the jaxpr (and optionally the StableHLO) of any registered block's apply, or probe its
flatness degradation layer by layer.

    python -m noise_research.inspect <block> [--shape 1,64,64,1] [--hlo]
    python -m noise_research.inspect --flatness <block> [--shape 1,64,64,1]
        [--levels=0.1,0.25,0.5,0.75,0.9] [--margin auto|K] [--out flatness_<block>.png]
    python -m noise_research.inspect --list

DESIGN.md: "Inspectable: any block's jaxpr can be printed from the command line". The block's
variables are initialised with the fixed key `jax.random.key(0)`; the printed function is
`apply(variables, inputs, rngs)`, so params, 'noise_keys' and the 'noise' rng key (for blocks with
dynamic noise) appear as its inputs. Importing `noise_research.layers` and `noise_research.models`
registers the blocks (the halftoning models with a NIB first layer, `halftone_resnet` /
`halftone_unet`, and their plain 3×3-conv twins, `halftone_resnet_plain` / `halftone_unet_plain`).

--flatness (NIB paper, section 1, "flatness degradation"; `noise_research.metrics.flatness`): the
block, initialised with the real `module.init` from the same key, sees constant inputs at each
--levels value (raw input values; the halftoning models read [−1, 1]) with the same fixed rng keys
(the 'noise' key of dynamic-noise blocks included), in evaluation mode where its call takes
`train` (a block its factory fixes in training mode, e.g. the positive-noise layers, stays so).
Every submodule's (B, H, W, C) output (Flax `capture_intermediates`, plus what the block
sows, e.g. the NIB's noise map) is printed as a row: layer, shape, margin, the spatial std over the
layer's interior at each level (max over samples and channels), and the max over the levels; a
PNG (layers on x, log std on y, floored at 1e-10, one line per level) goes to --out. The interior
crops --margin pixels of each side: 'auto' (default) crops the measured receptive-field growth
(how far a one-pixel change at the input's centre reaches in that layer, by a JVP), so no pixel
left depends on zero padding; layers the change cannot reach (a noise map) and non-image inputs
crop a quarter of the shorter side (marked '*'); an integer K crops K pixels of every layer (0: the
whole map, border included). "n/a": no interior left at this --shape. A plain CNN prints ~0 in
every layer (e.g. `halftone_resnet_plain`); a NIB first layer (`halftone_resnet`) makes the first
layer's output, and the layers after it, non-flat.
"""

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import noise_research.layers
import noise_research.models  # noqa: F401  (registers the halftoning models)
from noise_research.metrics import flatness
from noise_research.registry import block_names, get_block

INIT_KEY_SEED = 0


def parse_shape(text: str) -> tuple[int, ...]:
    """Parses "1,64,64,1" into (1, 64, 64, 1); anything but positive integers is a ValueError."""
    try:
        shape = tuple(int(dim) for dim in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(
            f"--shape={text!r} must be comma-separated positive integers, e.g. 1,64,64,1."
        )
    return shape


def parse_levels(text: str) -> tuple[float, ...]:
    """Parses "0.1,0.5,0.9" into (0.1, 0.5, 0.9); anything but finite numbers is a ValueError."""
    try:
        levels = tuple(float(level) for level in text.split(","))
    except ValueError:
        levels = ()
    if not levels or not all(math.isfinite(level) for level in levels):
        raise ValueError(f"--levels={text!r} must be comma-separated numbers, e.g. 0.1,0.5,0.9.")
    return levels


def parse_margin(text: str) -> int | None:
    """Parses --margin: 'auto' is None (the measured receptive-field growth), else an int >= 0."""
    if text == "auto":
        return None
    if not text.isdigit():
        raise ValueError(f"--margin={text!r} must be 'auto' or an integer >= 0 (pixels).")
    return int(text)


def _format_std(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2e}"


def print_flatness(
    name: str,
    shape: tuple[int, ...] | None,
    levels: Sequence[float],
    margin: int | None,
    out: str,
) -> dict[str, flatness.LayerFlatness]:
    """Runs `flatness.flatness_profile` on block `name` (real init from `INIT_KEY_SEED`, its rng
    streams on fixed keys), prints the table and writes the PNG to `out`; returns the profile."""
    module, inputs, key, rngs = build_block(name, shape)
    variables = module.init({"params": key, **rngs}, jnp.zeros(inputs.shape, inputs.dtype))
    profile = flatness.flatness_profile(
        module, variables, inputs.shape, levels, margin, rngs, inputs.dtype
    )
    margin_rule = (
        f"{margin} px of every layer"
        if margin is not None
        else "auto, the receptive-field growth (reach of a one-pixel change at the centre, by "
        "JVP); * = a quarter of the shorter side (layers the change does not reach)"
    )
    print(
        f"# flatness of {name}: constant inputs {tuple(inputs.shape)} at levels "
        f"{', '.join(f'{level:g}' for level in levels)}; spatial std of each layer's output "
        "away from the border (max over samples and channels)"
    )
    print(f"# margin cropped on each side: {margin_rule}")
    header = ["layer", "shape", "margin", *(f"{level:g}" for level in levels), "max"]
    rows = [
        [
            layer,
            "x".join(map(str, entry.shape)),
            f"{entry.margin}{'*' if entry.margin_source == 'quarter' else ''}",
            *(_format_std(std) for std in entry.stds),
            _format_std(entry.max_std),
        ]
        for layer, entry in profile.items()
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    for row in [header, *rows]:
        cells = [cell.rjust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join([row[0].ljust(widths[0]), *cells[1:]]))
    path = flatness.save_flatness_plot(
        out, profile, levels, f"flatness of {name}, inputs {tuple(inputs.shape)}"
    )
    print(f"# wrote {path}")
    return profile


def build_block(
    name: str, shape: tuple[int, ...] | None = None
) -> tuple[nn.Module, jax.ShapeDtypeStruct, jax.Array, dict[str, jax.Array]]:
    """Block `name` for input `shape`: `(module, inputs, key, rngs)`, with `inputs` the example
    input as a `jax.ShapeDtypeStruct`, `key = jax.random.key(INIT_KEY_SEED)` (the 'params' key
    of init) and `rngs` the fixed keys `fold_in(key, i + 1)` of the rng streams apply needs."""
    module, example_input, rng_names = get_block(name)(shape)
    key = jax.random.key(INIT_KEY_SEED)
    inputs = jax.ShapeDtypeStruct(example_input.shape, example_input.dtype)
    rngs = {
        rng_name: jax.random.fold_in(key, index + 1) for index, rng_name in enumerate(rng_names)
    }
    return module, inputs, key, rngs


def block_apply(
    name: str, shape: tuple[int, ...] | None = None
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """Builds block `name` for input `shape` and returns `(apply, args)`, where
    `apply(variables, inputs, rngs)` is the block's pure apply and `args` its arguments as
    `jax.ShapeDtypeStruct`s: the variables are those `module.init` makes from
    `jax.random.key(INIT_KEY_SEED)`, evaluated abstractly (`jax.eval_shape`) because tracing and
    lowering need only their shapes, and a real init of a large model costs seconds and memory."""
    module, inputs, key, rngs = build_block(name, shape)
    variables = jax.eval_shape(module.init, {"params": key, **rngs}, inputs)

    def apply(variables: Any, inputs: jax.Array, rngs: dict[str, jax.Array]) -> Any:
        return module.apply(variables, inputs, rngs=rngs)

    return apply, (variables, inputs, rngs)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 for a bad argument, after one error line)."""
    parser = argparse.ArgumentParser(
        prog="python -m noise_research.inspect",
        description=(
            "Print the jaxpr (and with --hlo the StableHLO) of a registered block; with "
            "--flatness, probe its flatness degradation layer by layer instead."
        ),
    )
    parser.add_argument("block", nargs="?", help="a registered block name (see --list)")
    parser.add_argument("--shape", help="input shape, comma-separated, e.g. 1,64,64,1")
    parser.add_argument("--hlo", action="store_true", help="also print the lowered StableHLO")
    parser.add_argument("--list", action="store_true", help="list the registered blocks and exit")
    parser.add_argument(
        "--flatness",
        action="store_true",
        help=(
            "feed constant inputs at --levels and print, layer by layer, the spatial std of each "
            "(B, H, W, C) output away from the border (0: flat, as every layer of a plain CNN; a "
            "NIB first layer is not), and write a PNG to --out"
        ),
    )
    parser.add_argument(
        "--levels",
        default=",".join(f"{level:g}" for level in flatness.DEFAULT_LEVELS),
        help="--flatness: the constant input values, comma-separated (default %(default)s; "
        "raw values: the halftoning models read [-1, 1]; negative ones as --levels=-0.5,0.5)",
    )
    parser.add_argument(
        "--margin",
        default="auto",
        help="--flatness: pixels cropped on each side of every layer, or 'auto' (default): the "
        "measured receptive-field growth of each layer (a quarter of the shorter side where it "
        "cannot be measured); 0 keeps the border",
    )
    parser.add_argument(
        "--out", help="--flatness: the PNG to write (default flatness_<block>.png here)"
    )
    args = parser.parse_args(argv)

    if args.list:
        print("\n".join(block_names()))
        return 0
    if args.block is None:
        parser.error("give a block name, or --list to see them")
    try:
        shape = None if args.shape is None else parse_shape(args.shape)
        if args.flatness:
            levels, margin = parse_levels(args.levels), parse_margin(args.margin)
            out = args.out or f"flatness_{args.block}.png"
            print_flatness(args.block, shape, levels, margin, out)
            return 0
        apply, apply_args = block_apply(args.block, shape)
        jaxpr = jax.make_jaxpr(apply)(*apply_args)
        hlo = jax.jit(apply).lower(*apply_args).as_text() if args.hlo else None
    except (ValueError, AssertionError) as error:  # chex shape checks raise AssertionError
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    input_shape = apply_args[1].shape
    print(f"# jaxpr of {args.block} apply(variables, inputs, rngs), inputs {input_shape}")
    print(jaxpr)
    if hlo is not None:
        print(f"# StableHLO of {args.block} apply, inputs {input_shape}")
        print(hlo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
