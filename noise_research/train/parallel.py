"""Data-parallel backends (``jax.jit`` with ``NamedSharding``, ``jax.pmap``), the parallel context a
step receives, and the batch helpers that give the same numbers under both.

Both backends present the same interface to the loop, take this process's share of every global
batch, and keep checkpoints in one format (the state as one host-equivalent pytree), so a run may be
resumed under the other backend or on another number of devices.

* :class:`JitBackend` — a 1-D mesh with axis ``'data'`` over every device of every process; the
  state is replicated, the batch is split on its leading axis. Each process passes only its local
  rows and :func:`jax.make_array_from_process_local_data` assembles the global array. The step sees
  the global batch: one shard, ``parallel.axis_name is None``.
* :class:`PmapBackend` — the state is replicated along a leading device axis, the local batch is
  reshaped to ``(local_devices, per_device, ...)``; the step sees one device's rows and reduces over
  ``parallel.axis_name`` (across processes too: pmap's axis spans every device of the job).

A step never branches on the backend itself: it calls :func:`cross_replica_mean` on gradients and
per-shard means, :func:`global_mean` / :func:`roll_batch` on activations, and passes
``parallel.axis_name`` to layers that take one (``flax.linen.BatchNorm``). Under ``jit`` these are
plain array operations on the global batch; under ``pmap`` collectives over the device axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
DATA_AXIS = "data"
BACKENDS = ("jit", "pmap")


@dataclasses.dataclass(frozen=True)
class ParallelContext:
    """Where a step runs: static, so a compiled step closes over it.

    Attributes:
      axis_name: the device axis to reduce over (``'data'`` under pmap); None under jit, where the
        step's arrays are the global batch and reductions over rows are global already.
      num_shards: how many pieces the step's batch is one of: 1 under jit (it holds every row), the
        number of devices under pmap.
      num_devices: devices the global batch is split over (both backends); per-device semantics
        (:func:`roll_batch` with ``per_device=True``) depends on it.
    """

    axis_name: str | None = None
    num_shards: int = 1
    num_devices: int = 1

    def shard_index(self) -> jax.Array:
        """This shard's index in ``[0, num_shards)``: ``lax.axis_index`` under pmap, 0 under jit."""
        if self.axis_name is None:
            return jnp.zeros((), jnp.int32)
        return jax.lax.axis_index(self.axis_name)


SINGLE_DEVICE = ParallelContext()
"""The context of a plain (unsharded) call: tests, reports, benchmarks."""


def cross_replica_mean(tree: PyTree, parallel: ParallelContext) -> PyTree:
    """The mean over shards of per-shard values (gradients, per-shard metric means).

    ``lax.pmean`` under pmap; the identity under jit, whose step already sees the global batch.
    Every shard holds the same number of rows, so the mean of shard means is the global mean.
    """
    if parallel.axis_name is None:
        return tree
    return jax.lax.pmean(tree, parallel.axis_name)


def cross_replica_sum(tree: PyTree, parallel: ParallelContext) -> PyTree:
    """The sum over shards of per-shard values (counts, sums of an evaluator's statistics)."""
    if parallel.axis_name is None:
        return tree
    return jax.lax.psum(tree, parallel.axis_name)


def global_mean(x: jax.Array, parallel: ParallelContext) -> jax.Array:
    """The mean over the rows (leading axis) of the global batch, e.g. a batch statistic."""
    return cross_replica_mean(jnp.mean(x, axis=0), parallel)


def roll_batch(
    x: jax.Array, shift: int, parallel: ParallelContext, *, per_device: bool = False
) -> jax.Array:
    """``jnp.roll(x, shift, axis=0)`` over the rows of the **global** batch, on any backend.

    Row ``i`` of the result is global row ``i − shift`` (cyclically): with ``shift=1`` it is
    ``x_{i−1}``, the positive-noise paper's shift. Under jit this is ``jnp.roll`` on the global
    array; under pmap each device receives the rows it needs from its neighbours with
    ``lax.ppermute``, so both give bit-identical results for any device count.

    ``per_device=True`` rolls within each device's rows instead (the batch is cut into
    ``parallel.num_devices`` contiguous pieces, each rolled on its own): the result then depends on
    the device count. Both backends give the same numbers for the same device count.
    """
    if per_device:
        if parallel.axis_name is not None:
            return jnp.roll(x, shift, axis=0)
        pieces = x.reshape(parallel.num_devices, -1, *x.shape[1:])
        return jnp.roll(pieces, shift, axis=1).reshape(x.shape)
    if parallel.axis_name is None:
        return jnp.roll(x, shift, axis=0)
    rows, devices = x.shape[0], parallel.num_shards
    device_hops, row_shift = divmod(shift % (rows * devices), rows)

    def from_device_behind(hops: int) -> jax.Array:
        if hops % devices == 0:
            return x
        pairs = [(source, (source + hops) % devices) for source in range(devices)]
        return jax.lax.ppermute(x, parallel.axis_name, pairs)

    near = from_device_behind(device_hops)
    if row_shift == 0:
        return near
    far = from_device_behind(device_hops + 1)
    return jnp.concatenate([far[rows - row_shift :], near[: rows - row_shift]], axis=0)


class JitBackend:
    """``jax.jit`` over a ``('data',)`` mesh of every device of every process."""

    name = "jit"

    def __init__(self, devices: list[jax.Device] | None = None):
        devices = list(devices or jax.devices())
        self.num_devices = len(devices)
        self.mesh = jax.make_mesh(
            (self.num_devices,),
            (DATA_AXIS,),
            axis_types=(jax.sharding.AxisType.Auto,),
            devices=devices,
        )
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
        self.parallel = ParallelContext(None, 1, self.num_devices)

    def put_state(self, state: PyTree) -> PyTree:
        return jax.device_put(state, self.replicated)

    def abstract_state(self, abstract: PyTree) -> PyTree:
        """Attaches the replicated sharding to a ``jax.eval_shape`` result (for restores)."""
        return jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=self.replicated),
            abstract,
        )

    def put_batch(self, local_batch: PyTree) -> PyTree:
        return jax.tree.map(
            lambda rows: jax.make_array_from_process_local_data(self.batch_sharding, rows),
            local_batch,
        )

    def host_state(self, state: PyTree) -> PyTree:
        """The state as orbax saves it (global arrays: orbax coordinates the processes)."""
        return state

    def init(self, init_fn: Callable[..., PyTree], *args: Any) -> PyTree:
        return jax.jit(init_fn, out_shardings=self.replicated)(*args)

    def compile_train_step(self, train_step: Callable) -> Callable:
        """``(state, batch) -> (state, metrics)``; compiles on its first call."""
        return jax.jit(
            functools.partial(train_step, parallel=self.parallel),
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=(0,),
        )

    def compile_eval_step(self, eval_step: Callable) -> Callable:
        """``(state, batch) -> metrics``."""
        return jax.jit(
            functools.partial(eval_step, parallel=self.parallel),
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=self.replicated,
        )

    def compile_accumulate(self, update: Callable) -> Callable:
        """An evaluator's ``(state, accumulator, batch) -> accumulator``, accumulator donated."""
        return jax.jit(
            functools.partial(update, parallel=self.parallel),
            in_shardings=(self.replicated, self.replicated, self.batch_sharding),
            out_shardings=self.replicated,
            donate_argnums=(1,),
        )

    def host_metrics(self, metrics: PyTree) -> dict[str, float]:
        return {k: float(v.addressable_data(0)) for k, v in metrics.items()}


class PmapBackend:
    """``jax.pmap`` over every device of the job (each process drives its local ones)."""

    name = "pmap"

    def __init__(self, devices: list[jax.Device] | None = None):
        # Explicit devices (one process: tests, benchmarks) restrict the run; by default pmap spans
        # every device of every process, so its collectives are global.
        self.pmap_devices = list(devices) if devices is not None else None
        self.local_devices = (
            [d for d in devices if d.process_index == jax.process_index()]
            if devices is not None
            else jax.local_devices()
        )
        self.num_devices = len(devices) if devices is not None else jax.device_count()
        self.parallel = ParallelContext(DATA_AXIS, self.num_devices, self.num_devices)
        # The leading (device) axis of pmap's inputs, laid out as pmap expects it.
        self.device_axis = NamedSharding(
            jax.sharding.Mesh(np.array(self.local_devices), (DATA_AXIS,)), P(DATA_AXIS)
        )

    def _put_per_device(self, per_device: np.ndarray) -> jax.Array:
        return jax.device_put(per_device, self.device_axis)

    def put_state(self, state: PyTree) -> PyTree:
        num_local = len(self.local_devices)
        return jax.tree.map(
            lambda leaf: self._put_per_device(np.stack([np.asarray(leaf)] * num_local)), state
        )

    def abstract_state(self, abstract: PyTree) -> PyTree:
        """Restores land on the first local device; :meth:`put_state` then replicates them."""
        first_device = jax.sharding.SingleDeviceSharding(self.local_devices[0])
        return jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=first_device),
            abstract,
        )

    def put_batch(self, local_batch: PyTree) -> PyTree:
        num_local = len(self.local_devices)

        def split(rows: np.ndarray) -> jax.Array:
            if rows.shape[0] % num_local:
                raise ValueError(
                    f"the local batch of {rows.shape[0]} rows does not split over "
                    f"{num_local} local devices"
                )
            per_device = rows.reshape(num_local, rows.shape[0] // num_local, *rows.shape[1:])
            return self._put_per_device(per_device)

        return jax.tree.map(split, local_batch)

    def host_state(self, state: PyTree) -> PyTree:
        """The first local device's copy (all copies are equal: updates are cross-replica)."""
        return jax.tree.map(_first_local_copy, state)

    def init(self, init_fn: Callable[..., PyTree], *args: Any) -> PyTree:
        return self.put_state(jax.device_get(jax.jit(init_fn)(*args)))

    def _pmap(self, fn: Callable, **kwargs: Any) -> Callable:
        return jax.pmap(
            functools.partial(fn, parallel=self.parallel),
            axis_name=DATA_AXIS,
            devices=self.pmap_devices,
            **kwargs,
        )

    def compile_train_step(self, train_step: Callable) -> Callable:
        return self._pmap(train_step, donate_argnums=(0,))

    def compile_eval_step(self, eval_step: Callable) -> Callable:
        return self._pmap(eval_step)

    def compile_accumulate(self, update: Callable) -> Callable:
        return self._pmap(update, donate_argnums=(1,))

    def host_metrics(self, metrics: PyTree) -> dict[str, float]:
        return {k: float(_first_local_copy(v)) for k, v in metrics.items()}


def _first_local_copy(leaf: jax.Array) -> np.ndarray:
    """The value on the first local device of a pmap output (its shard keeps the device axis)."""
    return np.asarray(leaf.addressable_data(0))[0]


Backend = JitBackend | PmapBackend


def make_backend(name: str, devices: list[jax.Device] | None = None) -> Backend:
    """``'jit'`` (default) or ``'pmap'``; ``devices`` restricts the run (tests use it)."""
    if name == "jit":
        return JitBackend(devices)
    if name == "pmap":
        return PmapBackend(devices)
    raise ValueError(f"parallel backend {name!r} is unknown; allowed: {', '.join(BACKENDS)}")
