"""Joining the processes of a multi-process run (one per host, or several on one machine)."""

from __future__ import annotations

import os

import jax

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
