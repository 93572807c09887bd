"""Halftoning (deep neural dithering) with or without a Noise Incentive Block.

The network maps a gray image I in [−1, 1] to a continuous map y = tanh(·); the halftone is
``h = binarize(y)`` with a straight-through (identity) gradient. Losses (DESIGN.md, the NIB
authors' halftoning code; the paper's section 4.3 for the blue-noise term), `halftone_losses`:

* tone loss ``mean((blur(y) − blur(I))²)`` with the unpadded Gaussian blur of kernel 11, σ = 2,
  weight 0.6 on the training images and 0.3 on the constant-gray images (both sides are blurred,
  so the loss and the tone-PSNR metric measure the same thing);
* quantization loss ``mean(||y| − 1|)``, weight 0.1, half on each kind of image, pulling y to ±1
  so binarization changes little;
* blue-noise loss ``L_B = ‖DCT(H) ⊙ M‖₁`` (paper, section 4.3), as an L1 on the low-frequency DCT
  block (50 of 256 per side) between output and gray mapped to [0, 1], computed only on the
  constant-gray images (where the gray's spectrum is pure DC), weight 0.3;
* structure loss ``mean(1 − SSIM(h, I))`` on the training images, weight ``structure_weight``
  (0 by default: the halftoning task of section 3; the dithering configs of section 4.3 turn it
  on, `configs/halftone/dithering.py`, see `halftone_losses` and `dithering_config`).

Tone and blue noise see the continuous y, as in the authors' code; ``loss.output = 'binary'`` gives
them the binarized halftone instead. Every step trains on ``data.batch_size`` images (procedural
comics or a TFDS set) plus ``data.constant_batch_size`` constant-gray images, both through one
forward pass. ``data.name = 'samples'`` trains on crops of the held-out scikit-image samples,
``'comic+samples'`` on both alternately (`noise_research.data.sample_crops`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from noise_research import config_schema as cs
from noise_research.classical import CLASSICAL_HALFTONERS
from noise_research.data import (
    ComicBatches,
    TfdsImageBatches,
    comic_image,
    constant_gray_batch,
    gray_ramp,
    gray_steps,
    sample_images,
)
from noise_research.data.base import ENDLESS, BatchSource, ProcessSlice, worker_batches
from noise_research.data.sample_crops import SampleCropBatches
from noise_research.layers.nib import NibConfig
from noise_research.metrics import halftone as metrics
from noise_research.models.halftone import (
    FIRST_LAYERS,
    HALFTONE_MODELS,
    HalftoneUNet,
    build_halftone_model,
)
from noise_research.tasks.base import Task
from noise_research.train.loop import LoopConfig
from noise_research.train.optim import OptimizerConfig, make_optimizer
from noise_research.train.parallel import ParallelContext, cross_replica_mean
from noise_research.train.rng import step_rngs
from noise_research.train.state import TrainState, apply_mean_gradients, init_train_state
from noise_research.viz import (
    method_colors,
    save_image_grid,
    save_line_plot,
    save_line_plot_grid,
)

DTYPES = ("float32", "bfloat16")
Halftoner = Callable[[np.ndarray], np.ndarray]  # gray (B, H, W, 1) in [−1, 1] -> {−1, +1}
EVAL_SEED_OFFSET = 1_000_003  # eval comics come from a seed no training step uses
EVAL_NOISE_INDEX = 2**31 - 1  # eval's dynamic noise: fold_in(root, index) no training step uses
SAMPLE_CROP_SOURCES = ("samples", "comic+samples")  # data.name values of sample_crops' batches


def image_side(minimum: int) -> cs.Rule:
    """A side the chosen model takes: an integer >= ``minimum``, a multiple of ``2**levels`` for
    the U-Net (it halves the image ``levels`` times)."""
    factor = 2**HalftoneUNet.levels
    return cs.Rule(
        lambda value, context: (
            cs.integer(minimum=minimum).check(value, context)
            and (context.get("model.name") != "unet" or value % factor == 0)
        ),
        lambda context: (
            f"an integer >= {minimum}"
            + (
                f", a multiple of {factor} with model.name = 'unet' (it halves the image "
                f"{HalftoneUNet.levels} times)"
                if context.get("model.name") == "unet"
                else ""
            )
        ),
    )


@dataclasses.dataclass(frozen=True)
class HalftoneData:
    """The ``data`` section: training crops and constant-gray images."""

    name: str = cs.setting(
        "comic",
        cs.text(),
        "'comic' (procedural, embedded), 'samples' (crops of the held-out scikit-image samples), "
        "'comic+samples' (both, alternately) or a TFDS image dataset ('voc/2012')",
    )
    split: str = cs.setting("train", cs.text(), "the TFDS split")
    data_dir: str | None = cs.setting(
        None, cs.optional(cs.text()), "TFDS data_dir; None: TFDS's default", placeholder=str
    )
    image_key: str = cs.setting("image", cs.text(), "the TFDS image feature")
    crop_size: int = cs.setting(
        256,
        image_side(16),
        "side of the gray training crops (>= 16: the unpadded 11×11 tone blur keeps 6×6 of 16²)",
    )
    batch_size: int = cs.setting(8, cs.batch_size(), "global batch of training crops")
    constant_batch_size: int = cs.setting(
        8, cs.batch_size(), "global batch of constant-gray images (the blue-noise loss)"
    )
    seed: int = cs.setting(0, cs.integer(minimum=0), "seed of the crops, order and gray levels")
    input_workers: int | None = cs.setting(
        None,
        cs.optional(cs.integer(minimum=0)),
        "processes building training batches; None: one per CPU core for a TFDS set, none "
        "(a thread of this process) for the comics; 0: a thread of this process",
        placeholder=int,
        resumable=True,
    )


@dataclasses.dataclass(frozen=True)
class HalftoneModelConfig:
    """The ``model`` section."""

    name: str = cs.setting(
        "resnet",
        cs.one_of(*HALFTONE_MODELS),
        "'resnet' (receptive field 45², the paper's ≈41²) or 'unet' (188²–204², the paper's ≈183²)",
    )
    width: int = cs.setting(64, cs.integer(minimum=1), "channels of the first layer")
    first_layer: str = cs.setting(
        "nib", cs.one_of(*FIRST_LAYERS), "'conv' (plain) or 'nib' (Noise Incentive Block)"
    )
    dtype: str = cs.setting("float32", cs.one_of(*DTYPES), "compute dtype (params stay float32)")
    nib: NibConfig = cs.subsection(NibConfig, "the NIB, with first_layer = 'nib'")


LOSS_OUTPUTS = ("continuous", "binary")


@dataclasses.dataclass(frozen=True)
class HalftoneLoss:
    """The ``loss`` section (module docstring): the authors' weights by default."""

    tone_weight: float = cs.setting(
        0.6, cs.number(minimum=0), "weight of the tone loss on the training images"
    )
    constant_tone_weight: float = cs.setting(
        0.3, cs.number(minimum=0), "weight of the tone loss on the constant-gray images"
    )
    quantization_weight: float = cs.setting(
        0.1,
        cs.number(minimum=0),
        "weight of the quantization loss mean(||y| − 1|), half on each kind of image",
    )
    blue_noise_weight: float = cs.setting(
        0.3, cs.number(minimum=0), "weight of the blue-noise loss on constant-gray images"
    )
    structure_weight: float = cs.setting(
        0.0,
        cs.number(minimum=0),
        "weight of the structure loss mean(1 − SSIM(halftone, gray)) on the training images "
        "(Pang et al. 2008; the NIB paper's section 4.3): 0 for halftoning, > 0 for dithering",
    )
    blue_noise_fraction: float = cs.setting(
        metrics.BLUE_NOISE_BLOCK_FRACTION,
        cs.number(minimum=0.01, maximum=1.0),
        "side fraction of the low-frequency DCT block the blue-noise loss sees (50/256)",
    )
    output: str = cs.setting(
        "continuous",
        cs.one_of(*LOSS_OUTPUTS),
        "what the tone and blue-noise losses see: 'continuous' y (the authors') or 'binary' "
        "(the straight-through halftone)",
    )


@dataclasses.dataclass(frozen=True)
class HalftoneEval:
    """The ``eval`` section: held-out comics and constant-gray patches, and the report's size."""

    image_size: int = cs.setting(256, image_side(16), "side of the eval images", resumable=True)
    batch_size: int = cs.setting(8, cs.batch_size(), "global eval batch", resumable=True)
    num_batches: int = cs.setting(
        4, cs.integer(minimum=1), "eval batches per evaluation", resumable=True
    )
    report_image_size: int = cs.setting(
        256, image_side(16), "side of the report's sample images", resumable=True
    )


SECTIONS = {
    "train": LoopConfig,
    "data": HalftoneData,
    "model": HalftoneModelConfig,
    "loss": HalftoneLoss,
    "optimizer": OptimizerConfig,
    "eval": HalftoneEval,
}


def config_rules() -> dict[str, cs.Rule]:
    """Every key a halftoning config may hold, and what each allows."""
    return cs.experiment_rules(SECTIONS, task=cs.one_of("halftone"))


def experiment_config(
    *, model: str = "resnet", first_layer: str = "nib", demo: bool = False
) -> Any:
    """The halftoning experiment's ``ml_collections`` config (DESIGN.md, "NIB / halftoning": the
    authors' noise std 0.3 on [−1, 1], stationary normal noise, Adam lr 1e-4, batch 8, 256² crops).

    ``demo=True`` shrinks it to a few minutes on 2 CPU cores, still long enough for the NIB/plain
    difference to show. The files in ``configs/halftone/`` pick model, first layer and size.
    """
    sections = {
        "train": LoopConfig(report_every=20_000),
        "data": HalftoneData(),
        "model": HalftoneModelConfig(name=model, first_layer=first_layer),
        "loss": HalftoneLoss(),
        "optimizer": OptimizerConfig(),
        "eval": HalftoneEval(),
    }
    if demo:
        sections.update(
            train=LoopConfig(
                num_steps=400, log_every=20, eval_every=200, report_every=0, checkpoint_every=100
            ),
            data=HalftoneData(crop_size=64, batch_size=4, constant_batch_size=4),
            model=dataclasses.replace(sections["model"], width=16),
            optimizer=OptimizerConfig(learning_rate=1e-3),
            eval=HalftoneEval(image_size=64, batch_size=8, num_batches=2, report_image_size=128),
        )
    return cs.config_dict(sections, task="halftone")


def demo_from_arg(arg: str | None) -> bool:
    """The config-file argument (``file.py:demo``): nothing for the paper's sizes, ``demo`` for a
    CPU."""
    if arg in (None, ""):
        return False
    if arg == "demo":
        return True
    raise ValueError(f"config argument {arg!r} is unknown; allowed: 'demo' or nothing")


DITHERING_VARIANTS = tuple(
    f"{name}{suffix}" for name in ("blue_noise", "no_blue_noise") for suffix in ("", "_demo")
)
"""`configs/halftone/dithering.py` arguments: with / without L_B, the paper's size or ``_demo``."""

DITHERING_STRUCTURE_WEIGHT = 0.1
"""``loss.structure_weight`` of the dithering configs (our choice: the NIB paper gives none).
Measured, 400 demo steps with L_B, seed 0, on the 256² scikit-image samples: weight 0 gives tone
22.1 dB / SSIM 0.069, 0.1 gives 21.0 / 0.157, 0.5 gives 13.5 / 0.201 (the tone collapses)."""

DITHERING_DEMO_STEPS = 1500
"""``train.num_steps`` of the ``_demo`` dithering configs: ≈ 7 minutes on 2 idle CPU cores (4.0
steps/s measured; 13–28 minutes on the shared VM, `noise_research.experiments.dithering`)."""


def dithering_variant_from_arg(arg: str | None) -> tuple[bool, bool]:
    """``(blue_noise, demo)`` of the dithering config file's argument; empty means
    ``blue_noise`` at the paper's size."""
    if arg in (None, ""):
        return True, False
    if arg not in DITHERING_VARIANTS:
        raise ValueError(
            f"config argument {arg!r} is unknown; allowed: {', '.join(DITHERING_VARIANTS)}"
        )
    return not arg.startswith("no_"), arg.endswith("_demo")


def dithering_config(*, blue_noise: bool, demo: bool = False) -> Any:
    """Deep neural dithering (the NIB paper's section 4.3, Table 4): the halftoning ResNet with a
    NIB first layer, trained on tone + Pang et al.'s structure term (`halftone_losses`,
    ``loss.structure_weight`` = `DITHERING_STRUCTURE_WEIGHT`), with the blue-noise loss L_B on
    constant gray (``blue_noise=True``, weight 0.3 as in the authors' halftoning code) or without
    it (``blue_noise_weight = 0``, the paper's "Deep neural dithering / L_B" row). The two differ
    in that one key only.

    Training images: procedural comics and crops of the held-out scikit-image samples, alternately
    (``data.name = 'comic+samples'``): the paper's *Structure* set cannot be downloaded, and the
    structure term needs textured images (`noise_research.data.sample_crops`). ``demo=True`` is
    the halftoning demo's size (width 16, 64² crops, batch 4 + 4, Adam 1e-3) for
    `DITHERING_DEMO_STEPS` steps.
    """
    config = experiment_config(model="resnet", first_layer="nib", demo=demo)
    config.data.name = "comic+samples"
    config.loss.structure_weight = DITHERING_STRUCTURE_WEIGHT
    config.loss.blue_noise_weight = HalftoneLoss().blue_noise_weight if blue_noise else 0.0
    if demo:
        config.train.num_steps = DITHERING_DEMO_STEPS
        config.train.eval_every = DITHERING_DEMO_STEPS
        config.train.checkpoint_every = DITHERING_DEMO_STEPS // 6
    return config


def binarize(y: jax.Array) -> jax.Array:
    """+1 where y ≥ 0, −1 elsewhere in the forward pass; identity gradient (straight-through).

    The authors' ``round((y+1)/2)·2 − 1`` agrees except at y = 0 exactly, which torch's
    round-half-to-even sends to −1 and this sends to +1 (measure zero for a tanh output)."""
    hard = jnp.where(y >= 0, 1.0, -1.0).astype(y.dtype)
    return y + jax.lax.stop_gradient(hard - y)


def halftone_losses(
    y: jax.Array, gray: jax.Array, num_constant: int, weights: HalftoneLoss
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted loss and its terms; the last ``num_constant`` rows are constant-gray images.

    ``0.6·tone(real) + 0.3·tone(constant) + 0.1·(½ quant(real) + ½ quant(constant))
    + 0.3·blue_noise(constant)`` with the default weights (the authors' code, DESIGN.md):

    * tone(·) = mean((blur(x) − blur(I))²), the unpadded blur of `metrics.tone_blur`, each kind of
      image averaged on its own so the weights do not depend on the batch sizes;
    * quant(·) = mean(||y| − 1|) over that kind's outputs;
    * blue_noise = mean |DCT(x₀₁) − DCT(I₀₁)| over the low-frequency block, on the constant-gray
      rows mapped to [0, 1] (x₀₁ = (x + 1)/2) as the authors compute it, half the value on [−1, 1];

    where x is the continuous output y (``weights.output = 'continuous'``, the authors') or its
    straight-through binarization (``'binary'``).

    With ``weights.structure_weight`` > 0 (deep neural dithering, the NIB paper's section 4.3,
    which takes "the same loss function of [Pang et al., 2008]" and adds L_B), the loss gains
    ``structure_weight · structure``, Pang et al.'s structure term:

    * structure = mean(1 − SSIM(h, I)) over the training rows, SSIM of Wang et al. 2004 as
      `metrics.ssim` computes it (11×11 Gaussian window, σ 1.5, unpadded, on [0, 1]), h the
      straight-through binarized halftone whatever ``output`` says: on the continuous y the term
      is minimised by y = I (SSIM 1), a flat gray that says nothing about the halftone's
      structure, while the straight-through h lets the gradient reach y through the halftone that
      is evaluated. Not on the constant-gray rows: a constant image has no local variance, so
      there SSIM falls as the halftone's variance rises and the term would fight dithering itself.

    Pang et al. minimise ``w_s·(1 − SSIM) + w_t·tone`` for each image by swapping halftone pixels,
    with their own SSIM variant and weights; here it is a training loss of a network, with the
    tone term above (blurred MSE), dm_pix's standard SSIM and the weights of the config. With
    ``structure_weight = 0`` the term is not computed at all, so the loss, its gradient and the
    step's metrics are exactly those of the halftoning task.
    """
    chex.assert_equal_shape([y, gray])
    num_real = y.shape[0] - num_constant
    if num_real < 1 or num_constant < 1:
        raise ValueError(
            f"halftone_losses needs training rows and constant-gray rows; got {num_real} and "
            f"{num_constant} of a batch of {y.shape[0]}."
        )
    shaped = y if weights.output == "continuous" else binarize(y)

    def tone(rows: slice) -> jax.Array:
        return jnp.mean((metrics.tone_blur(shaped[rows]) - metrics.tone_blur(gray[rows])) ** 2)

    def quantization(rows: slice) -> jax.Array:
        return jnp.mean(jnp.abs(jnp.abs(y[rows]) - 1.0))

    real, constant = slice(0, num_real), slice(num_real, None)
    fraction = weights.blue_noise_fraction
    blue_noise = jnp.mean(
        jnp.abs(
            metrics.dct_low_frequency((shaped[constant] + 1.0) / 2.0, fraction)
            - metrics.dct_low_frequency((gray[constant] + 1.0) / 2.0, fraction)
        )
    )
    terms = {
        "tone_loss": tone(real),
        "constant_tone_loss": tone(constant),
        "quantization_loss": (quantization(real) + quantization(constant)) / 2.0,
        "blue_noise_loss": blue_noise,
    }
    loss = (
        weights.tone_weight * terms["tone_loss"]
        + weights.constant_tone_weight * terms["constant_tone_loss"]
        + weights.quantization_weight * terms["quantization_loss"]
        + weights.blue_noise_weight * terms["blue_noise_loss"]
    )
    if weights.structure_weight > 0:
        terms["structure_loss"] = jnp.mean(1.0 - metrics.ssim(binarize(y[real]), gray[real]))
        loss = loss + weights.structure_weight * terms["structure_loss"]
    return loss, {"loss": loss, **terms}


@dataclasses.dataclass
class HalftoneBatches:
    """Training batches: ``image`` rows from the image source plus ``constant`` gray rows.

    The step's global batch joins the G image rows and the C constant rows; their global positions
    (``image_position``, ``constant_position``) number the joined stream, step·(G + C) + row, image
    rows first. They key each row's dynamic noise, so it does not depend on how a backend splits or
    joins the two groups on its devices.
    """

    images: BatchSource
    constant_batch_size: int
    crop_size: int
    seed: int
    process_index: int
    process_count: int
    num_workers: int = 0

    @property
    def global_batch_size(self) -> int:
        return self.images.global_batch_size

    def batch(self, step: int) -> dict[str, np.ndarray]:
        constant = constant_gray_batch(
            self.seed,
            step,
            self.constant_batch_size,
            (self.crop_size, self.crop_size),
            process_index=self.process_index,
            process_count=self.process_count,
        )
        joined = self.global_batch_size + self.constant_batch_size
        image_rows = ProcessSlice(self.global_batch_size, self.process_index, self.process_count)
        constant_rows = ProcessSlice(
            self.constant_batch_size, self.process_index, self.process_count
        )
        return {
            "image": self.images.batch(step)["image"],
            "constant": constant,
            "image_position": _positions(step * joined, image_rows.global_positions(0)),
            "constant_position": _positions(
                step * joined + self.global_batch_size, constant_rows.global_positions(0)
            ),
        }

    def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        """``batch(start_step)``, ``batch(start_step + 1)``, … built by ``num_workers``
        processes (``worker_batches``)."""
        return worker_batches(self.batch, range(start_step, ENDLESS), self.num_workers)


def _positions(offset: int, rows: range) -> np.ndarray:
    return (offset + np.arange(rows.start, rows.stop)).astype(np.int32)


@dataclasses.dataclass
class HalftoneEvalBatches:
    """A fixed eval set: held-out comic images and constant-gray patches at evenly spaced levels.

    Comic n has position n, constant patch n position N + n (N eval images in all).
    """

    global_batch_size: int
    num_batches: int
    image_size: int
    seed: int
    process_index: int
    process_count: int

    def batch(self, index: int) -> dict[str, np.ndarray]:
        positions = ProcessSlice(
            self.global_batch_size, self.process_index, self.process_count
        ).global_positions(index)
        size = (self.image_size, self.image_size)
        comics = np.stack([comic_image(self.seed + EVAL_SEED_OFFSET, n, size) for n in positions])
        total = self.global_batch_size * self.num_batches
        levels = np.linspace(-0.95, 0.95, total, dtype=np.float32)[list(positions)]
        constant = np.broadcast_to(levels[:, None, None, None], comics.shape).copy()
        return {
            "image": comics,
            "constant": constant,
            "image_position": _positions(0, positions),
            "constant_position": _positions(total, positions),
        }


def build(config: Mapping[str, Any]) -> HalftoneTask:
    """The task for a validated config (a plain nested dict)."""
    return HalftoneTask(config)


class HalftoneTask(Task):
    """Train / eval steps and the report of the halftoning experiment (see the module docstring)."""

    sections = SECTIONS

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.loop = cs.read_section(LoopConfig, config["train"])
        self.data = cs.read_section(HalftoneData, config["data"])
        self.model_config = cs.read_section(HalftoneModelConfig, config["model"])
        self.loss_weights = cs.read_section(HalftoneLoss, config["loss"])
        self.eval_config = cs.read_section(HalftoneEval, config["eval"])
        model = self.model_config
        self.model: nn.Module = build_halftone_model(
            model.name,
            width=model.width,
            first_layer=model.first_layer,
            # The model rejects NIB settings for a plain first layer.
            nib=dataclasses.asdict(model.nib) if model.first_layer == "nib" else None,
            dtype=jnp.dtype(model.dtype),
        )
        self.num_eval_batches = self.eval_config.num_batches
        self.tx = make_optimizer(
            cs.read_section(OptimizerConfig, config["optimizer"]), self.loop.num_steps
        )
        self._forward_jit = _jitted_forward(self.model)

    # --- data -------------------------------------------------------------------------------
    def train_source(self, process_index: int, process_count: int) -> BatchSource:
        data = self.data
        common = dict(
            global_batch_size=data.batch_size,
            seed=data.seed,
            process_index=process_index,
            process_count=process_count,
        )
        if data.name == "comic":
            images = ComicBatches(size=(data.crop_size, data.crop_size), **common)
            num_workers = data.input_workers or 0
        elif data.name in SAMPLE_CROP_SOURCES:
            images = SampleCropBatches(
                size=(data.crop_size, data.crop_size),
                mix_comics=data.name == "comic+samples",
                **common,
            )
            num_workers = data.input_workers or 0
        else:
            images = TfdsImageBatches(
                data.name,
                split=data.split,
                crop_size=data.crop_size,
                data_dir=data.data_dir,
                image_key=data.image_key,
                num_workers=data.input_workers,
                config_keys={
                    "name": "data.name",
                    "split": "data.split",
                    "data_dir": "data.data_dir",
                    "image_key": "data.image_key",
                },
                **common,
            )
            num_workers = images.num_workers
        return HalftoneBatches(
            images=images,
            constant_batch_size=data.constant_batch_size,
            crop_size=data.crop_size,
            seed=data.seed,
            process_index=process_index,
            process_count=process_count,
            num_workers=num_workers,
        )

    def eval_source(self, process_index: int, process_count: int) -> BatchSource:
        return HalftoneEvalBatches(
            global_batch_size=self.eval_config.batch_size,
            num_batches=self.eval_config.num_batches,
            image_size=self.eval_config.image_size,
            seed=self.data.seed,
            process_index=process_index,
            process_count=process_count,
        )

    # --- pure steps -------------------------------------------------------------------------
    def init(self, rng: jax.Array, example_batch: Mapping[str, Any]) -> TrainState:
        example = jnp.zeros((1, *example_batch["image"].shape[1:]), jnp.float32)
        return init_train_state(self.model, rng, example, self.tx)

    def train_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], parallel: ParallelContext
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        gray = jnp.concatenate([batch["image"], batch["constant"]], axis=0)
        positions = jnp.concatenate([batch["image_position"], batch["constant_position"]])
        num_constant = batch["constant"].shape[0]
        rngs = step_rngs(state.rng, state.step, ("noise",))

        def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
            variables = {"params": params, **state.model_state}
            y = self.model.apply(variables, gray, positions, rngs=rngs)
            return halftone_losses(y.astype(jnp.float32), gray, num_constant, self.loss_weights)

        grads, step_metrics = jax.grad(loss_fn, has_aux=True)(state.params)
        return apply_mean_gradients(state, grads, step_metrics, parallel)

    def eval_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], parallel: ParallelContext
    ) -> dict[str, jax.Array]:
        rngs = {"noise": jax.random.fold_in(state.rng, EVAL_NOISE_INDEX)}
        results = {}
        for split, prefix in (("image", "comic"), ("constant", "constant")):
            gray = batch[split]
            y = self.model.apply(state.variables, gray, batch[f"{split}_position"], rngs=rngs)
            y = y.astype(jnp.float32)
            halftone = jnp.where(y >= 0, 1.0, -1.0)
            results[f"{prefix}/tone_psnr"] = jnp.mean(metrics.tone_psnr(halftone, gray))
            results[f"{prefix}/ssim"] = jnp.mean(metrics.ssim(halftone, gray))
            results[f"{prefix}/fraction_binary"] = jnp.mean(metrics.fraction_binary(y))
        return cross_replica_mean(results, parallel)

    # --- host-side report -------------------------------------------------------------------
    def halftone_images(self, state: TrainState, gray: np.ndarray) -> np.ndarray:
        """The model's halftones in {−1, +1} of a host batch (B, H, W, 1)."""
        y = self._forward_jit(state.variables, jnp.asarray(gray), jax.random.PRNGKey(0))
        return np.where(np.asarray(y) >= 0, 1.0, -1.0).astype(np.float32)

    def report(self, state: TrainState, workdir: str, step: int) -> dict[str, float]:
        """Pictures (halftones, spectra, classical methods side by side) and the comparison table.

        Every method halftones one image at a time, so the model and the jitted error-diffusion
        engine compile once per image size (the report size and the eval size), not once per batch.
        """
        out = os.path.join(workdir, "report", f"step_{step:07d}")
        os.makedirs(out, exist_ok=True)
        model_name = f"{self.model_config.first_layer}-{self.model_config.name}"
        methods = {model_name: lambda gray: self.halftone_images(state, gray)}
        methods.update(CLASSICAL_HALFTONERS)
        methods = {name: one_image_at_a_time(fn) for name, fn in methods.items()}

        size = self.eval_config.report_image_size
        ramps = {
            "ramp": gray_ramp((size, size)),
            "steps": gray_steps(np.linspace(-0.9, 0.9, 8), (size, size)),
        }
        for file_name, images in (
            ("samples.png", sample_images(size=size)),
            ("gray_ramps.png", ramps),
        ):
            save_halftone_grid(os.path.join(out, file_name), images, methods)
        table = save_constant_gray_spectra(out, methods, size)
        eval_source = self.eval_source(0, 1)
        eval_batches = [eval_source.batch(i) for i in range(self.num_eval_batches)]
        for split, prefix in (("image", "comic"), ("constant", "constant")):
            gray_eval = np.concatenate([b[split] for b in eval_batches])
            for name, fn in methods.items():
                halftone_eval = jnp.asarray(fn(gray_eval))
                table[name][f"{prefix}_tone_psnr"] = float(
                    np.mean(metrics.tone_psnr(halftone_eval, jnp.asarray(gray_eval)))
                )
                table[name][f"{prefix}_ssim"] = float(
                    np.mean(metrics.ssim(halftone_eval, jnp.asarray(gray_eval)))
                )
        _write_table(out, table, step, self._table_caption(model_name, step))
        return {f"{name}/{key}": value for name, row in table.items() for key, value in row.items()}

    def _table_caption(self, model_name: str, step: int) -> str:
        """What comparison.md's numbers mean, and what this run is (and is not) evidence of."""
        other_layer = "conv" if self.model_config.first_layer == "nib" else "nib"
        data = self.data
        return (
            f"`{model_name}` is this run at step {step} of {self.loop.num_steps} (width "
            f"{self.model_config.width}, {data.crop_size}² crops, batch {data.batch_size} + "
            f"{data.constant_batch_size} constant gray); the other rows are classical halftoners "
            "of the same images. `*_tone_psnr`: dB between the blurred halftone and the blurred "
            "gray (11×11 Gaussian, σ = 2, no padding) on held-out comics and constant-gray "
            "patches, higher is better; `*_ssim`: structure; `constant_g_low_frequency_energy`: "
            "the share of a gray-level-g halftone's power below 0.1 cycles/pixel, lower is bluer "
            "(white noise ≈ 0.031).\n\n"
            "A short run does not match error diffusion, and is not meant to: the CPU demo "
            "(configs/halftone/demo.py) shows what a Noise Incentive Block does against a plain "
            "first layer at the same budget. A plain CNN maps flat input to flat output (the "
            "paper's flatness degradation), so it cannot dither constant gray and its "
            "`constant_tone_psnr` stays far below. Compare: the same command with "
            f"`--config.model.first_layer={other_layer}` and another `--workdir`. The network "
            "comes near the classical rows only at the paper's budget (configs/halftone/"
            "nib_resnet.py); README.md, 'What the demo shows', gives measured numbers for both."
        )


REPORT_GRAY_LEVELS = {"1/8": -0.75, "1/4": -0.5, "1/2": 0.0}
"""The constant grays whose halftones' spectra the report draws (label: level on [−1, 1])."""


def save_halftone_grid(
    path: str, images: Mapping[str, np.ndarray], methods: Mapping[str, Halftoner]
) -> dict[str, np.ndarray]:
    """One PNG: a row per gray image (H, W, 1), the image then each method's halftone of it.

    Returns each method's halftones, (N, H, W, 1) in the order of ``images``."""
    gray = np.stack(list(images.values()))
    halftones = {name: fn(gray) for name, fn in methods.items()}
    grid, titles = [], []
    for i, image_name in enumerate(images):
        grid.append(gray[i])
        titles.append(image_name)
        for name in methods:
            grid.append(halftones[name][i])
            titles.append(name)
    save_image_grid(path, grid, titles, ncols=len(methods) + 1)
    return halftones


def save_constant_gray_spectra(
    out: str,
    methods: Mapping[str, Halftoner],
    size: int,
    levels: Mapping[str, float] = REPORT_GRAY_LEVELS,
    num_images: int = 4,
) -> dict[str, dict[str, float]]:
    """Ulichney's blue-noise figures of each method's halftones of constant gray.

    Halftones ``num_images`` constant images of side ``size`` at each of ``levels`` and writes
    ``out/spectra.png`` (the radially averaged power spectra, one panel per level, a method in one
    colour everywhere) and ``out/anisotropy.png`` (at mid-gray, the last level 1/2 by default).
    Returns ``{method: {"constant_<label>_low_frequency_energy": share of power < 0.1
    cycles/pixel}}``.
    """
    spectra: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {
        f"g = {label}": {} for label in levels
    }
    anisotropies, table = {}, {}
    mid_gray = list(levels)[-1]
    for name, fn in methods.items():
        row: dict[str, float] = {}
        for label, level in levels.items():
            flat_halftones = fn(np.full((num_images, size, size, 1), level, np.float32))
            spectra[f"g = {label}"][name] = metrics.radially_averaged_power_spectrum(flat_halftones)
            if label == mid_gray:
                anisotropies[name] = metrics.anisotropy(flat_halftones)
            row[f"constant_{label}_low_frequency_energy"] = float(
                metrics.low_frequency_energy(flat_halftones)
            )
        table[name] = row
    # One panel per gray level, as Ulichney plots them; a method has one colour everywhere.
    colors = method_colors(list(methods))
    save_line_plot_grid(
        os.path.join(out, "spectra.png"),
        spectra,
        xlabel="radial frequency (cycles/pixel)",
        ylabel="power",
        ncols=len(levels),
        logy=True,
        colors=colors,
    )
    save_line_plot(
        os.path.join(out, "anisotropy.png"),
        anisotropies,
        xlabel="radial frequency (cycles/pixel)",
        ylabel="anisotropy (dB)",
        title=f"Anisotropy of g = {mid_gray} halftones",
        colors=colors,
    )
    return table


def one_image_at_a_time(halftoner: Halftoner) -> Halftoner:
    """``halftoner`` applied to each image of a batch alone, so a jitted halftoner compiles once
    per image size, not once per batch size."""

    def halftone_each(gray: np.ndarray) -> np.ndarray:
        return np.concatenate([halftoner(gray[i : i + 1]) for i in range(gray.shape[0])])

    return halftone_each


def _jitted_forward(model: nn.Module):
    @jax.jit
    def forward(variables: Any, gray: jax.Array, noise_key: jax.Array) -> jax.Array:
        return model.apply(variables, gray, rngs={"noise": noise_key})

    return forward


def _write_table(out: str, table: dict[str, dict[str, float]], step: int, caption: str) -> None:
    """comparison.json (the numbers) and comparison.md (the table, then the caption)."""
    with open(os.path.join(out, "comparison.json"), "w") as f:
        json.dump({"step": step, "methods": table, "caption": caption}, f, indent=2)
    columns = list(next(iter(table.values())))
    lines = [
        "| method | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4g}" for c in columns) + " |")
    with open(os.path.join(out, "comparison.md"), "w") as f:
        f.write("\n".join(lines) + "\n\n" + caption + "\n")
