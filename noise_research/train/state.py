"""The train state of single-optimizer tasks (halftoning, classification, autoencoders).

Tasks with several optimizers (a GAN's generator and discriminator, EMA weights) define their own
``flax.struct.dataclass`` with a ``step`` field; the loop only relies on ``state.step``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import optax

from noise_research.train.parallel import ParallelContext, cross_replica_mean

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a single-optimizer run needs to continue bit-for-bit after a restart.

    Attributes:
      step: number of optimizer updates done (int32 scalar).
      params: the trainable ``'params'`` collection.
      model_state: every other variable collection (``'batch_stats'``, ``'noise_keys'`` holding
        stationary-noise keys, ...), carried unchanged unless the model mutates it.
      opt_state: the optax state.
      rng: the root PRNG key as raw ``uint32[2]`` key data; per-step keys are
        ``fold_in(rng, step)`` (see :func:`noise_research.train.rng.step_rngs`).
      tx: the optax transformation (static, not saved).
    """

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    rng: jax.Array
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(
        cls,
        *,
        variables: PyTree,
        tx: optax.GradientTransformation,
        rng: jax.Array,
    ) -> TrainState:
        """Splits ``variables`` into params and the other collections and initialises ``tx``."""
        variables = dict(variables)
        params = variables.pop("params")
        return cls(
            step=jax.numpy.zeros((), jax.numpy.int32),
            params=params,
            model_state=variables,
            opt_state=tx.init(params),
            rng=rng,
            tx=tx,
        )

    def apply_gradients(self, grads: PyTree, **changes: Any) -> TrainState:
        """One optimizer update; ``changes`` replaces other fields (e.g. new ``model_state``)."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)

    @property
    def variables(self) -> PyTree:
        """All variable collections, as ``module.apply`` takes them."""
        return {"params": self.params, **self.model_state}


def init_train_state(
    model: nn.Module,
    rng: jax.Array,
    example_input: jax.Array,
    tx: optax.GradientTransformation,
    *,
    transient_collections: Sequence[str] = (),
    **init_kwargs: Any,
) -> TrainState:
    """``model.init`` on one example and the optimizer state: a fresh single-optimizer run.

    ``rng`` is split into the init's ``'params'`` and ``'noise'`` keys and the state's root key.
    Collections a forward pass recreates on every call (sown penalties, intermediates) are
    ``transient_collections``: they are not state.
    """
    params_key, noise_key, root_key = jax.random.split(rng, 3)
    variables = model.init({"params": params_key, "noise": noise_key}, example_input, **init_kwargs)
    variables = {k: v for k, v in variables.items() if k not in transient_collections}
    return TrainState.create(variables=variables, tx=tx, rng=root_key)


def apply_mean_gradients(
    state: TrainState,
    grads: PyTree,
    metrics: Mapping[str, jax.Array],
    parallel: ParallelContext,
    **changes: Any,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """The tail of a step: gradients and metrics averaged over the shards, one optimizer update."""
    grads = cross_replica_mean(grads, parallel)
    return state.apply_gradients(grads, **changes), cross_replica_mean(dict(metrics), parallel)
