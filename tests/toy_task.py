"""A tiny task for testing the train loop: an MLP with BatchNorm and optional dynamic noise.

Small enough that each loop test takes seconds, rich enough to exercise every piece of state a real
trainer carries: params, optimizer state, BatchNorm statistics (averaged across devices), a root
PRNG key, and step-indexed data.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from noise_research.train.parallel import cross_replica_mean
from noise_research.train.rng import step_rngs
from noise_research.train.state import TrainState

FEATURES = 6


class NoisyMLP(nn.Module):
    dynamic_noise: float = 0.0
    batch_norm_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.dynamic_noise and train:
            x = x + self.dynamic_noise * jax.random.normal(self.make_rng("noise"), x.shape)
        x = nn.Dense(16)(x)
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.batch_norm_axis_name)(x)
        return nn.Dense(1)(nn.relu(x))


@dataclasses.dataclass
class RegressionBatches:
    global_batch_size: int
    process_index: int = 0
    process_count: int = 1
    seed: int = 0
    sigterm_at_step: int | None = None

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if step == self.sigterm_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        rng = np.random.default_rng([self.seed, step])
        x = rng.normal(size=(self.global_batch_size, FEATURES)).astype(np.float32)
        y = np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)
        per_process = self.global_batch_size // self.process_count
        rows = slice(self.process_index * per_process, (self.process_index + 1) * per_process)
        return {"x": x[rows], "y": y[rows]}


class ToyTask:
    num_eval_batches = 2

    def __init__(self, batch_size: int = 16, dynamic_noise: float = 0.0, sigterm_at_step=None):
        self.batch_size = batch_size
        self.dynamic_noise = dynamic_noise
        self.sigterm_at_step = sigterm_at_step
        self.reports: list[int] = []

    def model(self, axis_name: str | None) -> NoisyMLP:
        return NoisyMLP(self.dynamic_noise, batch_norm_axis_name=axis_name)

    def train_source(self, process_index: int, process_count: int) -> RegressionBatches:
        return RegressionBatches(
            self.batch_size, process_index, process_count, sigterm_at_step=self.sigterm_at_step
        )

    def eval_source(self, process_index: int, process_count: int) -> RegressionBatches:
        return RegressionBatches(self.batch_size, process_index, process_count, seed=1)

    def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
        params_key, noise_key, state_key = jax.random.split(rng, 3)
        variables = self.model(None).init(
            {"params": params_key, "noise": noise_key}, jnp.asarray(example_batch["x"]), train=False
        )
        return TrainState.create(
            variables=variables, tx=optax.sgd(0.05, momentum=0.9), rng=state_key
        )

    def train_step(self, state: TrainState, batch: dict[str, jax.Array], axis_name: str | None):
        rngs = step_rngs(state.rng, state.step, ("noise",), axis_name)

        def loss_fn(params):
            prediction, updates = self.model(axis_name).apply(
                {"params": params, **state.model_state},
                batch["x"],
                train=True,
                rngs=rngs,
                mutable=["batch_stats"],
            )
            return jnp.mean((prediction - batch["y"]) ** 2), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = cross_replica_mean(grads, axis_name)
        metrics = cross_replica_mean({"loss": loss}, axis_name)
        return state.apply_gradients(grads, model_state={**state.model_state, **updates}), metrics

    def eval_step(self, state: TrainState, batch: dict[str, jax.Array], axis_name: str | None):
        prediction = self.model(axis_name).apply(state.variables, batch["x"], train=False)
        return cross_replica_mean({"mse": jnp.mean((prediction - batch["y"]) ** 2)}, axis_name)

    def report(self, state: TrainState, workdir: str, step: int) -> dict[str, float]:
        self.reports.append(step)
        return {"num_params": float(sum(np.size(p) for p in jax.tree.leaves(state.params)))}
