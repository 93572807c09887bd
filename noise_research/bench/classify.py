"""Classification: train images/s of ResNet-18/50, plain vs SF, POW, HPOW, SF-POW, and overheads.

One training step is the classification task's full step (forward in the compute dtype, cross-
entropy and α penalties, backward, SGD with Nesterov momentum and weight decay) on a synthetic
batch of random images and labels, as the PyTorch peer (``shared/bench/peer_torch_resnet.py``)
times torchvision's ResNets. The models are the ImageNet ones (7×7 stem, 1000 classes, quantizers
before the 3×3 convs as in the paper's ResNet-50). On an accelerator the defaults are the paper's
setting (bfloat16, 224², batch 256); on CPU they shrink so the benchmark takes a few minutes; every
setting is written to the JSON.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import numpy as np

from noise_research.bench.timing import environment, train_images_per_second, write_json
from noise_research.layers.quantization import QUANTIZATIONS as VARIANTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench_results/classify.json")
    parser.add_argument("--depths", default="18,50", help="comma separated ResNet depths")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma separated, of {VARIANTS}"
    )
    parser.add_argument("--batch", type=int, default=None, help="default 256 (CPU: 8)")
    parser.add_argument("--size", type=int, default=None, help="image side; default 224 (CPU: 64)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--where",
        default=None,
        choices=("3x3", "all"),
        help="convs the quantizer precedes; default as in the configs: 'all' below ResNet-50",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed steps; default 30 (CPU: 3)"
    )


def _task(depth: int, variant: str, batch: int, size: int, dtype: str, where: str | None):
    from noise_research.tasks import classify

    config = classify.experiment_config(
        dataset="imagenet2012",  # never opened: the batches are synthetic
        depth=depth,
        stem="imagenet",
        num_classes=1000,
        image_size=size,
        variant=variant,
        num_steps=100_000,
        stability_steps=100_000,
    ).to_dict()
    config["data"]["batch_size"] = batch
    config["model"]["dtype"] = dtype
    if where is not None:
        config["model"]["quantizer"]["where"] = where
    return classify.build(config)


def _synthetic_batch(batch: int, size: int, num_classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.random((batch, size, size, 3), dtype=np.float32),
        "label": rng.integers(0, num_classes, batch).astype(np.int32),
        "mask": np.ones(batch, bool),
        "position": np.arange(batch, dtype=np.int32),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    on_cpu = jax.devices()[0].platform == "cpu"
    depths = [int(d) for d in args.depths.split(",")]
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(
            f"--variants: {', '.join(unknown)} unknown; allowed: {', '.join(VARIANTS)}"
        )
    settings = dict(
        depths=depths,
        variants=variants,
        batch=args.batch or (8 if on_cpu else 256),
        size=args.size or (64 if on_cpu else 224),
        dtype=args.dtype,
        where=args.where,
        repeats=args.repeats or (3 if on_cpu else 30),
    )
    print(f"classify benchmark on {environment()['device_kind']}: {settings}")

    rows = []
    for depth in depths:
        plain_rate = None
        for variant in variants:
            task = _task(
                depth, variant, settings["batch"], settings["size"], args.dtype, args.where
            )
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
                **measured,
            }
            if variant == "none":
                plain_rate = measured["images_per_second"]
            elif plain_rate is not None:
                row["overhead_percent"] = 100.0 * (plain_rate / measured["images_per_second"] - 1)
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
