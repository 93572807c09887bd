"""The one train loop: data, devices, jit, checkpoints, logging, evaluation cadence, preemption.

It knows nothing of any task: a task (see :mod:`noise_research.tasks.base`) supplies pure ``init``,
named step functions and the host-side rule that picks one per step, ``eval_step``, evaluators,
step-indexed batch sources and a host-side ``report``. Because batches are addressed by step and
every per-step key is ``fold_in(root, step)``, a run restored from the checkpoint at step ``s``
continues exactly as the uninterrupted run would have, on any backend and device count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from noise_research import config_schema as cs
from noise_research.data.base import BatchSource, worker_batches
from noise_research.tasks.base import Task
from noise_research.train.checkpoint import Checkpointer
from noise_research.train.metric_writer import MetricWriter
from noise_research.train.parallel import BACKENDS, make_backend
from noise_research.train.preemption import PreemptionGuard

PyTree = Any
log = logging.getLogger(__name__)
WEIGHT_KEY = "weight"  # see average_metrics()


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The loop's settings: the ``train`` section of every experiment config."""

    num_steps: int = cs.setting(100_000, cs.integer(minimum=1), "optimizer steps of the whole run")
    seed: int = cs.setting(
        0, cs.integer(minimum=0), "root of every random draw: init, noise, augmentation order"
    )
    parallel: str = cs.setting(
        "jit",
        cs.one_of(*BACKENDS),
        "'jit' (NamedSharding on a 'data' mesh axis) or 'pmap'; both give the same run",
    )
    log_every: int = cs.setting(100, cs.integer(minimum=1), "steps between train-metric lines")
    eval_every: int = cs.setting(5_000, cs.integer(minimum=1), "steps between evaluations")
    report_every: int = cs.setting(
        0, cs.integer(minimum=0), "steps between pictures and tables; 0: only at the end"
    )
    final_report: bool = cs.setting(
        True, cs.boolean(), "pictures and tables when training ends (False: sweeps, tests)"
    )
    checkpoint_every: int = cs.setting(
        5_000, cs.integer(minimum=1), "steps between checkpoints (one is always saved at the end)"
    )
    keep_checkpoints: int = cs.setting(3, cs.integer(minimum=1), "newest checkpoints kept")
    async_checkpoints: bool = cs.setting(
        True, cs.boolean(), "write checkpoints while the next steps run"
    )
    progress: bool = cs.setting(True, cs.boolean(), "a progress bar with steps/s and the loss")


@dataclasses.dataclass
class LoopResult:
    state: PyTree  # host-equivalent final state (numpy leaves)
    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    evaluations: dict[str, dict[str, float]]  # each evaluator's last result
    report_metrics: dict[str, float]
    preempted: bool
    resumed_from: int | None


def host_batches(source: BatchSource, start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
    """``source.batch(start), source.batch(start + 1), …``: from the source's own parallel pipeline
    when it has one (``iterate``), else built ahead on a background thread."""
    if hasattr(source, "iterate"):
        return source.iterate(start)
    return worker_batches(source.batch, range(start, stop), num_workers=0)


def to_numpy(state: PyTree) -> PyTree:
    """A host copy of a (possibly sharded, possibly multi-host) replicated state."""

    def fetch(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array):
            return np.asarray(leaf.addressable_data(0))
        return leaf

    return jax.tree.map(fetch, state)


def average_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the steps or eval batches that returned it, weighted by a record's
    ``"weight"`` metric when present.

    A step kind may return metrics the others do not (a GAN's R1 penalty only on its lazy steps):
    each is averaged over its own records. A task whose batches carry padding (an eval set that does
    not divide into whole batches) returns means over its real examples plus their number as
    ``"weight"``; the loop then averages exactly, and the result's ``"weight"`` is their total.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in history:
        weight = float(record.get(WEIGHT_KEY, 1.0))
        for name, value in record.items():
            if name != WEIGHT_KEY:
                sums[name] = sums.get(name, 0.0) + weight * float(value)
                weights[name] = weights.get(name, 0.0) + weight
    means = {name: sums[name] / weights[name] for name in sums if weights[name] > 0}
    if any(WEIGHT_KEY in record for record in history):
        means[WEIGHT_KEY] = float(sum(r[WEIGHT_KEY] for r in history if WEIGHT_KEY in r))
    return means


def restore_state(task: Task, config: LoopConfig, workdir: str) -> tuple[PyTree, int] | None:
    """The newest good checkpoint of ``workdir`` on this process's first device, with its step.

    For evaluation modes (e.g. a robustness report) and for fine-tuning from another run; None
    when ``workdir`` holds no checkpoint.
    """
    example_batch = task.train_source(jax.process_index(), jax.process_count()).batch(0)
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(config.seed), example_batch)
    first_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=first_device), abstract
    )
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=config.checkpoint_every,
        keep=config.keep_checkpoints,
        async_save=False,
    )
    try:
        restored = checkpointer.restore_latest(abstract)
    finally:
        checkpointer.close()
    if restored is None:
        return None
    state, meta = restored
    return state, int(meta["step"])


def train(
    task: Task,
    config: LoopConfig,
    workdir: str,
    *,
    devices: list[jax.Device] | None = None,
) -> LoopResult:
    """Trains ``task`` for ``config.num_steps`` steps in ``workdir``, resuming if it can."""
    backend = make_backend(config.parallel, devices)
    process_index, process_count = jax.process_index(), jax.process_count()
    is_chief = process_index == 0
    train_source = task.train_source(process_index, process_count)
    eval_source = task.eval_source(process_index, process_count)
    evaluators = task.evaluators()
    evaluator_sources = {
        name: evaluator.source(process_index, process_count)
        for name, evaluator in evaluators.items()
    }
    root_rng = jax.random.PRNGKey(config.seed)
    example_batch = train_source.batch(0)

    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=config.checkpoint_every,
        keep=config.keep_checkpoints,
        async_save=config.async_checkpoints,
    )
    abstract_state = backend.abstract_state(jax.eval_shape(task.init, root_rng, example_batch))
    restored = checkpointer.restore_latest(abstract_state)
    if restored is None:
        state = backend.init(task.init, root_rng, example_batch)
        state = backend.put_state(task.warm_start(to_numpy(backend.host_state(state))))
        start_step, resumed_from = 0, None
    else:
        restored_state, meta = restored
        state = backend.put_state(restored_state)
        start_step = resumed_from = int(meta["data_position"])
        log.info("resumed from the checkpoint at step %d in %s", start_step, checkpointer.directory)

    train_steps = {kind: backend.compile_train_step(fn) for kind, fn in task.train_steps().items()}
    eval_step = backend.compile_eval_step(task.eval_step)
    accumulate = {
        name: backend.compile_accumulate(evaluator.update) for name, evaluator in evaluators.items()
    }
    writer = MetricWriter(workdir, resume_step=start_step)

    def evaluate(state: PyTree) -> dict[str, float]:
        per_batch = [
            backend.host_metrics(eval_step(state, backend.put_batch(eval_source.batch(i))))
            for i in range(task.num_eval_batches)
        ]
        return average_metrics(per_batch)

    def run_evaluator(name: str, state: PyTree, step: int) -> dict[str, float]:
        evaluator, source = evaluators[name], evaluator_sources[name]
        accumulator = backend.put_state(evaluator.init())
        for i in range(evaluator.num_batches):
            accumulator = accumulate[name](state, accumulator, backend.put_batch(source.batch(i)))
        result = evaluator.finalize(to_numpy(backend.host_state(accumulator)))
        writer.write(step, name, result)
        return result

    def save(state: PyTree, step: int, *, force: bool) -> None:
        meta = {
            "step": step,
            "data_position": step,
            "backend": backend.name,
            "config": json_config(task.config),
        }
        checkpointer.save(step, backend.host_state(state), meta, force=force)

    step = start_step
    train_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    evaluations: dict[str, dict[str, float]] = {}
    report_metrics: dict[str, float] = {}
    history: list[PyTree] = []
    # A finished run (resumed at its last step) starts no input workers.
    batches = (
        host_batches(train_source, start_step, config.num_steps)
        if step < config.num_steps
        else iter(())
    )
    last_log_time, last_log_step = time.perf_counter(), start_step
    bar = tqdm(
        total=config.num_steps,
        initial=start_step,
        unit="step",
        disable=not (config.progress and is_chief),
        dynamic_ncols=True,
    )
    stop = False
    try:
        with PreemptionGuard() as guard:
            while step < config.num_steps and not stop:
                kind = task.step_kind(step)
                step_fn = _pick(train_steps, kind, step)
                state, metrics = step_fn(state, backend.put_batch(next(batches)))
                history.append(metrics)
                step += 1
                bar.update(1)
                if step % config.log_every == 0 or step == config.num_steps:
                    train_metrics = average_metrics([backend.host_metrics(m) for m in history])
                    history.clear()
                    now = time.perf_counter()
                    train_metrics["steps_per_second"] = (step - last_log_step) / (
                        now - last_log_time
                    )
                    last_log_time, last_log_step = now, step
                    writer.write(step, "train", train_metrics)
                    bar.set_postfix(_progress_postfix(train_metrics))
                if step < config.num_steps:
                    if step % config.eval_every == 0:
                        eval_metrics = evaluate(state)
                        writer.write(step, "eval", eval_metrics)
                    for name, evaluator in evaluators.items():
                        if evaluator.every and step % evaluator.every == 0:
                            evaluations[name] = run_evaluator(name, state, step)
                if config.report_every and step % config.report_every == 0 and is_chief:
                    host_state = to_numpy(backend.host_state(state))
                    writer.write(step, "report", task.report(host_state, workdir, step))
                stop = guard.should_stop(step)  # every process agrees on the step to stop at
                save(state, step, force=stop)
            preempted = stop and step < config.num_steps
        if preempted:
            log.warning(
                "stopped at step %d by %s; checkpoint saved in %s — run the same command to resume",
                step,
                guard.signal_name,
                checkpointer.directory,
            )
        else:
            if checkpointer.latest_step() != step:
                save(state, step, force=True)
            eval_metrics = evaluate(state)
            writer.write(step, "eval", eval_metrics)
            for name in evaluators:
                evaluations[name] = run_evaluator(name, state, step)
            if is_chief and config.final_report:
                host_state = to_numpy(backend.host_state(state))
                report_metrics = task.report(host_state, workdir, step)
                writer.write(step, "report", report_metrics)
    finally:
        bar.close()
        if hasattr(batches, "close"):
            batches.close()
        checkpointer.wait()
        checkpointer.close()
        writer.close()
    return LoopResult(
        state=to_numpy(backend.host_state(state)),
        step=step,
        train_metrics=train_metrics,
        eval_metrics=eval_metrics,
        evaluations=evaluations,
        report_metrics=report_metrics,
        preempted=preempted,
        resumed_from=resumed_from,
    )


def _pick(train_steps: dict[str, Any], kind: str, step: int) -> Any:
    if kind not in train_steps:
        raise ValueError(
            f"step_kind({step}) = {kind!r} is not one of the task's step kinds: "
            f"{', '.join(train_steps)}"
        )
    return train_steps[kind]


def _progress_postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The loss (or each ``*loss`` of a multi-kind task) for the progress bar."""
    losses = {k: v for k, v in metrics.items() if k == "loss" or k.endswith("_loss")}
    shown = {"loss": losses["loss"]} if "loss" in losses else losses
    return {name: f"{value:.4f}" for name, value in list(shown.items())[:3]}


def json_config(config: Any) -> Any:
    """The experiment config as plain JSON values (tuples as lists), as saved with checkpoints."""
    return json.loads(json.dumps(dict(config), default=str))
