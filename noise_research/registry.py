"""A registry of inspectable blocks: `python -m noise_research.inspect <block>` builds any of them.

Each layer family registers its blocks in its own module when that module is imported
(DESIGN.md: "Inspectable: any block's jaxpr can be printed from the command line").

A factory takes the input shape (None for the block's default) and returns
`(module, example_input, rng_names)`: the linen module, an example input (an array or a
`jax.ShapeDtypeStruct`) and the names of the rng streams that `module.apply` needs besides the
variables (e.g. `("noise",)` for a block with dynamic noise; init always uses `"params"`).
"""

from collections.abc import Callable

import flax.linen as nn
import jax

BlockFactory = Callable[
    [tuple[int, ...] | None],
    tuple[nn.Module, jax.ShapeDtypeStruct | jax.Array, tuple[str, ...]],
]

_BLOCK_FACTORIES: dict[str, BlockFactory] = {}


def register_block(name: str, factory: BlockFactory) -> None:
    """Registers `factory` under `name`; a name can be registered only once."""
    if name in _BLOCK_FACTORIES:
        raise ValueError(f"block name={name!r} is already registered; pick another name.")
    _BLOCK_FACTORIES[name] = factory


def get_block(name: str) -> BlockFactory:
    """Returns the factory registered under `name`; unknown names list the known ones."""
    if name not in _BLOCK_FACTORIES:
        raise ValueError(f"unknown block {name!r}; known blocks: {', '.join(block_names())}.")
    return _BLOCK_FACTORIES[name]


def block_names() -> tuple[str, ...]:
    """The registered block names, sorted."""
    return tuple(sorted(_BLOCK_FACTORIES))
