"""Timing helpers shared by the benchmarks: median wall time of a blocking call, device facts."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import jax


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
