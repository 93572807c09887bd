"""Tiny tasks for testing the train loop.

``ToyTask``: an MLP with BatchNorm, optional per-example dynamic noise and an optional layer that
mixes each example with its predecessor in the global batch (the positive-noise roll). Small enough
that each loop test takes seconds, rich enough to exercise every piece of state a real trainer
carries: params, optimizer state, BatchNorm statistics, a root PRNG key, step-indexed data.

``TwoPlayerTask``: two parameter sets with two optimizers and three step kinds, as a GAN has
(a critic step, the critic step with a lazy regularizer every ``REGULARIZER_EVERY`` steps, a
generator step), and an evaluator that accumulates a mean and covariance over the eval set.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from noise_research.layers.noise_maps import per_example
from noise_research.tasks.base import Evaluator, Task
from noise_research.train.parallel import (
    ParallelContext,
    cross_replica_mean,
    cross_replica_sum,
    roll_batch,
)
from noise_research.train.rng import step_rngs
from noise_research.train.state import TrainState, apply_mean_gradients, init_train_state

FEATURES = 6
MIXING_STRENGTH = 0.4


class NoisyMLP(nn.Module):
    dynamic_noise: float = 0.0
    mix_batch: bool = False
    parallel: ParallelContext = ParallelContext()
    width: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, train: bool) -> jax.Array:
        if self.dynamic_noise and train:
            noise = per_example(
                self.make_rng("noise"), positions, lambda key: jax.random.normal(key, x.shape[1:])
            )
            x = x + self.dynamic_noise * noise
        x = nn.Dense(self.width)(x)
        if self.mix_batch:  # x_i + α(x_{i−1} − x_i) over the global batch
            x = x + MIXING_STRENGTH * (roll_batch(x, 1, self.parallel) - x)
            self.sow("intermediates", "mixed", x)
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.parallel.axis_name)(x)
        return nn.Dense(1)(nn.relu(x))


@dataclasses.dataclass
class RegressionBatches:
    """``y = sin(Σx)``; with ``num_examples`` a finite eval set walked in batches, padded."""

    global_batch_size: int
    process_index: int = 0
    process_count: int = 1
    seed: int = 0
    sigterm_at_step: int | None = None
    num_examples: int | None = None

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if step == self.sigterm_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        per_process = self.global_batch_size // self.process_count
        first = step * self.global_batch_size + self.process_index * per_process
        positions = np.arange(first, first + per_process)
        rows = np.stack([np.random.default_rng([self.seed, p]).normal(size=FEATURES) for p in (
            positions if self.num_examples is None else positions % self.num_examples
        )]).astype(np.float32)  # fmt: skip
        batch = {
            "x": rows,
            "y": np.sin(rows.sum(axis=1, keepdims=True)).astype(np.float32),
            "position": positions.astype(np.int32),
        }
        if self.num_examples is not None:
            batch["mask"] = (positions < self.num_examples).astype(np.float32)
        return batch


class ToyTask(Task):
    num_eval_batches = 2

    def __init__(
        self,
        batch_size: int = 16,
        dynamic_noise: float = 0.0,
        sigterm_at_step: int | None = None,
        mix_batch: bool = False,
        learning_rate: float | optax.Schedule = 0.05,
        width: int = 16,
    ):
        self.width = width
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.dynamic_noise = dynamic_noise
        self.sigterm_at_step = sigterm_at_step
        self.mix_batch = mix_batch
        self.reports: list[int] = []

    def model(self, parallel: ParallelContext) -> NoisyMLP:
        return NoisyMLP(self.dynamic_noise, self.mix_batch, parallel, self.width)

    def train_source(self, process_index: int, process_count: int) -> RegressionBatches:
        return RegressionBatches(
            self.batch_size, process_index, process_count, sigterm_at_step=self.sigterm_at_step
        )

    def eval_source(self, process_index: int, process_count: int) -> RegressionBatches:
        return RegressionBatches(self.batch_size, process_index, process_count, seed=1)

    def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
        x = jnp.asarray(example_batch["x"])
        return init_train_state(
            self.model(ParallelContext()),
            rng,
            x,
            optax.sgd(self.learning_rate, momentum=0.9),
            positions=jnp.asarray(example_batch["position"]),
            train=False,
        )

    def train_step(self, state: TrainState, batch: dict[str, jax.Array], parallel):
        rngs = step_rngs(state.rng, state.step, ("noise",))

        def loss_fn(params):
            prediction, updates = self.model(parallel).apply(
                {"params": params, **state.model_state},
                batch["x"],
                batch["position"],
                train=True,
                rngs=rngs,
                mutable=["batch_stats", "intermediates"],
            )
            updates = {k: v for k, v in updates.items() if k == "batch_stats"}
            return jnp.mean((prediction - batch["y"]) ** 2), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        model_state = {**state.model_state, **updates}
        return apply_mean_gradients(state, grads, {"loss": loss}, parallel, model_state=model_state)

    def eval_step(self, state: TrainState, batch: dict[str, jax.Array], parallel):
        prediction = self.model(parallel).apply(
            state.variables, batch["x"], batch["position"], train=False
        )
        return cross_replica_mean({"mse": jnp.mean((prediction - batch["y"]) ** 2)}, parallel)

    def report(self, state: TrainState, workdir: str, step: int) -> dict[str, float]:
        self.reports.append(step)
        return {"num_params": float(sum(np.size(p) for p in jax.tree.leaves(state.params)))}


@flax.struct.dataclass
class TwoPlayerState:
    step: jax.Array
    generator: Any
    critic: Any
    generator_opt: Any
    critic_opt: Any
    rng: jax.Array


REGULARIZER_EVERY = 4
EVAL_EXAMPLES = 20  # in batches of 8: the third batch has 4 padding rows


class TwoPlayerTask(Task):
    """Critic ``c(x) = w·x``, generator ``g(z) = A z + b``; even steps train the critic (every
    ``REGULARIZER_EVERY``-th with an extra penalty ‖w‖², a lazy regularizer), odd steps the
    generator. Every kind counts its traces in ``traces`` (each must compile once)."""

    num_eval_batches = 1

    def __init__(self, batch_size: int = 8):
        self.batch_size = batch_size
        self.generator_tx = optax.adam(1e-2)
        self.critic_tx = optax.sgd(1e-2, momentum=0.5)
        self.traces: dict[str, int] = {}

    def train_source(self, process_index: int, process_count: int) -> RegressionBatches:
        return RegressionBatches(self.batch_size, process_index, process_count)

    def eval_source(self, process_index: int, process_count: int) -> RegressionBatches:
        return RegressionBatches(self.batch_size, process_index, process_count, seed=1)

    def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TwoPlayerState:
        generator_key, critic_key, root_key = jax.random.split(rng, 3)
        generator = {
            "A": 0.1 * jax.random.normal(generator_key, (FEATURES, FEATURES)),
            "b": jnp.zeros(FEATURES),
        }
        critic = {"w": 0.1 * jax.random.normal(critic_key, (FEATURES,))}
        return TwoPlayerState(
            step=jnp.zeros((), jnp.int32),
            generator=generator,
            critic=critic,
            generator_opt=self.generator_tx.init(generator),
            critic_opt=self.critic_tx.init(critic),
            rng=root_key,
        )

    def _fake(self, state: TwoPlayerState, batch, kind: str) -> jax.Array:
        key = step_rngs(state.rng, state.step, ("latent",), kind=kind)["latent"]
        z = per_example(key, batch["position"], lambda k: jax.random.normal(k, (FEATURES,)))
        return z @ state.generator["A"].T + state.generator["b"]

    def _critic_step(self, kind: str, regularize: bool):
        def step(state: TwoPlayerState, batch, parallel):
            self.traces[kind] = self.traces.get(kind, 0) + 1
            fake = self._fake(state, batch, kind)

            def loss_fn(critic):
                score = lambda x: x @ critic["w"]
                loss = jnp.mean(score(fake)) - jnp.mean(score(batch["x"]))
                metrics = {"critic_loss": loss}
                if regularize:
                    penalty = jnp.sum(critic["w"] ** 2)
                    metrics["regularizer_penalty"] = penalty
                    loss = loss + REGULARIZER_EVERY * penalty
                return loss, metrics

            grads, metrics = jax.grad(loss_fn, has_aux=True)(state.critic)
            grads = cross_replica_mean(grads, parallel)
            updates, critic_opt = self.critic_tx.update(grads, state.critic_opt, state.critic)
            metrics = cross_replica_mean(metrics, parallel)
            new_state = state.replace(
                step=state.step + 1,
                critic=optax.apply_updates(state.critic, updates),
                critic_opt=critic_opt,
            )
            return new_state, metrics

        return step

    def _generator_step(self, state: TwoPlayerState, batch, parallel):
        self.traces["generator"] = self.traces.get("generator", 0) + 1

        def loss_fn(generator):
            fake = self._fake(state.replace(generator=generator), batch, "generator")
            loss = -jnp.mean(fake @ state.critic["w"]) + 0.1 * jnp.mean(fake**2)
            return loss, {"generator_loss": loss}

        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.generator)
        grads = cross_replica_mean(grads, parallel)
        metrics = cross_replica_mean(metrics, parallel)
        updates, generator_opt = self.generator_tx.update(
            grads, state.generator_opt, state.generator
        )
        new_state = state.replace(
            step=state.step + 1,
            generator=optax.apply_updates(state.generator, updates),
            generator_opt=generator_opt,
        )
        return new_state, metrics

    def train_steps(self):
        return {
            "critic": self._critic_step("critic", regularize=False),
            "critic_regularized": self._critic_step("critic_regularized", regularize=True),
            "generator": self._generator_step,
        }

    def step_kind(self, step: int) -> str:
        if step % 2:
            return "generator"
        return "critic_regularized" if step % REGULARIZER_EVERY == 0 else "critic"

    def eval_step(self, state, batch, parallel):
        return {"critic_norm": jnp.sum(state.critic["w"] ** 2)}

    def features(self, state: TwoPlayerState, x: jax.Array) -> jax.Array:
        """What the evaluator summarises: the generator's map of the eval inputs."""
        return x @ state.generator["A"].T + state.generator["b"]

    def evaluators(self) -> dict[str, Evaluator]:
        def init():
            return {
                "count": np.zeros((), np.float32),
                "sum": np.zeros(FEATURES, np.float32),
                "outer": np.zeros((FEATURES, FEATURES), np.float32),
            }

        def update(state, accumulator, batch, parallel):
            features = self.features(state, batch["x"]) * batch["mask"][:, None]
            contribution = {
                "count": jnp.sum(batch["mask"]),
                "sum": jnp.sum(features, axis=0),
                "outer": features.T @ features,
            }
            contribution = cross_replica_sum(contribution, parallel)
            return jax.tree.map(jnp.add, accumulator, contribution)

        def finalize(accumulator):
            count = float(accumulator["count"])
            mean = accumulator["sum"] / count
            covariance = (accumulator["outer"] - count * np.outer(mean, mean)) / (count - 1)
            return {
                "count": count,
                **{f"mean_{i}": float(v) for i, v in enumerate(mean)},
                **{f"cov_{i}_{j}": float(covariance[i, j]) for i in range(3) for j in range(3)},
            }

        return {
            "feature_moments": Evaluator(
                source=lambda index, count: RegressionBatches(
                    8, index, count, seed=2, num_examples=EVAL_EXAMPLES
                ),
                num_batches=3,
                init=init,
                update=update,
                finalize=finalize,
                every=4,
            )
        }
