"""Print the jaxpr (and optionally the StableHLO) of any registered block's apply.

    python -m noise_research.inspect <block> [--shape 1,64,64,1] [--hlo]
    python -m noise_research.inspect --list

DESIGN.md: "Inspectable: any block's jaxpr can be printed from the command line". The block's
variables are initialised with the fixed key `jax.random.key(0)`; the printed function is
`apply(variables, inputs, rngs)`, so params, 'noise_keys' and the 'noise' rng key (for blocks with
dynamic noise) appear as its inputs. Importing `noise_research.layers` and `noise_research.models`
registers the blocks.
"""

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax

import noise_research.layers
import noise_research.models  # noqa: F401  (registers the halftoning models)
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


def block_apply(
    name: str, shape: tuple[int, ...] | None = None
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """Builds block `name` for input `shape` and returns `(apply, args)`, where
    `apply(variables, inputs, rngs)` is the block's pure apply and `args` its arguments as
    `jax.ShapeDtypeStruct`s: the variables are those `module.init` makes from
    `jax.random.key(INIT_KEY_SEED)`, evaluated abstractly (`jax.eval_shape`) because tracing and
    lowering need only their shapes, and a real init of a large model costs seconds and memory."""
    module, example_input, rng_names = get_block(name)(shape)
    key = jax.random.key(INIT_KEY_SEED)
    inputs = jax.ShapeDtypeStruct(example_input.shape, example_input.dtype)
    rngs = {
        rng_name: jax.random.fold_in(key, index + 1) for index, rng_name in enumerate(rng_names)
    }
    variables = jax.eval_shape(module.init, {"params": key, **rngs}, inputs)

    def apply(variables: Any, inputs: jax.Array, rngs: dict[str, jax.Array]) -> Any:
        return module.apply(variables, inputs, rngs=rngs)

    return apply, (variables, inputs, rngs)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 for a bad argument, after one error line)."""
    parser = argparse.ArgumentParser(
        prog="python -m noise_research.inspect",
        description="Print the jaxpr (and with --hlo the StableHLO) of a registered block.",
    )
    parser.add_argument("block", nargs="?", help="a registered block name (see --list)")
    parser.add_argument("--shape", help="input shape, comma-separated, e.g. 1,64,64,1")
    parser.add_argument("--hlo", action="store_true", help="also print the lowered StableHLO")
    parser.add_argument("--list", action="store_true", help="list the registered blocks and exit")
    args = parser.parse_args(argv)

    if args.list:
        print("\n".join(block_names()))
        return 0
    if args.block is None:
        parser.error("give a block name, or --list to see them")
    try:
        shape = None if args.shape is None else parse_shape(args.shape)
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
