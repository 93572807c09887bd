"""Halftoning: train images/s, plain vs NIB (ResNet, U-Net); 1024² inference vs Floyd–Steinberg.

One training step is the full halftoning step (forward, straight-through binarization, tone /
quantization / blue-noise losses, backward, Adam) on ``batch`` images: ``batch/2`` comic crops plus
``batch/2`` constant-gray images, so ``--batch-sizes`` takes even numbers only. ``images/s`` is the
images of the step's batch over the step time: it counts every image that goes through the network,
as the PyTorch peer (``shared/bench/peer_torch_halftone.py``) does. On an accelerator the defaults
are the paper's (width 64, 256², batch 8 and 32); on CPU they shrink so the benchmark takes a few
minutes; every setting is written to the JSON.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from noise_research import config_schema as cs
from noise_research.bench.arguments import (
    BENCH_DEVICES,
    allowed_by,
    comma_separated,
    default_for_platform,
    integer,
    options_named,
    output_path,
)
from noise_research.bench.timing import (
    environment,
    median_seconds,
    train_images_per_second,
    write_json,
)

BATCH_SIZE = cs.Rule(
    lambda value, context: cs.integer(minimum=2).check(value, context) and value % 2 == 0,
    "an even integer >= 2: a halftoning step takes half comic crops, half constant-gray images",
)
"""What ``--batch-sizes`` allows: the images of one step, ``batch/2`` of each kind."""

OPTIONS = {
    "data.crop_size": "--size",
    "data.batch_size": "--batch-sizes",
    "data.constant_batch_size": "--batch-sizes",
    "model.name": "--models",
    "model.width": "--width",
    "model.dtype": "--dtype",
    "eval.image_size": "--inference-size",
}
"""The option that sets each config key the benchmark changes."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options, on its subcommand's ``parser``."""
    parser.add_argument("--out", type=output_path, default="bench_results/halftone.json")
    parser.add_argument(
        "--batch-sizes",
        type=comma_separated(allowed_by(BATCH_SIZE)),
        default=None,
        help="images per step, comma separated, each even; default 8,32 (CPU: 2,4)",
    )
    parser.add_argument(
        "--size",
        type=integer,
        default=None,
        help="crop side (config.data.crop_size); default 256 (CPU: 64)",
    )
    parser.add_argument(
        "--width",
        type=integer,
        default=None,
        help="channels (config.model.width); default 64 (CPU: 16)",
    )
    parser.add_argument(
        "--models",
        type=comma_separated(str),
        default="resnet,unet",
        help="comma separated (config.model.name)",
    )
    parser.add_argument("--dtype", default="float32", help="compute dtype (config.model.dtype)")
    parser.add_argument(
        "--repeats",
        type=allowed_by(cs.integer(minimum=1)),
        default=None,
        help="timed steps; default 30 (CPU: 5)",
    )
    parser.add_argument(
        "--inference-size",
        type=integer,
        default=1024,
        help="side of the image halftoned at inference (checked as config.eval.image_size)",
    )


def _config(model: str, first_layer: str, batch: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The halftoning config of one measurement: the experiment's, with the benchmark's values."""
    from noise_research.tasks import halftone

    config = halftone.experiment_config(model=model, first_layer=first_layer).to_dict()
    config["data"].update(
        crop_size=settings["size"], batch_size=batch // 2, constant_batch_size=batch // 2
    )
    config["model"].update(width=settings["width"], dtype=settings["dtype"])
    config["eval"]["image_size"] = settings["inference_size"]
    return config


def checked_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's settings (the options; this machine's defaults for those not given), after
    every config it will build has passed the halftoning config rules, before anything compiles.

    Raises ``ConfigError`` naming the option, the config key, the value and what is allowed.
    """
    from noise_research.tasks import halftone

    settings = dict(
        batch_sizes=default_for_platform(args.batch_sizes, accelerator=[8, 32], cpu=[2, 4]),
        size=default_for_platform(args.size, accelerator=256, cpu=64),
        width=default_for_platform(args.width, accelerator=64, cpu=16),
        dtype=args.dtype,
        repeats=default_for_platform(args.repeats, accelerator=30, cpu=5),
        models=args.models,
        inference_size=args.inference_size,
    )
    rules = halftone.config_rules()
    with options_named(OPTIONS):
        for model in settings["models"]:
            for first_layer in ("conv", "nib"):
                for batch in settings["batch_sizes"]:
                    config = _config(model, first_layer, batch, settings)
                    cs.validate(config, rules, num_devices=BENCH_DEVICES)
    return settings


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
    """Runs the benchmark (after :func:`checked_settings`) and writes its JSON to ``--out``;
    returns the JSON's content."""
    from noise_research.classical import floyd_steinberg
    from noise_research.tasks import halftone

    settings = checked_settings(args)
    repeats = settings["repeats"]
    print(f"halftone benchmark on {environment()['device_kind']}: {settings}")

    train_rows, inference_rows = [], []
    for model in settings["models"]:
        for batch in settings["batch_sizes"]:
            measured = {}
            for first_layer in ("conv", "nib"):
                task = halftone.build(_config(model, first_layer, batch, settings))
                host_batch = task.train_source(0, 1).batch(0)
                measured[first_layer] = train_images_per_second(
                    task,
                    host_batch,
                    images_per_step=len(host_batch["image"]) + len(host_batch["constant"]),
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
            task = halftone.build(_config(model, first_layer, 2, settings))
            inference_rows.append(
                {
                    "method": f"{first_layer}-{model}",
                    "milliseconds": _inference_ms(task, settings["inference_size"], repeats),
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
