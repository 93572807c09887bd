"""Classification: train images/s of ResNet-18/50, plain vs SF, POW, HPOW, SF-POW, and overheads.

One training step is the classification task's full step (forward in the compute dtype, cross-
entropy and α penalties, backward, SGD with Nesterov momentum and weight decay) on a synthetic
batch of random images and labels, as the PyTorch peer (``shared/bench/peer_torch_resnet.py``)
times torchvision's ResNets. The models are the ImageNet ones (7×7 stem, 1000 classes, quantizers
before the 3×3 convs as in the paper's ResNet-50). On an accelerator the defaults are the paper's
setting (bfloat16, 224², batch 256); on CPU they shrink so the benchmark takes a few minutes; every
setting is written to the JSON.

In a bfloat16 model the quantizing convs compute in float32 by default
(``model.quantizer.compute_dtype``: SF and POW are no-ops in bfloat16 beyond x ≈ 1.3, see
``noise_research.layers.quantization``). ``--quantizer-dtypes=float32,model`` times each quantizer
both ways, one row each (``quantizer_compute_dtype``), each with its overhead over plain; the
default is both on an accelerator, float32 only on CPU (quick).
"""

from __future__ import annotations

import argparse
from typing import Any

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
from noise_research.bench.timing import environment, train_images_per_second, write_json
from noise_research.layers.quantization import QUANTIZATIONS as VARIANTS

COMPUTE_DTYPES = ("float32", "model")
"""Values of ``model.quantizer.compute_dtype`` (``noise_research.tasks.classify``)."""

OPTIONS = {
    "model.depth": "--depths",
    "model.quantizer.kind": "--variants",
    "data.batch_size": "--batch",
    "data.image_size": "--size",
    "model.dtype": "--dtype",
    "model.quantizer.where": "--where",
    "model.quantizer.compute_dtype": "--quantizer-dtypes",
}
"""The option that sets each config key the benchmark changes."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options, on its subcommand's ``parser``."""
    parser.add_argument("--out", type=output_path, default="bench_results/classify.json")
    parser.add_argument(
        "--depths",
        type=comma_separated(integer),
        default="18,50",
        help="comma separated ResNet depths (config.model.depth)",
    )
    parser.add_argument(
        "--variants",
        type=comma_separated(allowed_by(cs.one_of(*VARIANTS), str)),
        default=",".join(VARIANTS),
        help=f"comma separated, of {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--batch", type=integer, default=None, help="config.data.batch_size; default 256 (CPU: 8)"
    )
    parser.add_argument(
        "--size",
        type=integer,
        default=None,
        help="image side (config.data.image_size); default 224 (CPU: 64)",
    )
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype (config.model.dtype)")
    parser.add_argument(
        "--where",
        default=None,
        help="convs the quantizer precedes (config.model.quantizer.where); default as in the "
        "configs: 'all' below ResNet-50, else '3x3'",
    )
    parser.add_argument(
        "--quantizer-dtypes",
        type=comma_separated(allowed_by(cs.one_of(*COMPUTE_DTYPES), str)),
        default=None,
        help="comma separated values of config.model.quantizer.compute_dtype to time, of "
        "float32 (the quantizing convs in float32 inside the --dtype model) and model (in "
        "--dtype); default float32,model (CPU: float32)",
    )
    parser.add_argument(
        "--repeats",
        type=allowed_by(cs.integer(minimum=1)),
        default=None,
        help="timed steps; default 30 (CPU: 3)",
    )


def _config(
    depth: int, variant: str, settings: dict[str, Any], compute_dtype: str = "float32"
) -> dict[str, Any]:
    """The classification config of one measurement: the experiment's, with the benchmark's
    values (``compute_dtype``: the quantizing convs' ``model.quantizer.compute_dtype``)."""
    from noise_research.tasks import classify

    config = classify.experiment_config(
        dataset="imagenet2012",  # never opened: the batches are synthetic
        depth=depth,
        stem="imagenet",
        num_classes=1000,
        image_size=settings["size"],
        variant=variant,
        num_steps=100_000,
        stability_steps=100_000,
    ).to_dict()
    config["data"]["batch_size"] = settings["batch"]
    config["model"]["dtype"] = settings["dtype"]
    config["model"]["quantizer"]["compute_dtype"] = compute_dtype
    if settings["where"] is not None:
        config["model"]["quantizer"]["where"] = settings["where"]
    return config


def checked_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's settings (the options; this machine's defaults for those not given), after
    every config it will build has passed the classification config rules, before anything
    compiles.

    Raises ``ConfigError`` naming the option, the config key, the value and what is allowed.
    """
    from noise_research.tasks import classify

    settings = dict(
        depths=args.depths,
        variants=args.variants,
        batch=default_for_platform(args.batch, accelerator=256, cpu=8),
        size=default_for_platform(args.size, accelerator=224, cpu=64),
        dtype=args.dtype,
        where=args.where,
        quantizer_dtypes=default_for_platform(
            args.quantizer_dtypes, accelerator=list(COMPUTE_DTYPES), cpu=["float32"]
        ),
        repeats=default_for_platform(args.repeats, accelerator=30, cpu=3),
    )
    rules = classify.config_rules()
    with options_named(OPTIONS):
        for depth, variant, compute_dtype in _measurements(settings):
            config = _config(depth, variant, settings, compute_dtype)
            cs.validate(config, rules, num_devices=BENCH_DEVICES)
    return settings


def _measurements(settings: dict[str, Any]) -> list[tuple[int, str, str]]:
    """(depth, variant, quantizer compute dtype) of every row: plain once per depth (it has no
    quantizer), every other variant once per ``quantizer_dtypes``."""
    return [
        (depth, variant, compute_dtype)
        for depth in settings["depths"]
        for variant in settings["variants"]
        for compute_dtype in (
            settings["quantizer_dtypes"][:1] if variant == "none" else settings["quantizer_dtypes"]
        )
    ]


def _synthetic_batch(batch: int, size: int, num_classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.random((batch, size, size, 3), dtype=np.float32),
        "label": rng.integers(0, num_classes, batch).astype(np.int32),
        "mask": np.ones(batch, bool),
        "position": np.arange(batch, dtype=np.int32),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark (after :func:`checked_settings`) and writes its JSON to ``--out``;
    returns the JSON's content."""
    from noise_research.tasks import classify

    settings = checked_settings(args)
    print(f"classify benchmark on {environment()['device_kind']}: {settings}")

    rows = []
    plain_rates: dict[int, float] = {}
    for depth, variant, compute_dtype in _measurements(settings):
        task = classify.build(_config(depth, variant, settings, compute_dtype))
        host_batch = _synthetic_batch(
            settings["batch"], settings["size"], task.config["model"]["num_classes"]
        )
        measured = train_images_per_second(
            task, host_batch, images_per_step=settings["batch"], repeats=settings["repeats"]
        )
        row = {
            "model": f"resnet{depth}",
            "variant": variant,
            "where": task.config["model"]["quantizer"]["where"],
            "dtype": settings["dtype"],
            **measured,
        }
        if variant == "none":
            plain_rates[depth] = measured["images_per_second"]
        else:
            row["quantizer_compute_dtype"] = (
                settings["dtype"] if compute_dtype == "model" else compute_dtype
            )
            if depth in plain_rates:
                row["overhead_percent"] = 100.0 * (
                    plain_rates[depth] / measured["images_per_second"] - 1
                )
        rows.append(row)
        print(row, flush=True)

    payload = {
        "benchmark": "classify",
        "environment": environment(),
        "settings": settings,
        "train": rows,
    }
    write_json(args.out, payload)
    return payload
