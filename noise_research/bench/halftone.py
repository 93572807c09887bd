"""Halftoning: train images/s, plain vs NIB (ResNet, U-Net); 1024² inference vs Floyd–Steinberg.

One training step is the full halftoning step (forward, straight-through binarization, tone /
quantization / blue-noise losses, backward, Adam) on ``batch`` images: ``batch/2`` comic crops plus
``batch/2`` constant-gray images, so ``images/s = batch / step time`` counts every image that goes
through the network, as the PyTorch peer (``shared/bench/peer_torch_halftone.py``) does. On an
accelerator the defaults are the paper's (width 64, 256², batch 8 and 32); on CPU they shrink so the
benchmark takes a few minutes; every setting is written to the JSON.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from noise_research.bench.timing import (
    environment,
    median_seconds,
    train_images_per_second,
    write_json,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench_results/halftone.json")
    parser.add_argument(
        "--batch-sizes", default=None, help="comma separated; default 8,32 (CPU: 2,4)"
    )
    parser.add_argument("--size", type=int, default=None, help="crop side; default 256 (CPU: 64)")
    parser.add_argument("--width", type=int, default=None, help="channels; default 64 (CPU: 16)")
    parser.add_argument("--models", default="resnet,unet")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed steps; default 30 (CPU: 5)"
    )
    parser.add_argument("--inference-size", type=int, default=1024)


def _task(model: str, first_layer: str, batch: int, size: int, width: int, dtype: str):
    from noise_research.tasks import halftone

    config = halftone.experiment_config(model=model, first_layer=first_layer).to_dict()
    config["data"].update(crop_size=size, batch_size=batch // 2, constant_batch_size=batch // 2)
    config["model"].update(width=width, dtype=dtype)
    return halftone.build(config)


def _inference_ms(task, size: int, repeats: int) -> float:
    state = jax.jit(task.init)(jax.random.PRNGKey(0), task.train_source(0, 1).batch(0))
    image = (
        jnp.zeros((1, size, size, 1), jnp.float32) + jnp.linspace(-1, 1, size)[None, None, :, None]
    )
    forward = jax.jit(
        lambda variables, x: task.model.apply(variables, x, rngs={"noise": state.rng})
    )
    seconds = median_seconds(
        lambda: jax.block_until_ready(forward(state.variables, image)),
        warmup=2,
        repeats=repeats,
    )
    return 1e3 * seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    from noise_research.classical import floyd_steinberg

    on_cpu = jax.devices()[0].platform == "cpu"
    batch_sizes = [int(b) for b in (args.batch_sizes or ("2,4" if on_cpu else "8,32")).split(",")]
    size = args.size or (64 if on_cpu else 256)
    width = args.width or (16 if on_cpu else 64)
    repeats = args.repeats or (5 if on_cpu else 30)
    models = args.models.split(",")
    settings = dict(
        batch_sizes=batch_sizes,
        size=size,
        width=width,
        dtype=args.dtype,
        repeats=repeats,
        models=models,
        inference_size=args.inference_size,
    )
    print(f"halftone benchmark on {environment()['device_kind']}: {settings}")

    train_rows, inference_rows = [], []
    for model in models:
        for batch in batch_sizes:
            measured = {}
            for first_layer in ("conv", "nib"):
                task = _task(model, first_layer, batch, size, width, args.dtype)
                measured[first_layer] = train_images_per_second(
                    task,
                    task.train_source(0, 1).batch(0),
                    images_per_step=batch,
                    repeats=repeats,
                )
                train_rows.append(
                    {
                        "model": model,
                        "first_layer": first_layer,
                        "batch": batch,
                        **measured[first_layer],
                    }
                )
                print(train_rows[-1], flush=True)
            train_rows[-1]["nib_overhead_percent"] = 100.0 * (
                measured["conv"]["images_per_second"] / measured["nib"]["images_per_second"] - 1.0
            )
        for first_layer in ("conv", "nib"):
            task = _task(model, first_layer, 2, size, width, args.dtype)
            inference_rows.append(
                {
                    "method": f"{first_layer}-{model}",
                    "milliseconds": _inference_ms(task, args.inference_size, repeats),
                }
            )
            print(inference_rows[-1], flush=True)

    gray = np.tile(
        np.linspace(-1, 1, args.inference_size, dtype=np.float32), (args.inference_size, 1)
    )
    fs_seconds = median_seconds(lambda: floyd_steinberg(gray), warmup=1, repeats=3)
    inference_rows.append({"method": "floyd_steinberg", "milliseconds": 1e3 * fs_seconds})
    print(inference_rows[-1], flush=True)

    payload = {
        "benchmark": "halftone",
        "environment": environment(),
        "settings": settings,
        "train": train_rows,
        "inference_1image": inference_rows,
    }
    write_json(args.out, payload)
    return payload
