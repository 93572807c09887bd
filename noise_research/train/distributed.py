"""Joining the processes of a multi-process run (one per host, or several on one machine)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np

from noise_research.config_schema import ConfigError

T = TypeVar("T")

LOCAL_LAUNCH_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
"""Set by ``launch/local.sh`` for N processes on one machine; elsewhere (SLURM, Cloud TPU, Open MPI)
``jax.distributed.initialize`` finds the cluster by itself."""


def initialize_distributed() -> None:
    """``jax.distributed.initialize`` with the coordinator, process count and index from
    :data:`LOCAL_LAUNCH_VARIABLES` when all are set, else auto-detected.

    CPU devices use gloo for their cross-process collectives (the CPU client has none otherwise);
    the setting does not touch GPU or TPU devices. Call before any other JAX computation.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if all(os.environ.get(name) for name in LOCAL_LAUNCH_VARIABLES):
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()


def on_every_process(what: str, step: Callable[[], T]) -> T:
    """Runs ``step`` in every process and raises in every process if it raised in any.

    A step that fails in one process only (process 0 writing the workdir, a file only it reads)
    must stop every process: the others would otherwise go on into a collective the failed one
    never joins, and wait there forever. The failed process raises its own error; the others a
    ConfigError naming it. One all-gather of a flag per call (none with one process).
    """
    result, problem = None, None
    try:
        result = step()
    except Exception as error:
        problem = error
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        failed = np.asarray(multihost_utils.process_allgather(np.int32(problem is not None)))
        if problem is None and failed.any():
            first = int(np.flatnonzero(failed)[0])
            problem = ConfigError(f"process {first} could not {what} (its log says why)")
    if problem is not None:
        raise problem
    return result
