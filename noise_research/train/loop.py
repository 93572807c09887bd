"""The one train loop: data, devices, jit, checkpoints, logging, evaluation cadence, preemption.

It knows nothing of any task: a task (see :mod:`noise_research.tasks.base`) supplies pure ``init``,
``train_step`` and ``eval_step``, step-indexed batch sources and a host-side ``report``. Because
batches are addressed by step and every per-step key is ``fold_in(root, step)``, a run restored
from the checkpoint at step ``s`` continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from noise_research import config_schema as cs
from noise_research.data.base import BatchSource
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
    """The loop's settings (``config.train`` in the experiment configs)."""

    num_steps: int
    seed: int = 0
    parallel: str = "jit"
    log_every: int = 50
    eval_every: int = 500
    report_every: int = 0  # 0: pictures and tables only at the end
    final_report: bool = True  # False: no pictures at the end either (sweeps, tests)
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    progress: bool = True


def loop_config_rules() -> dict[str, cs.Rule]:
    """The rules of the ``train.*`` keys (:class:`LoopConfig`), shared by every task's config."""
    rules = {
        "num_steps": cs.integer(minimum=1),
        "seed": cs.integer(minimum=0),
        "parallel": cs.one_of(*BACKENDS),
        "log_every": cs.integer(minimum=1),
        "eval_every": cs.integer(minimum=1),
        "report_every": cs.integer(minimum=0),
        "final_report": cs.boolean(),
        "checkpoint_every": cs.integer(minimum=1),
        "keep_checkpoints": cs.integer(minimum=1),
        "async_checkpoints": cs.boolean(),
        "progress": cs.boolean(),
    }
    assert set(rules) == {field.name for field in dataclasses.fields(LoopConfig)}
    return {f"train.{key}": rule for key, rule in rules.items()}


@dataclasses.dataclass
class LoopResult:
    state: PyTree  # host-equivalent final state (numpy leaves)
    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    report_metrics: dict[str, float]
    preempted: bool
    resumed_from: int | None


class _Prefetcher:
    """Builds the host batches of the next steps on a background thread."""

    def __init__(self, source: BatchSource, start: int, stop: int, depth: int = 2):
        self._source = source
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._futures = {
            step: self._pool.submit(source.batch, step)
            for step in range(start, min(stop, start + depth))
        }
        self._stop = stop
        self._depth = depth

    def get(self, step: int) -> dict[str, np.ndarray]:
        future = self._futures.pop(step, None) or self._pool.submit(self._source.batch, step)
        ahead = step + self._depth
        if ahead < self._stop and ahead not in self._futures:
            self._futures[ahead] = self._pool.submit(self._source.batch, ahead)
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def to_numpy(state: PyTree) -> PyTree:
    """A host copy of a (possibly sharded, possibly multi-host) replicated state."""

    def fetch(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array):
            return np.asarray(leaf.addressable_data(0))
        return leaf

    return jax.tree.map(fetch, state)


def average_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Mean over steps or eval batches, weighted by a batch's ``"weight"`` metric when present.

    A task whose batches carry padding (an eval set that does not divide into whole batches) returns
    means over its real examples plus their number as ``"weight"``; the loop then averages exactly.
    """
    weights = np.array([m.get(WEIGHT_KEY, 1.0) for m in history], dtype=np.float64)
    means = {
        name: float(np.dot(weights, [m[name] for m in history]) / weights.sum())
        for name in history[0]
        if name != WEIGHT_KEY
    }
    if WEIGHT_KEY in history[0]:
        means[WEIGHT_KEY] = float(weights.sum())
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
        if hasattr(task, "warm_start"):  # e.g. fine-tuning: params from another run
            state = backend.put_state(task.warm_start(to_numpy(backend.host_state(state))))
        start_step, resumed_from = 0, None
    else:
        restored_state, meta = restored
        state = backend.put_state(restored_state)
        start_step = resumed_from = int(meta["data_position"])
        log.info("resumed from the checkpoint at step %d in %s", start_step, checkpointer.directory)

    train_step = backend.compile_train_step(task.train_step)
    eval_step = backend.compile_eval_step(task.eval_step)
    writer = MetricWriter(workdir, resume_step=start_step)

    def evaluate(state: PyTree) -> dict[str, float]:
        per_batch = [
            backend.host_metrics(eval_step(state, backend.put_batch(eval_source.batch(i))))
            for i in range(task.num_eval_batches)
        ]
        return average_metrics(per_batch)

    def save(state: PyTree, step: int, *, force: bool) -> None:
        meta = {"step": step, "data_position": step, "backend": backend.name}
        checkpointer.save(step, backend.host_state(state), meta, force=force)

    step = start_step
    train_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    report_metrics: dict[str, float] = {}
    history: list[PyTree] = []
    prefetcher = _Prefetcher(train_source, start_step, config.num_steps)
    last_log_time, last_log_step = time.perf_counter(), start_step
    bar = tqdm(
        total=config.num_steps,
        initial=start_step,
        unit="step",
        disable=not (config.progress and is_chief),
        dynamic_ncols=True,
    )
    try:
        with PreemptionGuard() as guard:
            while step < config.num_steps and not guard.stop_requested:
                batch = backend.put_batch(prefetcher.get(step))
                state, metrics = train_step(state, batch)
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
                    bar.set_postfix(loss=f"{train_metrics.get('loss', float('nan')):.4f}")
                if step % config.eval_every == 0 and step < config.num_steps:
                    eval_metrics = evaluate(state)
                    writer.write(step, "eval", eval_metrics)
                if config.report_every and step % config.report_every == 0 and is_chief:
                    host_state = to_numpy(backend.host_state(state))
                    writer.write(step, "report", task.report(host_state, workdir, step))
                save(state, step, force=guard.stop_requested)
            preempted = guard.stop_requested and step < config.num_steps
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
            if is_chief and config.final_report:
                host_state = to_numpy(backend.host_state(state))
                report_metrics = task.report(host_state, workdir, step)
                writer.write(step, "report", report_metrics)
    finally:
        bar.close()
        prefetcher.close()
        checkpointer.wait()
        checkpointer.close()
        writer.close()
    return LoopResult(
        state=to_numpy(backend.host_state(state)),
        step=step,
        train_metrics=train_metrics,
        eval_metrics=eval_metrics,
        report_metrics=report_metrics,
        preempted=preempted,
        resumed_from=resumed_from,
    )
