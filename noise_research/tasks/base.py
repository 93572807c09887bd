"""The contract between a task (halftoning, classification, GAN, ...) and the one train loop.

A task is a small object of pure functions over one state pytree. The loop never looks inside the
state except for ``state.step``: it places it on devices, gives it to orbax whole, calls the task.

* ``init(rng, example_batch) -> state``: everything that must survive a restart lives in ``state``
  (params, every optimizer state, BatchNorm statistics, stationary-noise keys, EMA params, step,
  the root PRNG key).
* ``train_step(state, batch, axis_name) -> (state, metrics)``: pure and jit-able. ``axis_name`` is
  ``None`` under the ``jit`` backend (the batch is one global array, reductions are global already)
  and the pmap axis name under ``pmap`` (the task then averages gradients, batch statistics and
  metrics with :func:`noise_research.train.parallel.cross_replica_mean`).
* ``eval_step(state, batch, axis_name) -> metrics``: means over the batch; with padded batches,
  means over the real examples plus their count as ``"weight"`` (the loop then weights batches).
* ``train_source(process_index, process_count)`` and ``eval_source(...)`` return step-indexed batch
  sources (:class:`noise_research.data.base.BatchSource`); ``num_eval_batches`` says how many
  eval batches make one evaluation.
* ``report(state, workdir, step) -> metrics``: host side pictures and tables (PNG, CSV, markdown).
* optionally ``run_mode(mode, state, workdir, step) -> metrics`` for evaluation modes other than
  training (``config.mode``, e.g. ``'robustness'``), run on the latest checkpoint.
* optionally ``warm_start(state) -> state``: called on the host once, on a fresh run's initial
  state (not on a resume), to replace parts of it, e.g. params from another run's checkpoint.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

from noise_research.data.base import BatchSource

PyTree = Any
Batch = dict[str, Any]
Metrics = dict[str, jax.Array]


class Task(Protocol):
    """What the train loop needs from a trainer; see the module docstring."""

    num_eval_batches: int

    def init(self, rng: jax.Array, example_batch: Batch) -> PyTree: ...

    def train_step(
        self, state: PyTree, batch: Batch, axis_name: str | None
    ) -> tuple[PyTree, Metrics]: ...

    def eval_step(self, state: PyTree, batch: Batch, axis_name: str | None) -> Metrics: ...

    def train_source(self, process_index: int, process_count: int) -> BatchSource: ...

    def eval_source(self, process_index: int, process_count: int) -> BatchSource: ...

    def report(self, state: PyTree, workdir: str, step: int) -> dict[str, float]: ...
