"""Colour hiding in grayscale: the invertible grayscale of Xia, Liu and Wong (SIGGRAPH Asia 2018),
with or without a Noise Incentive Block (the NIB paper's section 4.2, Table 3, Figure 7).

An encoder turns a colour image T into a grayscale G that looks like T's luminance L(T); a
decoder restores T from G (`models.invertible_grayscale`). Xia et al.'s objective (their section
3: "the loss function ensures (a) color invertibility, (b) grayscale conformity, (c) resistance to
quantization errors"), with the weights of the authors' public code (MenghanXia/
InvertibleGrayscale ``main.py``, read for facts), in `colour_hiding_losses`:

* invertibility (restoration): ``mean((Dec(G) − T)²)``, weight 3;
* grayscale conformity:
  - lightness with a tolerance: ``mean(max(|G − L(T)| − θ, 0))``, θ = 70 of the 255 levels
    (70/127.5 on [−1, 1]), weight 1: G may depart from the luminance by up to θ for free,
    which leaves room for the colour code;
  - local structure: ``|TV(G) − TV(L(T))|`` with TV the mean absolute horizontal plus vertical
    difference per pixel, weight 0.5 in the first stage and 0.1 in the second: G must not be
    more textured than the luminance (the code's texture has to stay faint). The authors take
    the absolute difference of the batch means; here it is per image, then averaged, so a
    device's shard gives the same mean as the global batch;
  - contrast: the authors match VGG-19 conv4_1 features of G and T (weight 1e-7). Its ImageNet
    weights cannot be downloaded here, so **this term is left out**: nothing else stretches
    G's global contrast to follow colour contrast (two isoluminant colours may stay the same
    gray, and the restoration term alone decides how far apart they go);
* quantization: ``mean(min_k |G − q_k|)`` over the 256 uint8 levels q_k = k/127.5 − 1 (computed
  as the distance to the nearest level, `uint8_levels`), weight 10, only in the second stage
  (steps >= ``loss.quantization_from_step``; the authors' code trains 90 epochs without it and 30
  with it), pulling G onto values that survive saving it as an 8-bit image.

The decoder sees the continuous G in training (the authors') or, with
``loss.decoder_input = 'uint8'``, G rounded to the 256 levels with a straight-through gradient.

Data: training crops of flat-colour comics and/or the colour scikit-image samples
(`data.colour_images`); the evaluation restores colour **after the grayscale is rounded to uint8**
(as it would be stored) on held-out embedded images (scikit-image's ``chelsea`` and ``coffee``,
never trained on) and held-out flat-colour comics, separately: restoration PSNR (dB, RGB on
[−1, 1], peak-to-peak 2, i.e. the 0…255 PSNR) and SSIM (`metrics.halftone.ssim`: dm_pix's
Gaussian-window SSIM per channel, averaged over the channels), the PSNR restricted to flat
regions, the grayscale's PSNR to the luminance, and the restoration PSNR without quantization.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import colormaps

from noise_research import config_schema as cs
from noise_research.data.base import RGB_TO_GRAY_WEIGHTS, BatchSource, ProcessSlice
from noise_research.data.colour_images import (
    HELD_OUT_COLOUR_SAMPLES,
    TRAINING_SOURCES,
    ColourCropBatches,
    held_out_colour_samples,
)
from noise_research.data.procedural import colour_comic_image
from noise_research.layers.nib import NibConfig
from noise_research.metrics import halftone as halftone_metrics
from noise_research.models.halftone import FIRST_LAYERS
from noise_research.models.invertible_grayscale import (
    DOWNSAMPLING,
    InvertibleGrayscale,
    uint8_levels,
)
from noise_research.tasks.base import Task
from noise_research.tasks.halftone import EVAL_NOISE_INDEX, EVAL_SEED_OFFSET
from noise_research.train.loop import LoopConfig
from noise_research.train.optim import OptimizerConfig, make_optimizer
from noise_research.train.parallel import ParallelContext, cross_replica_mean
from noise_research.train.rng import step_rngs
from noise_research.train.state import TrainState, apply_mean_gradients, init_train_state
from noise_research.viz import save_image_grid

DTYPES = ("float32", "bfloat16")
DECODER_INPUTS = ("continuous", "uint8")
EVAL_SPLITS = ("comic", "embedded")
"""The evaluation's two sets: held-out flat-colour comics and held-out embedded photographs."""
FLAT_WINDOW = 5
"""A pixel is 'flat' when the colour input is constant over the FLAT_WINDOW² window around it."""
ERROR_MAP_RANGE = 0.25
"""Error maps span 0 … this mean absolute RGB error on [−1, 1] (32 of 255 levels)."""

VARIANTS = ("plain", "nib", "plain_demo", "nib_demo")
"""The config-file arguments: the encoder's first layer, at the authors' size or a CPU demo."""


def image_side(minimum: int) -> cs.Rule:
    return cs.Rule(
        lambda value, context: (
            cs.integer(minimum=minimum).check(value, context) and value % DOWNSAMPLING == 0
        ),
        f"an integer >= {minimum} and a multiple of {DOWNSAMPLING} (the encoder halves it twice)",
    )


def _block_counts(value: Any, _: cs.Context) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )


@dataclasses.dataclass(frozen=True)
class ColourHidingData:
    """The ``data`` section: the training crops."""

    source: str = cs.setting(
        "mixed",
        cs.one_of(*TRAINING_SOURCES),
        "'comic' (flat-colour comics), 'samples' (crops of the colour scikit-image samples) or "
        "'mixed' (comics at even positions, sample crops at odd ones)",
    )
    crop_size: int = cs.setting(256, image_side(16), "side of the colour training crops")
    batch_size: int = cs.setting(8, cs.batch_size(), "global batch of training crops")
    seed: int = cs.setting(0, cs.integer(minimum=0), "seed of the comics and the crops")


@dataclasses.dataclass(frozen=True)
class ColourHidingModelConfig:
    """The ``model`` section (`models.invertible_grayscale.InvertibleGrayscale`)."""

    width: int = cs.setting(64, cs.integer(minimum=1), "channels at full resolution")
    first_layer: str = cs.setting(
        "nib",
        cs.one_of(*FIRST_LAYERS),
        "the encoder's first layer: 'conv' (plain) or 'nib' (Noise Incentive Block)",
    )
    encoder_blocks: tuple[int, ...] = cs.setting(
        (2, 4, 2),
        cs.Rule(_block_counts, "three integers >= 0"),
        "residual blocks at the encoder's start, middle and end (the authors' (2, 4, 2))",
    )
    decoder_blocks: int = cs.setting(
        8, cs.integer(minimum=0), "residual blocks of the decoder (the authors' 8)"
    )
    dtype: str = cs.setting("float32", cs.one_of(*DTYPES), "compute dtype (params stay float32)")
    nib: NibConfig = cs.subsection(NibConfig, "the NIB, with first_layer = 'nib'")


@dataclasses.dataclass(frozen=True)
class ColourHidingLoss:
    """The ``loss`` section (module docstring): the authors' weights by default."""

    restoration_weight: float = cs.setting(
        3.0, cs.number(minimum=0), "weight of the invertibility term mean((Dec(G) − T)²)"
    )
    lightness_weight: float = cs.setting(
        1.0, cs.number(minimum=0), "weight of the lightness term mean(max(|G − L(T)| − θ, 0))"
    )
    lightness_tolerance: float = cs.setting(
        70.0,
        cs.number(minimum=0, maximum=255),
        "θ of the lightness term, in uint8 levels (70/127.5 on [−1, 1])",
    )
    structure_weight: float = cs.setting(
        0.5, cs.number(minimum=0), "weight of |TV(G) − TV(L(T))| before the quantization stage"
    )
    quantized_structure_weight: float = cs.setting(
        0.1, cs.number(minimum=0), "weight of |TV(G) − TV(L(T))| in the quantization stage"
    )
    quantization_weight: float = cs.setting(
        10.0,
        cs.number(minimum=0),
        "weight of the quantization term mean(min_k |G − q_k|), in the quantization stage",
    )
    quantization_from_step: int = cs.setting(
        75_000,
        cs.integer(minimum=0),
        "first step of the quantization stage (the authors: after 90 of 120 epochs)",
    )
    decoder_input: str = cs.setting(
        "continuous",
        cs.one_of(*DECODER_INPUTS),
        "what the decoder sees in training: the 'continuous' gray (the authors') or 'uint8' "
        "(rounded to the 256 levels, straight-through gradient)",
    )


@dataclasses.dataclass(frozen=True)
class ColourHidingEval:
    """The ``eval`` section: held-out comics and embedded images, and the report's size."""

    image_size: int = cs.setting(256, image_side(16), "side of the eval images", resumable=True)
    batch_size: int = cs.setting(
        8,
        cs.batch_size(),
        "global eval batch: this many comics and this many embedded images per batch",
        resumable=True,
    )
    num_batches: int = cs.setting(
        1,
        cs.integer(minimum=1),
        "eval batches per evaluation (the embedded images, "
        f"4·{len(HELD_OUT_COLOUR_SAMPLES)} quadrants, repeat when there are more rows)",
        resumable=True,
    )
    report_image_size: int = cs.setting(
        256, image_side(16), "side of the report's Figure 7 images", resumable=True
    )


SECTIONS = {
    "train": LoopConfig,
    "data": ColourHidingData,
    "model": ColourHidingModelConfig,
    "loss": ColourHidingLoss,
    "optimizer": OptimizerConfig,
    "eval": ColourHidingEval,
}


def config_rules() -> dict[str, cs.Rule]:
    """Every key a colour-hiding config may hold, and what each allows."""
    return cs.experiment_rules(SECTIONS, task=cs.one_of("colour_hiding"))


QUANTIZATION_STAGE_FRACTION = 0.75
"""The quantization stage starts after this share of the steps (the authors' 90 of 120 epochs)."""


def experiment_config(*, first_layer: str = "nib", demo: bool = False) -> Any:
    """The colour-hiding experiment's ``ml_collections`` config.

    Full size: the authors' network (width 64, blocks (2, 4, 2) and 8), 256² crops, batch 8, Adam
    2e-4 with β1 0.9 (their code; it decays the rate polynomially to 1/100, which the project's
    schedules do not offer: constant here), 100,000 steps with the quantization stage from step
    75,000 (their 90 + 30 epochs). ``demo=True``, a few minutes on 2 CPU cores: width 16, blocks
    (1, 2, 1) and 3, 32² crops, batch 8, 4,000 steps of Adam at 2e-3, dropped ×0.1 (to the
    authors' 2e-4) when the quantization stage starts at step 3,000: at 2e-3 its
    sign-gradient (weight 10) drove the plain model's gray into tanh saturation at ±1 (an exact
    uint8 level, so a zero quantization loss) in a trial run.
    """
    sections = {
        "train": LoopConfig(report_every=20_000),
        "data": ColourHidingData(),
        "model": ColourHidingModelConfig(first_layer=first_layer),
        "loss": ColourHidingLoss(),
        "optimizer": OptimizerConfig(learning_rate=2e-4),
        "eval": ColourHidingEval(),
    }
    if demo:
        steps = 4_000
        sections.update(
            train=LoopConfig(
                num_steps=steps,
                log_every=100,
                eval_every=1_000,
                report_every=0,
                checkpoint_every=500,
            ),
            data=ColourHidingData(crop_size=32, batch_size=8),
            model=dataclasses.replace(
                sections["model"], width=16, encoder_blocks=(1, 2, 1), decoder_blocks=3
            ),
            loss=ColourHidingLoss(quantization_from_step=int(QUANTIZATION_STAGE_FRACTION * steps)),
            optimizer=OptimizerConfig(
                learning_rate=2e-3,
                schedule="step",
                step_boundaries=(QUANTIZATION_STAGE_FRACTION,),
                step_factor=0.1,
            ),
            eval=ColourHidingEval(
                image_size=64, batch_size=8, num_batches=2, report_image_size=128
            ),
        )
    return cs.config_dict(sections, task="colour_hiding")


def variant_from_arg(arg: str | None) -> tuple[str, bool]:
    """``(first_layer, demo)`` of the config-file argument (``file.py:nib_demo``); nothing means
    the NIB model at full size."""
    if arg in (None, ""):
        return "nib", False
    if arg not in VARIANTS:
        raise ValueError(f"config argument {arg!r} is unknown; allowed: {', '.join(VARIANTS)}")
    name = arg.removesuffix("_demo")
    return ("conv" if name == "plain" else "nib"), arg.endswith("_demo")


# --- losses and metrics ---------------------------------------------------------------------


def luminance(colour: jax.Array) -> jax.Array:
    """L(T) = 0.299R + 0.587G + 0.114B of (B, H, W, 3) colour, (B, H, W, 1), on T's scale."""
    chex.assert_axis_dimension(colour, -1, 3)
    return jnp.tensordot(colour, jnp.asarray(RGB_TO_GRAY_WEIGHTS), axes=1)[..., None]


def total_variation(images: jax.Array) -> jax.Array:
    """(B,) mean absolute horizontal plus vertical neighbour difference per pixel: the authors'
    ``tf.image.total_variation`` (a sum) divided by H·W."""
    chex.assert_rank(images, 4)
    vertical = jnp.sum(jnp.abs(jnp.diff(images, axis=1)), axis=(1, 2, 3))
    horizontal = jnp.sum(jnp.abs(jnp.diff(images, axis=2)), axis=(1, 2, 3))
    return (vertical + horizontal) / (images.shape[1] * images.shape[2])


def colour_hiding_losses(
    colour: jax.Array,
    gray: jax.Array,
    restored: jax.Array,
    weights: ColourHidingLoss,
    quantization_stage: jax.Array | bool,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted loss and its terms (module docstring):

    ``3·restoration + 1·lightness + w_s·structure + w_q·quantization`` with w_s = 0.5 and w_q = 0
    before the quantization stage, w_s = 0.1 and w_q = 10 in it (`quantization_stage`, a bool
    that may be traced), the authors' weights by default.
    """
    chex.assert_equal_shape([colour, restored])
    chex.assert_equal_shape([gray, colour[..., :1]])
    target_gray = luminance(colour)
    tolerance = weights.lightness_tolerance / 127.5
    terms = {
        "restoration_loss": jnp.mean((restored - colour) ** 2),
        "lightness_loss": jnp.mean(jnp.maximum(jnp.abs(gray - target_gray) - tolerance, 0.0)),
        "structure_loss": jnp.mean(jnp.abs(total_variation(gray) - total_variation(target_gray))),
        "quantization_loss": jnp.mean(jnp.abs(gray - uint8_levels(gray))),
    }
    stage = jnp.asarray(quantization_stage, jnp.float32)
    structure_weight = weights.structure_weight + stage * (
        weights.quantized_structure_weight - weights.structure_weight
    )
    loss = (
        weights.restoration_weight * terms["restoration_loss"]
        + weights.lightness_weight * terms["lightness_loss"]
        + structure_weight * terms["structure_loss"]
        + stage * weights.quantization_weight * terms["quantization_loss"]
    )
    return loss, {"loss": loss, **terms}


def flat_region_mask(colour: jax.Array, window: int = FLAT_WINDOW) -> jax.Array:
    """(B, H, W, 1) 1.0 where every channel of ``colour`` is constant over the window² neighbourhood
    (entirely inside the image), else 0.0: the flat regions a plain encoder cannot texture."""
    chex.assert_rank(colour, 4)
    dims, strides = (1, window, window, 1), (1, 1, 1, 1)
    high = jax.lax.reduce_window(colour, -jnp.inf, jax.lax.max, dims, strides, "SAME")
    low = jax.lax.reduce_window(colour, jnp.inf, jax.lax.min, dims, strides, "SAME")
    flat = jnp.all(high == low, axis=-1, keepdims=True)
    half = window // 2
    height, width = colour.shape[1:3]
    rows = (jnp.arange(height) >= half) & (jnp.arange(height) < height - half)
    columns = (jnp.arange(width) >= half) & (jnp.arange(width) < width - half)
    inside = rows[:, None] & columns[None, :]
    return (flat & inside[None, :, :, None]).astype(jnp.float32)


def masked_psnr(images: jax.Array, references: jax.Array, mask: jax.Array) -> jax.Array:
    """(B,) PSNR over the pixels where ``mask`` (B, H, W, 1) is 1 (NaN for an image without any)."""
    squared_error = jnp.sum(mask * (images - references) ** 2, axis=(1, 2, 3))
    count = jnp.sum(mask, axis=(1, 2, 3)) * images.shape[-1]
    mean_squared_error = squared_error / jnp.where(count > 0, count, jnp.nan)
    return 10.0 * jnp.log10(4.0 / mean_squared_error)


def error_map(restored: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """(H, W, 3) colour-coded mean absolute RGB error (magma, black 0 … yellow
    `ERROR_MAP_RANGE`), in [−1, 1] for `save_image_grid`."""
    error = np.mean(np.abs(np.asarray(restored) - np.asarray(colour)), axis=-1)
    rgb = colormaps["magma"](np.clip(error / ERROR_MAP_RANGE, 0.0, 1.0))[..., :3]
    return (rgb * 2.0 - 1.0).astype(np.float32)


# --- data -----------------------------------------------------------------------------------


@dataclasses.dataclass
class ColourHidingEvalBatches:
    """A fixed eval set: batch i holds ``comic`` rows (held-out flat-colour comics, comic n at
    position n) and ``embedded`` rows (the held-out photographs' quadrants, row n the
    (n mod count)-th, at position N + n with N eval rows of each kind)."""

    global_batch_size: int
    num_batches: int
    image_size: int
    seed: int
    process_index: int
    process_count: int

    def batch(self, index: int) -> dict[str, np.ndarray]:
        rows = ProcessSlice(
            self.global_batch_size, self.process_index, self.process_count
        ).global_positions(index)
        size = (self.image_size, self.image_size)
        comics = [colour_comic_image(self.seed + EVAL_SEED_OFFSET, n, size) for n in rows]
        embedded = held_out_colour_samples(self.image_size)
        total = self.global_batch_size * self.num_batches
        positions = np.asarray(rows, np.int32)
        return {
            "comic": np.stack(comics),
            "embedded": embedded[[n % len(embedded) for n in rows]],
            "comic_position": positions,
            "embedded_position": positions + total,
        }


def build(config: Mapping[str, Any]) -> ColourHidingTask:
    """The task for a validated config (a plain nested dict)."""
    return ColourHidingTask(config)


class ColourHidingTask(Task):
    """Train / eval steps and the report of colour hiding (see the module docstring)."""

    sections = SECTIONS

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.loop = cs.read_section(LoopConfig, config["train"])
        self.data = cs.read_section(ColourHidingData, config["data"])
        self.model_config = cs.read_section(ColourHidingModelConfig, config["model"])
        self.loss_weights = cs.read_section(ColourHidingLoss, config["loss"])
        self.eval_config = cs.read_section(ColourHidingEval, config["eval"])
        model = self.model_config
        self.model: nn.Module = InvertibleGrayscale(
            width=model.width,
            first_layer=model.first_layer,
            nib=dataclasses.asdict(model.nib) if model.first_layer == "nib" else None,
            encoder_blocks=tuple(model.encoder_blocks),
            decoder_blocks=model.decoder_blocks,
            dtype=jnp.dtype(model.dtype),
        )
        self.num_eval_batches = self.eval_config.num_batches
        self.tx = make_optimizer(
            cs.read_section(OptimizerConfig, config["optimizer"]), self.loop.num_steps
        )
        self._restore_jit = jax.jit(self.restore)

    # --- data -------------------------------------------------------------------------------
    def train_source(self, process_index: int, process_count: int) -> BatchSource:
        data = self.data
        return ColourCropBatches(
            global_batch_size=data.batch_size,
            size=(data.crop_size, data.crop_size),
            seed=data.seed,
            process_index=process_index,
            process_count=process_count,
            source=data.source,
        )

    def eval_source(self, process_index: int, process_count: int) -> BatchSource:
        return ColourHidingEvalBatches(
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
        colour = batch["image"]
        rngs = step_rngs(state.rng, state.step, ("noise",))
        quantize = self.loss_weights.decoder_input == "uint8"
        quantization_stage = state.step >= self.loss_weights.quantization_from_step

        def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
            variables = {"params": params, **state.model_state}
            gray, restored = self.model.apply(
                variables, colour, batch["position"], quantize, rngs=rngs
            )
            return colour_hiding_losses(
                colour, gray, restored, self.loss_weights, quantization_stage
            )

        grads, step_metrics = jax.grad(loss_fn, has_aux=True)(state.params)
        return apply_mean_gradients(state, grads, step_metrics, parallel)

    def restore(
        self, variables: Any, colour: jax.Array, positions: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """The evaluation's forward pass: ``gray`` (continuous), ``stored`` (rounded to uint8,
        the 8-bit grayscale), ``restored`` (decoded from ``stored``) and ``restored_continuous``
        (decoded from ``gray``, a diagnostic; both decoded in one pass), with a fixed noise key
        for a dynamic NIB."""
        rngs = {"noise": jax.random.fold_in(jax.random.PRNGKey(0), EVAL_NOISE_INDEX)}
        gray = self.model.apply(variables, colour, positions, method="encode", rngs=rngs)
        stored = uint8_levels(gray)
        restored = self.model.apply(variables, jnp.concatenate([stored, gray]), method="decode")
        return {
            "gray": gray,
            "stored": stored,
            "restored": restored[: colour.shape[0]],
            "restored_continuous": restored[colour.shape[0] :],
        }

    def eval_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], parallel: ParallelContext
    ) -> dict[str, jax.Array]:
        colours = [batch[split] for split in EVAL_SPLITS]
        positions = jnp.concatenate([batch[f"{split}_position"] for split in EVAL_SPLITS])
        joined = self.restore(state.variables, jnp.concatenate(colours), positions)
        results, start = {}, 0
        for split, colour in zip(EVAL_SPLITS, colours, strict=True):
            rows = slice(start, start + colour.shape[0])
            start += colour.shape[0]
            out = {name: value[rows] for name, value in joined.items()}
            restored = out["restored"]
            if split == "comic":  # photographs have no exactly flat regions
                flat = masked_psnr(restored, colour, flat_region_mask(colour))
                results[f"{split}/flat_psnr"] = jnp.nanmean(flat)
            results.update(
                {
                    f"{split}/psnr": jnp.mean(halftone_metrics.psnr(restored, colour)),
                    f"{split}/ssim": jnp.mean(halftone_metrics.ssim(restored, colour)),
                    f"{split}/gray_psnr": jnp.mean(
                        halftone_metrics.psnr(out["stored"], luminance(colour))
                    ),
                    f"{split}/psnr_continuous": jnp.mean(
                        halftone_metrics.psnr(out["restored_continuous"], colour)
                    ),
                }
            )
        return cross_replica_mean(results, parallel)

    # --- host-side report -------------------------------------------------------------------
    def figure7_images(self, state: TrainState, size: int) -> dict[str, np.ndarray]:
        """The report's images at ``size``²: two held-out comics and two embedded quadrants,
        ``colour`` (4, size, size, 3) and the `restore` outputs."""
        comics = [
            colour_comic_image(self.data.seed + EVAL_SEED_OFFSET, n, (size, size)) for n in (0, 1)
        ]
        embedded = held_out_colour_samples(size)[[0, len(HELD_OUT_COLOUR_SAMPLES) * 4 - 1]]
        colour = np.concatenate([np.stack(comics), embedded])
        out = self._restore_jit(state.variables, jnp.asarray(colour))
        return {"colour": colour, **{k: np.asarray(v) for k, v in out.items()}}

    def report(self, state: TrainState, workdir: str, step: int) -> dict[str, float]:
        """Figure 7 for this model: per image the colour input, the stored 8-bit grayscale, the
        colour restored from it and the error map, with PSNRs in the titles (figure7.png), and
        the numbers (figure7.json)."""
        out = os.path.join(workdir, "report", f"step_{step:07d}")
        os.makedirs(out, exist_ok=True)
        images = self.figure7_images(state, self.eval_config.report_image_size)
        values = np.asarray(
            halftone_metrics.psnr(jnp.asarray(images["restored"]), jnp.asarray(images["colour"]))
        )
        names = ["comic_0", "comic_1", HELD_OUT_COLOUR_SAMPLES[0], HELD_OUT_COLOUR_SAMPLES[-1]]
        grid, titles = [], []
        for i, name in enumerate(names):
            grid += [
                images["colour"][i],
                images["stored"][i],
                images["restored"][i],
                error_map(images["restored"][i], images["colour"][i]),
            ]
            titles += [name, "gray (uint8)", f"restored {values[i]:.1f} dB", "|error|"]
        save_image_grid(os.path.join(out, "figure7.png"), grid, titles, ncols=4)
        metrics = {f"figure7/{name}/psnr": float(v) for name, v in zip(names, values, strict=True)}
        with open(os.path.join(out, "figure7.json"), "w") as f:
            json.dump({"step": step, **metrics}, f, indent=2)
        return metrics
