"""Timing helpers shared by the benchmarks: median wall time of a blocking call, a task's train
step throughput, device facts."""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

from noise_research.train.parallel import SINGLE_DEVICE


def median_seconds(fn: Callable[[], Any], *, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def interleaved_median_seconds(
    fns: Mapping[str, Callable[[], Any]], *, warmup: int, repeats: int
) -> dict[str, float]:
    """Median wall time of each ``fns[name]()`` (each must block until its result is ready),
    timed in rounds that call every function once, in order: a machine whose load changes during
    the measurement (a shared CPU) slows them all alike, so their ratios stay fair."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def train_images_per_second(
    task: Any, host_batch: dict[str, Any], *, images_per_step: int, repeats: int
) -> dict[str, float]:
    """Median step time, images per step and images/s of ``task.train_step`` (jitted, one device,
    state donated) on one fixed batch that puts ``images_per_step`` images through the network."""
    device_batch = jax.device_put(host_batch)
    state = jax.jit(task.init)(jax.random.PRNGKey(0), host_batch)
    step = jax.jit(functools.partial(task.train_step, parallel=SINGLE_DEVICE), donate_argnums=(0,))
    holder = {"state": state}

    def one_step() -> None:
        holder["state"], metrics = step(holder["state"], device_batch)
        jax.block_until_ready(metrics)

    seconds = median_seconds(one_step, warmup=3, repeats=repeats)
    return {
        "step_seconds": seconds,
        "images_per_step": images_per_step,
        "images_per_second": images_per_step / seconds,
    }


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
    }


def write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")
