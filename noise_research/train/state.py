"""The train state of single-optimizer tasks (halftoning, classification, autoencoders).

Tasks with several optimizers (a GAN's generator and discriminator, EMA weights) define their own
``flax.struct.dataclass`` with a ``step`` field; the loop only relies on ``state.step``.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import optax

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
