"""The contract between a task (halftoning, classification, GAN, ...) and the one train loop.

A task is a small object of pure functions over one state pytree. The loop never looks inside the
state: it places it on devices, gives it to orbax whole, calls the task. Subclass :class:`Task`.

* ``init(rng, example_batch) -> state``: everything that must survive a restart lives in ``state``
  (params, every optimizer state, BatchNorm statistics, stationary-noise keys, EMA params, step,
  the root PRNG key).
* ``train_steps() -> {kind: step}``: the named step functions, each ``step(state, batch, parallel)
  -> (state, metrics)``, pure and jit-able, compiled once each. A single-kind task defines
  ``train_step`` and inherits ``train_steps``; a GAN declares e.g. ``'discriminator'``,
  ``'discriminator_r1'``, ``'generator'``, ``'generator_path_length'`` and the host-side rule
  ``step_kind(step) -> kind`` that picks one per loop step (lazy regularizers run as separate
  compiled functions, not as branches compiled into every step). Batches stay indexed by the loop
  step whatever the kind, so resume is exact in the middle of any cycle.
* ``parallel`` (:class:`noise_research.train.parallel.ParallelContext`) says how the step's batch
  relates to the global one; steps reduce with its helpers (``cross_replica_mean``,
  ``global_mean``, ``roll_batch``) and pass ``parallel.axis_name`` to BatchNorm, so a run gives
  the same numbers under ``jit`` and ``pmap`` on any number of devices.
* Every batch carries each row's global position (``"position"``, and for a second group of rows
  its own key, e.g. the halftoner's ``"constant_position"``); dynamic noise is drawn per row from
  ``fold_in(step key, position)`` (:mod:`noise_research.train.rng`).
* ``eval_step(state, batch, parallel) -> metrics``: means over the batch; with padded batches,
  means over the real examples plus their count as ``"weight"`` (the loop then weights batches).
* ``evaluators() -> {name: Evaluator}``: statistics that are not per-batch means (FID, condition
  numbers, an audit): accumulated on device over many batches, finalized once on the host, each
  with its own cadence.
* ``train_source(process_index, process_count)`` and ``eval_source(...)`` return step-indexed batch
  sources (:class:`noise_research.data.base.BatchSource`); ``num_eval_batches`` says how many
  eval batches make one evaluation.
* ``report(state, workdir, step) -> metrics``: host side pictures and tables (PNG, CSV, markdown).
* ``run_mode(mode, state, workdir, step) -> metrics`` for evaluation modes other than training
  (``config.mode``, e.g. ``'robustness'``), run on the latest checkpoint.
* ``warm_start(state) -> state``: called on the host once, on a fresh run's initial state (not on a
  resume), to replace parts of it, e.g. params from another run's checkpoint.
* ``config``: the experiment config (JSON-serialisable); the loop saves it with every checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

from noise_research.config_schema import ConfigError
from noise_research.data.base import BatchSource
from noise_research.train.parallel import ParallelContext

PyTree = Any
Batch = dict[str, Any]
Metrics = dict[str, jax.Array]
TrainStep = Callable[[PyTree, Batch, ParallelContext], tuple[PyTree, Metrics]]


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """A statistic over many batches: accumulated on device, finalized once on the host.

    Attributes:
      source: ``(process_index, process_count) -> BatchSource``; batches ``0 … num_batches − 1``
        make one evaluation (padding rows carry ``"mask"`` 0 and must not count).
      num_batches: batches per evaluation.
      init: ``() -> accumulator``, the empty accumulator (a pytree of host arrays).
      update: ``(state, accumulator, batch, parallel) -> accumulator``, pure and jit-able; the
        accumulator is replicated, so a step adds ``cross_replica_sum`` of its shard's
        contribution (the identity under jit, whose step sees the global batch).
      finalize: ``accumulator -> {name: value}`` on the host (numpy leaves).
      every: run every this many steps; 0: only when training ends (it always runs then).
    """

    source: Callable[[int, int], BatchSource]
    num_batches: int
    init: Callable[[], PyTree]
    update: Callable[[PyTree, PyTree, Batch, ParallelContext], PyTree]
    finalize: Callable[[PyTree], dict[str, float]]
    every: int = 0


class Task:
    """What the train loop needs from a trainer; see the module docstring."""

    config: Mapping[str, Any] = {}
    sections: Mapping[str, Any] = {}  # the task module's SECTIONS: what config's keys mean
    num_eval_batches: int = 0

    def init(self, rng: jax.Array, example_batch: Batch) -> PyTree:
        raise NotImplementedError

    def train_step(
        self, state: PyTree, batch: Batch, parallel: ParallelContext
    ) -> tuple[PyTree, Metrics]:
        """The step of a single-kind task (``train_steps`` names it ``'train'``)."""
        raise NotImplementedError

    def train_steps(self) -> dict[str, TrainStep]:
        """The named step functions; the loop compiles each once."""
        return {"train": self.train_step}

    def step_kind(self, step: int) -> str:
        """The kind of step ``step`` runs (host side, a pure function of the step)."""
        kinds = list(self.train_steps())
        if len(kinds) != 1:
            raise NotImplementedError(f"a task with step kinds {kinds} must define step_kind")
        return kinds[0]

    def eval_step(self, state: PyTree, batch: Batch, parallel: ParallelContext) -> Metrics:
        raise NotImplementedError

    def evaluators(self) -> dict[str, Evaluator]:
        return {}

    def train_source(self, process_index: int, process_count: int) -> BatchSource:
        raise NotImplementedError

    def eval_source(self, process_index: int, process_count: int) -> BatchSource:
        raise NotImplementedError

    def report(self, state: PyTree, workdir: str, step: int) -> dict[str, float]:
        return {}

    def warm_start(self, state: PyTree) -> PyTree:
        return state

    def keys_free_on_resume(self) -> set[str]:
        """Config keys whose value may differ from the checkpointed run's when it resumes.

        The keys declared ``resumable`` in the loop's ``train`` section and the task's
        ``sections`` (cadences, progress, evaluation-only settings), ``mode``, and
        ``train.num_steps`` when the task declares its optimizer sections and no learning-rate
        schedule of them depends on it (a constant rate: training longer is the same run,
        extended). A task that declares no sections gets the loop's keys only.
        """
        from noise_research.config_schema import read_section, resumable_keys
        from noise_research.train.loop import LoopConfig
        from noise_research.train.optim import OptimizerConfig, schedule_depends_on_num_steps

        keys = resumable_keys({"train": LoopConfig, **self.sections}) | {"mode"}
        schedules = [
            read_section(OptimizerConfig, self.config[name])
            for name, section in self.sections.items()
            if section is OptimizerConfig or isinstance(section, OptimizerConfig)
        ]
        if schedules and not any(map(schedule_depends_on_num_steps, schedules)):
            keys.add("train.num_steps")
        return keys

    def config_defaults(self) -> dict[str, Any]:
        """Every declared key's default (``section.key``): a key that an older checkpoint's config
        lacks may take its default on resume."""
        from noise_research.config_schema import default_values

        return default_values(self.sections)

    def run_mode(self, mode: str, state: PyTree, workdir: str, step: int) -> dict[str, float]:
        raise ConfigError(f"config.mode = {mode!r}: this task has no evaluation modes")
