"""The one train loop: data, devices, jit, checkpoints, logging, evaluation cadence, preemption.

It knows nothing of any task: a task (see :mod:`noise_research.tasks.base`) supplies pure ``init``,
named step functions and the host-side rule that picks one per step, ``eval_step``, evaluators,
step-indexed batch sources and a host-side ``report``. Because batches are addressed by step and
every per-step key is ``fold_in(root, step)``, a run restored from the checkpoint at step ``s``
continues exactly as the uninterrupted run would have, on any backend and device count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from noise_research import config_schema as cs
from noise_research.data.base import BatchSource, worker_batches
from noise_research.tasks.base import Task
from noise_research.train.checkpoint import Checkpointer
from noise_research.train.distributed import on_every_process
from noise_research.train.metric_writer import MetricWriter
from noise_research.train.parallel import BACKENDS, make_backend
from noise_research.train.preemption import PreemptionGuard
from noise_research.train.workdir import (
    ON_CONFIG_CHANGE,
    WorkdirLock,
    config_change,
    describe_changes,
    record_config,
    refused_changes,
    set_aside,
    set_aside_run,
)

PyTree = Any
log = logging.getLogger(__name__)
WEIGHT_KEY = "weight"  # see average_metrics()
WINDOW_STEPS_KEY = "window_steps"  # how many steps a train record averages


class TrainingDiverged(RuntimeError):
    """The loss or the state stopped being finite; nothing was saved after the last good step."""


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
        resumable=True,
    )
    log_every: int = cs.setting(
        100, cs.integer(minimum=1), "steps between train-metric lines", resumable=True
    )
    eval_every: int = cs.setting(
        5_000, cs.integer(minimum=1), "steps between evaluations", resumable=True
    )
    report_every: int = cs.setting(
        0,
        cs.integer(minimum=0),
        "steps between pictures and tables; 0: only at the end",
        resumable=True,
    )
    final_report: bool = cs.setting(
        True,
        cs.boolean(),
        "pictures and tables when training ends (False: sweeps, tests)",
        resumable=True,
    )
    checkpoint_every: int = cs.setting(
        5_000,
        cs.integer(minimum=1),
        "steps between checkpoints (one is always saved at the end)",
        resumable=True,
    )
    keep_checkpoints: int = cs.setting(
        3, cs.integer(minimum=1), "newest checkpoints kept", resumable=True
    )
    async_checkpoints: bool = cs.setting(
        True, cs.boolean(), "write checkpoints while the next steps run", resumable=True
    )
    progress: bool = cs.setting(
        True, cs.boolean(), "a progress bar with steps/s and the loss", resumable=True
    )


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
    already_finished: bool = False  # the workdir's run had reached num_steps: nothing was done


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
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):  # nothing to read, and nothing is created
        return None
    example_batch = task.train_source(jax.process_index(), jax.process_count()).batch(0)
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(config.seed), example_batch)
    first_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=first_device), abstract
    )
    checkpointer = Checkpointer(
        directory,
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
    on_config_change: str = "refuse",
) -> LoopResult:
    """Trains ``task`` for ``config.num_steps`` steps in ``workdir``, resuming if it can.

    The chief process holds the workdir's lock for the whole run. A checkpointed run whose config
    differs from ``task.config`` in a key that is not free on resume (``Task.keys_free_on_resume``)
    is refused (ConfigError) unless ``on_config_change`` is ``'resume'`` (continue it with the new
    values) or ``'restart'`` (set it aside and start over). A run already at ``num_steps`` does
    nothing. A loss (at log steps) or a state (before each save) that is not finite raises
    :class:`TrainingDiverged` without saving, so the checkpoints kept are the good ones.
    """
    if on_config_change not in ON_CONFIG_CHANGE:
        raise ValueError(
            f"on_config_change must be one of {ON_CONFIG_CHANGE}, not {on_config_change!r}"
        )
    with _claim_workdir(workdir):
        return _train(task, config, workdir, devices, on_config_change)


@contextlib.contextmanager
def _claim_workdir(workdir: str) -> Iterator[None]:
    """Process 0 holds the workdir lock within the block; every process learns whether it could."""
    lock = WorkdirLock(workdir)

    def take() -> None:
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            lock.__enter__()

    try:
        on_every_process("take the workdir lock", take)
        yield
    finally:
        lock.__exit__(None, None, None)  # only if taken


@jax.jit
def _all_finite(tree: PyTree) -> jax.Array:
    finite = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(finite)) if finite else jnp.bool_(True)


def _train(
    task: Task,
    config: LoopConfig,
    workdir: str,
    devices: list[jax.Device] | None,
    on_config_change: str,
) -> LoopResult:
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
    run_config = json_config(task.config)

    if on_config_change == "restart":
        _restart_if_config_differs(task, workdir, run_config)
        on_config_change = "refuse"  # what is left is this config's run, or nothing
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=config.checkpoint_every,
        keep=config.keep_checkpoints,
        async_save=config.async_checkpoints,
    )
    try:  # until the loop's own try: a refused config, a bad metrics file
        state, resumed_from, changed = _restore_or_init(
            task, backend, checkpointer, workdir, on_config_change, root_rng, example_batch
        )
        start_step = resumed_from or 0
        if start_step >= config.num_steps:
            checkpointer.close()
            log.warning(
                "the run in %s is finished: its checkpoint is at step %d and train.num_steps = "
                "%d; nothing to train, nothing written",
                workdir,
                start_step,
                config.num_steps,
            )
            return LoopResult(
                state=to_numpy(backend.host_state(state)),
                step=start_step,
                train_metrics={},
                eval_metrics={},
                evaluations={},
                report_metrics={},
                preempted=False,
                resumed_from=resumed_from,
                already_finished=True,
            )
        train_steps = {
            kind: backend.compile_train_step(fn) for kind, fn in task.train_steps().items()
        }
        eval_step = backend.compile_eval_step(task.eval_step)
        accumulate = {
            name: backend.compile_accumulate(evaluator.update)
            for name, evaluator in evaluators.items()
        }

        def open_metrics() -> MetricWriter:
            writer = MetricWriter(workdir, resume_step=start_step)
            if is_chief:
                record_config(workdir, run_config, start_step, changed)
            return writer

        writer = on_every_process("open the workdir's metrics", open_metrics)
    except BaseException:
        checkpointer.close()
        raise

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

    def diverged(step: int, what: str) -> TrainingDiverged:
        checkpointer.wait()
        last_good = checkpointer.latest_step()
        kept = (
            f"the last good checkpoint is step {last_good} in {checkpointer.directory}"
            if last_good is not None
            else "no checkpoint was saved"
        )
        return TrainingDiverged(
            f"step {step}: {what} is not finite (NaN or inf), so training stopped without saving; "
            f"{kept} (lower optimizer.learning_rate, or check the data)"
        )

    def save(state: PyTree, step: int, *, force: bool) -> None:
        if not (force or checkpointer.due(step)):
            return
        host_state = backend.host_state(state)
        if not bool(_all_finite(host_state)):
            raise diverged(step, "the model state")
        meta = {
            "step": step,
            "data_position": step,
            "backend": backend.name,
            "config": run_config,
        }
        checkpointer.save(step, host_state, meta, force=force)

    step = start_step
    train_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    evaluations: dict[str, dict[str, float]] = {}
    report_metrics: dict[str, float] = {}
    history: list[PyTree] = []
    batches: Iterator[dict[str, np.ndarray]] = iter(())
    bar = tqdm(
        total=config.num_steps,
        initial=start_step,
        unit="step",
        disable=not (config.progress and is_chief),
        dynamic_ncols=True,
    )
    stop = False
    try:
        batches = host_batches(train_source, start_step, config.num_steps)
        last_log_time, last_log_step = time.perf_counter(), start_step
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
                    train_metrics[WINDOW_STEPS_KEY] = float(len(history))
                    history.clear()
                    now = time.perf_counter()
                    train_metrics["steps_per_second"] = (step - last_log_step) / (
                        now - last_log_time
                    )
                    last_log_time, last_log_step = now, step
                    writer.write(step, "train", train_metrics)
                    bar.set_postfix(_progress_postfix(train_metrics))
                    losses = _losses(train_metrics)  # the total first, if the task has one
                    for name, value in sorted(losses.items(), key=lambda kv: kv[0] != "loss"):
                        if not math.isfinite(value):
                            raise diverged(step, f"the train {name} ({value})")
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


def _restart_if_config_differs(task: Task, workdir: str, run_config: dict[str, Any]) -> None:
    """``--on_config_change=restart``: sets the run in ``workdir`` aside when its newest checkpoint
    has a config this run may not resume, so a requeued or repeated command with the flag resumes
    the run it started instead of starting over again."""
    peek = Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=1, keep=1, async_save=False
    )
    try:
        meta = peek.newest_meta()
    finally:
        peek.close()
    if meta is None or "config" not in meta:
        return
    changed = cs.differences(meta["config"], run_config)
    if not refused_changes(
        meta["config"], changed, task.keys_free_on_resume(), task.config_defaults()
    ):
        return

    def set_aside_earlier_run() -> None:
        if jax.process_index() == 0:
            moved = set_aside_run(workdir)
            log.warning(
                "the run in %s had another config (%s): set aside in %s; starting over",
                workdir,
                describe_changes(changed),
                moved,
            )

    on_every_process("set the earlier run aside", set_aside_earlier_run)


def _restore_or_init(
    task: Task,
    backend: Any,
    checkpointer: Checkpointer,
    workdir: str,
    on_config_change: str,
    root_rng: jax.Array,
    example_batch: dict[str, np.ndarray],
) -> tuple[PyTree, int | None, list[tuple[str, Any, Any]]]:
    """``(state, step resumed from or None, config keys changed since the checkpoint)``.

    Refuses a checkpointed run of another config (:func:`train.workdir.config_change`), sets the
    checkpoints that fail to restore aside, and says in one line when it starts afresh. A
    checkpoint of a changed config (``on_config_change='resume'``) that does not restore into this
    model is not damaged: that stops the run (ConfigError) and nothing is set aside.
    """
    is_chief = jax.process_index() == 0
    run_config = json_config(task.config)
    changed: list[tuple[str, Any, Any]] = []

    def check_config(meta: dict[str, Any]) -> str | None:
        nonlocal changed
        if "config" not in meta:
            return None
        changed = config_change(
            meta["config"],
            run_config,
            task.keys_free_on_resume(),
            task.config_defaults(),
            workdir=workdir,
            step=int(meta["step"]),
            on_config_change=on_config_change,
        )
        if not changed:
            return None
        return (
            f"its config differs from this run's ({describe_changes(changed)}), a change a "
            "resume cannot take; use a new --workdir or --on_config_change=restart"
        )

    abstract_state = backend.abstract_state(jax.eval_shape(task.init, root_rng, example_batch))
    restored = on_every_process(
        "read the checkpoints",
        lambda: checkpointer.restore_latest(abstract_state, check_config),
    )

    def set_damaged_aside() -> None:
        if is_chief:
            for step in checkpointer.damaged:
                where = set_aside(workdir, [checkpointer.step_path(step)], f"damaged-step{step}")
                log.warning("the damaged checkpoint of step %d is kept in %s", step, where)

    on_every_process("set damaged checkpoints aside", set_damaged_aside)
    checkpointer.reload()
    if restored is not None:
        restored_state, meta = restored
        step = int(meta["data_position"])
        if changed:
            log.warning(
                "resuming with a changed config (recorded in config_changes.jsonl): %s",
                describe_changes(changed),
            )
        log.info("resumed from the checkpoint at step %d in %s", step, checkpointer.directory)
        return backend.put_state(restored_state), step, changed
    if checkpointer.damaged:
        log.warning(
            "no checkpoint in %s restores (%d damaged, set aside): starting afresh at step 0",
            checkpointer.directory,
            len(checkpointer.damaged),
        )
    else:
        log.info("starting a new run in %s", workdir)
    state = backend.init(task.init, root_rng, example_batch)
    return backend.put_state(task.warm_start(to_numpy(backend.host_state(state)))), None, []


def _pick(train_steps: dict[str, Any], kind: str, step: int) -> Any:
    if kind not in train_steps:
        raise ValueError(
            f"step_kind({step}) = {kind!r} is not one of the task's step kinds: "
            f"{', '.join(train_steps)}"
        )
    return train_steps[kind]


def _losses(metrics: dict[str, float]) -> dict[str, float]:
    """The ``loss`` and every ``*_loss`` (a multi-kind task's) of a record."""
    return {k: v for k, v in metrics.items() if k == "loss" or k.endswith("_loss")}


def _progress_postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The loss (or each ``*loss`` of a multi-kind task) for the progress bar."""
    losses = _losses(metrics)
    shown = {"loss": losses["loss"]} if "loss" in losses else losses
    return {name: f"{value:.4f}" for name, value in list(shown.items())[:3]}


def json_config(config: Any) -> Any:
    """The experiment config as plain JSON values (mappings, ``ConfigDict`` included, as dicts;
    tuples as lists), as saved with checkpoints."""

    def plain(value: Any) -> Any:
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        if isinstance(value, Mapping):
            return {str(key): plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    return json.loads(json.dumps(plain(config), default=str))
