"""Input pipeline: train images/s of the TFDS classification source on ImageNet-like JPEGs.

The records are mock ImageNet photographs: windows of scikit-image's offline sample photographs
resized to 500×375 px (one in four 375×500), each JPEG-encoded at the quality that brings it
nearest ``--record-bytes`` (default 110 KB, about ImageNet's average). They are written to a
temporary TFDS array_record data set and read by ``TfdsClassificationBatches(train=True)`` through
``iterate`` — the decode, random-resized crop, flip and float conversion of a training run — with
the records reused cyclically (the source repeats the split). The rate is measured with one
worker process (``images_per_second_per_core``) and with ``--workers`` processes (default: every
core), together with the CPU time per image of the training process itself (receiving the
batches: it bounds the rate any number of workers can reach) and the machine.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from typing import Any

import numpy as np
from PIL import Image

from noise_research import config_schema as cs
from noise_research.bench.arguments import (
    BENCH_DEVICES,
    allowed_by,
    integer,
    number,
    options_named,
    output_path,
)
from noise_research.bench.timing import environment, write_json

PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
)
"""Colour photographs that ship inside the scikit-image wheel (no download)."""

RECORD_SIZE = (500, 375)
"""(width, height) of a landscape record; portrait records are 375×500."""

PORTRAIT_FRACTION = 0.25


OPTIONS = {"data.image_size": "--image-size", "data.batch_size": "--batch"}
"""The option that sets each classification config key whose rule the benchmark's value obeys."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options, on its subcommand's ``parser``."""
    parser.add_argument("--out", type=output_path, default="bench_results/input.json")
    parser.add_argument(
        "--workers",
        type=allowed_by(cs.integer(minimum=1)),
        default=None,
        help="processes of the all-cores run; default: cores",
    )
    parser.add_argument(
        "--num-records",
        type=allowed_by(cs.integer(minimum=1)),
        default=256,
        help="JPEGs written (cycled)",
    )
    parser.add_argument(
        "--record-bytes",
        type=allowed_by(cs.integer(minimum=1)),
        default=110_000,
        help="target JPEG size",
    )
    parser.add_argument(
        "--image-size",
        type=integer,
        default=224,
        help="training crop side (checked as the classification config.data.image_size)",
    )
    parser.add_argument(
        "--batch",
        type=integer,
        default=256,
        help="global batch size (checked as the classification config.data.batch_size)",
    )
    parser.add_argument(
        "--seconds",
        type=allowed_by(cs.positive_number(), number),
        default=10.0,
        help="timed seconds per worker count",
    )


def checked_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's settings (the options; every core for ``--workers`` not given), after the
    crop side and batch have passed the classification task's rules for ``data.image_size`` and
    ``data.batch_size`` (the task reads its TFDS data through the same source).

    Raises ``ConfigError`` naming the option, the config key, the value and what is allowed.
    """
    from noise_research.tasks.classify import ClassifyData

    settings = dict(
        num_records=args.num_records,
        record_bytes=args.record_bytes,
        image_size=args.image_size,
        batch=args.batch,
        seconds=args.seconds,
        workers=os.cpu_count() if args.workers is None else args.workers,
    )
    rules = cs.section_rules("data", ClassifyData)
    data = {"image_size": args.image_size, "batch_size": args.batch}
    with options_named(OPTIONS):
        cs.validate({"data": data}, {key: rules[key] for key in OPTIONS}, num_devices=BENCH_DEVICES)
    return settings


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _jpeg_near(image: Image.Image, target_bytes: int) -> bytes:
    """`image` as JPEG at the quality (1…100) whose encoding size is nearest `target_bytes`
    (bisection for the highest quality within the target, then that or the next one)."""

    def encode(quality: int) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()

    low, high = 1, 100
    within = encode(low)
    while low <= high:
        quality = (low + high) // 2
        encoded = encode(quality)
        if len(encoded) <= target_bytes:
            within, low = encoded, quality + 1
        else:
            high = quality - 1
    if low > 100:
        return within
    above = encode(low)
    return min(within, above, key=lambda encoded: abs(len(encoded) - target_bytes))


def mock_imagenet_jpegs(num_records: int, record_bytes: int, seed: int = 0) -> list[bytes]:
    """`num_records` JPEGs like ImageNet's: a random window (≥ 60% of the largest one of the
    record's aspect ratio) of a `PHOTO_NAMES` photograph, in turn, resized to `RECORD_SIZE`
    (a quarter of them portrait), mirrored half of the time, encoded by `_jpeg_near`."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTO_NAMES]
    records = []
    for index in range(num_records):
        photo = photos[index % len(photos)]
        width, height = RECORD_SIZE
        if rng.random() < PORTRAIT_FRACTION:
            width, height = height, width
        scale = min(photo.width / width, photo.height / height) * rng.uniform(0.6, 1.0)
        window_width, window_height = width * scale, height * scale
        left = rng.uniform(0, photo.width - window_width)
        top = rng.uniform(0, photo.height - window_height)
        box = (left, top, left + window_width, top + window_height)
        image = photo.resize((width, height), Image.Resampling.BICUBIC, box=box)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        records.append(_jpeg_near(image, record_bytes))
    return records


def write_jpeg_dataset(records: list[bytes], data_dir: str) -> str:
    """Prepares a TFDS data set in `data_dir` (array_record) holding `records` as its "image"
    feature (stored as given), label = record index mod 1000, and returns its name. The builder
    is not registered; `tfds.data_source` finds the prepared files by name in `data_dir`."""
    import tensorflow_datasets as tfds

    class NoiseResearchInputBench(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """The benchmark's JPEG records with ImageNet's features."""

        VERSION = tfds.core.Version("1.0.0")
        # No checksums file to look for next to the code (which, for a class inside a package,
        # TFDS locates with the optional importlib_resources): this builder downloads nothing.
        code_path = None

        def _info(self) -> tfds.core.DatasetInfo:
            features = {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=1000),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
            return {"train": self._generate_examples()}

        def _generate_examples(self) -> Any:
            for index, record in enumerate(records):
                yield index, {"image": record, "label": index % 1000}

    NoiseResearchInputBench(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return NoiseResearchInputBench.name


def measure_iterate(source: Any, seconds: float) -> dict[str, float]:
    """Images/s of `source.iterate(0)` over at least `seconds` (whole batches, after one batch
    per worker and one more, untimed: the workers start and the batch memory comes into use),
    and this process's CPU time per image in ms."""
    batches = source.iterate(0)
    try:
        for _ in range(source.num_workers + 1):
            next(batches)
        images = 0
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        while time.perf_counter() - start_wall < seconds:
            images += len(next(batches)["label"])
        wall = time.perf_counter() - start_wall
        cpu = time.process_time() - start_cpu
    finally:
        batches.close()
    return {
        "images_per_second": images / wall,
        "training_process_cpu_milliseconds_per_image": 1000 * cpu / images,
        "images": images,
        "seconds": wall,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark (after :func:`checked_settings`) and writes its JSON to ``--out``;
    returns the JSON's content."""
    settings = checked_settings(args)  # before TensorFlow's import, which takes seconds
    import tensorflow_datasets as tfds

    from noise_research.data.classification import TfdsClassificationBatches

    cores = os.cpu_count()
    workers = settings["workers"]
    print(f"input benchmark on {cpu_model()} ({cores} cores): {settings}", flush=True)
    records = mock_imagenet_jpegs(args.num_records, args.record_bytes)
    tfds.disable_progress_bar()
    results = {}
    with tempfile.TemporaryDirectory() as data_dir:
        dataset_name = write_jpeg_dataset(records, data_dir)
        for name, num_workers in (("one_worker", 1), ("all_workers", workers)):
            source = TfdsClassificationBatches(
                dataset_name,
                global_batch_size=args.batch,
                image_size=args.image_size,
                train=True,
                data_dir=data_dir,
                process_index=0,
                process_count=1,
                num_workers=num_workers,
            )
            results[name] = measure_iterate(source, args.seconds)
            print(f"{num_workers} worker(s): {results[name]}", flush=True)

    payload = {
        "benchmark": "input",
        "environment": environment(),
        "machine": {"cpu_model": cpu_model(), "cpu_cores": cores},
        "settings": settings,
        "average_record_bytes": float(np.mean([len(record) for record in records])),
        "images_per_second_per_core": results["one_worker"]["images_per_second"],
        "images_per_second_all_cores": results["all_workers"]["images_per_second"],
        "workers_all_cores": workers,
        "runs": results,
    }
    write_json(args.out, payload)
    return payload
