"""Data-parallel backends: ``jax.jit`` with ``NamedSharding`` (default) and ``jax.pmap``.

Both present the same interface to the loop, take this process's share of every global batch, and
keep checkpoints in one format (the state as one host-equivalent pytree), so a run may be resumed
under the other backend.

* :class:`JitBackend` — a 1-D mesh with axis ``'data'``; the state is replicated, the batch is split
  on its leading axis. Written for multi-host: each process passes only its local rows and
  :func:`jax.make_array_from_process_local_data` assembles the global array. The step sees the
  global batch, so means over the batch are already global (``axis_name=None``).
* :class:`PmapBackend` — the state is replicated along a leading device axis, the local batch is
  reshaped to ``(local_devices, per_device, ...)`` and the task averages gradients, batch statistics
  and metrics over ``axis_name='data'`` with :func:`cross_replica_mean`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
DATA_AXIS = "data"
BACKENDS = ("jit", "pmap")


def cross_replica_mean(tree: PyTree, axis_name: str | None) -> PyTree:
    """``lax.pmean`` over ``axis_name`` under pmap; the identity under jit (``axis_name=None``)."""
    if axis_name is None:
        return tree
    return jax.lax.pmean(tree, axis_name)


def cross_replica_sum(tree: PyTree, axis_name: str | None) -> PyTree:
    """``lax.psum`` over ``axis_name`` under pmap; the identity under jit (``axis_name=None``)."""
    if axis_name is None:
        return tree
    return jax.lax.psum(tree, axis_name)


class JitBackend:
    """``jax.jit`` over a ``('data',)`` mesh of every device of every process."""

    name = "jit"
    axis_name = None

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
        """The state as orbax saves it and as host-side reports read it."""
        return state

    def init(self, init_fn: Callable[..., PyTree], *args: Any) -> PyTree:
        return jax.jit(init_fn, out_shardings=self.replicated)(*args)

    def compile_train_step(self, train_step: Callable) -> Callable:
        step = functools.partial(train_step, axis_name=None)
        return jax.jit(
            step,
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=(0,),
        )

    def compile_eval_step(self, eval_step: Callable) -> Callable:
        step = functools.partial(eval_step, axis_name=None)
        return jax.jit(
            step,
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=self.replicated,
        )

    def host_metrics(self, metrics: PyTree) -> dict[str, float]:
        return {k: float(v) for k, v in jax.device_get(metrics).items()}


class PmapBackend:
    """``jax.pmap`` over this process's devices, with gradients averaged by the task."""

    name = "pmap"
    axis_name = DATA_AXIS

    def __init__(self, devices: list[jax.Device] | None = None):
        self.local_devices = list(devices or jax.local_devices())
        self.num_devices = jax.device_count() if devices is None else len(self.local_devices)
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
        """Device 0's copy (all copies are equal: every update is cross-replica averaged)."""
        return jax.tree.map(lambda leaf: leaf[0], state)

    def init(self, init_fn: Callable[..., PyTree], *args: Any) -> PyTree:
        return self.put_state(jax.jit(init_fn)(*args))

    def compile_train_step(self, train_step: Callable) -> Callable:
        step = functools.partial(train_step, axis_name=DATA_AXIS)
        return jax.pmap(step, axis_name=DATA_AXIS, devices=self.local_devices, donate_argnums=(0,))

    def compile_eval_step(self, eval_step: Callable) -> Callable:
        step = functools.partial(eval_step, axis_name=DATA_AXIS)
        return jax.pmap(step, axis_name=DATA_AXIS, devices=self.local_devices)

    def host_metrics(self, metrics: PyTree) -> dict[str, float]:
        return {k: float(v[0]) for k, v in jax.device_get(metrics).items()}


Backend = JitBackend | PmapBackend


def make_backend(name: str, devices: list[jax.Device] | None = None) -> Backend:
    """``'jit'`` (default) or ``'pmap'``; ``devices`` restricts the run (tests use it)."""
    if name == "jit":
        return JitBackend(devices)
    if name == "pmap":
        return PmapBackend(devices)
    raise ValueError(f"parallel backend {name!r} is unknown; allowed: {', '.join(BACKENDS)}")


def maybe_initialize_distributed(enabled: bool) -> None:
    """``jax.distributed.initialize()`` for multi-host launches (SLURM, TPU pods, ...).

    The cluster is auto-detected from the environment (``SLURM_*``, TPU metadata, or
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``).
    """
    if enabled:
        jax.distributed.initialize()
