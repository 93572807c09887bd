"""The halftoning experiment's full config; the files beside this one pick model and size.

Defaults follow DESIGN.md (the NIB authors' halftoning code): noise std 0.3 on data in [−1, 1],
stationary normal noise, tone / quantization / blue-noise weights 0.6 / 0.2 / 0.3, Adam lr 1e-4,
batch 8, 256² crops. ``demo=True`` shrinks everything so a run takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def halftone_config(
    *, model: str, first_layer: str, demo: bool = False
) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "halftone"

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 100_000
    config.train.seed = 0
    config.train.parallel = "jit"  # or "pmap"
    config.train.log_every = 100
    config.train.eval_every = 5_000
    config.train.report_every = 20_000  # 0: only at the end
    config.train.final_report = True  # pictures and tables when training ends
    config.train.checkpoint_every = 5_000
    config.train.keep_checkpoints = 3
    config.train.async_checkpoints = True
    config.train.progress = True

    config.data = ml_collections.ConfigDict()
    config.data.name = "comic"  # procedural comics, or any TFDS image dataset, e.g. "voc/2012"
    config.data.split = "train"
    config.data.data_dir = config_dict.placeholder(str)  # TFDS data_dir; None: TFDS default
    config.data.image_key = "image"
    config.data.crop_size = 256
    config.data.batch_size = 8
    config.data.constant_batch_size = 8
    config.data.seed = 0

    config.model = ml_collections.ConfigDict()
    # "resnet" (receptive field 45², the paper's ≈41²) or "unet" (188²–204², the paper's ≈183²)
    config.model.name = model
    config.model.width = 64
    config.model.first_layer = first_layer  # "conv" or "nib"
    config.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16"
    config.model.nib = ml_collections.ConfigDict()
    config.model.nib.combine = "symmetric"  # f1(I+N) + f2(I−N); "impulse"; "feature"
    config.model.nib.distribution = "normal"  # "uniform", "bernoulli", "grid" (control)
    config.model.nib.noise_scale = 0.3  # std (normal), half-width (uniform), P(1) (bernoulli)
    config.model.nib.stationary = True
    config.model.nib.kernel_size = 3

    config.loss = ml_collections.ConfigDict()
    config.loss.tone_weight = 0.6
    config.loss.quantization_weight = 0.2
    config.loss.blue_noise_weight = 0.3
    config.loss.blue_noise_fraction = 0.2  # side fraction of the low-frequency DCT block

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0
    config.optimizer.weight_decay = 0.0

    config.eval = ml_collections.ConfigDict()
    config.eval.image_size = 256
    config.eval.batch_size = 8
    config.eval.num_batches = 4
    config.eval.report_image_size = 256

    if demo:
        apply_demo_size(config)
    return config


def is_demo(arg: str | None) -> bool:
    """The config-file argument (``file.py:demo``): empty for full size, ``demo`` for a CPU."""
    if arg in (None, ""):
        return False
    if arg == "demo":
        return True
    raise ValueError(f"config argument {arg!r} is unknown; allowed: 'demo' or nothing")


def apply_demo_size(config: ml_collections.ConfigDict) -> None:
    """A few minutes on 2 CPU cores, still long enough for the NIB/plain difference to show."""
    config.train.num_steps = 400
    config.train.log_every = 20
    config.train.eval_every = 200
    config.train.report_every = 0
    config.train.checkpoint_every = 100
    config.data.crop_size = 64
    config.data.batch_size = 4
    config.data.constant_batch_size = 4
    config.model.width = 16
    config.optimizer.learning_rate = 1e-3
    config.eval.image_size = 64
    config.eval.batch_size = 8
    config.eval.num_batches = 2
    config.eval.report_image_size = 128
