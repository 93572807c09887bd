"""The NIB paper's contamination test (section 3.3, "Does NIB contaminate data?", Figure 5): a
convolutional autoencoder with a plain, an additive-noise or a NIB first layer
(`models.autoencoder.ConvAutoencoder`), trained to reconstruct its input.

"if the NIB contaminates the input data, the reconstruction accuracy will be affected
consequently" — the paper: 47.95 dB (plain), 35.54 dB (additive noise), 48.56 dB (NIB).

* **Data**: gray, in [−1, 1]. Training rows are random crops (with flips and quarter turns) of
  the scikit-image samples in `TRAIN_IMAGE_NAMES`, loaded once as `data.source_size`² squares; a
  `data.comic_fraction` of the rows may be procedural comic crops instead. Row n of the example
  stream is a pure function of (data.seed, n), and n, its global position, keys its dynamic noise,
  as in the halftoning task. Evaluation: the held-out samples `EVAL_IMAGE_NAMES` (never trained
  on) at `eval.image_size`², cut into `eval.tile_size`² tiles; tile n has position n. Gray rather
  than RGB: every data helper of the project and every NIB experiment in it are gray
  (`data.sample_images`, the comics, the halftoners), the paper's 3367 images are the VOC set of
  its halftoning section, and the contamination question is the same for one channel as for
  three at a third of the cost on a CPU.
* **Loss**: the mean squared error of the reconstruction. The evaluation's PSNR is a function of
  the MSE, so the MSE is the loss that maximises it; L1 would optimise a median-like error and
  trade PSNR for it. Adam's normalised steps keep the rate as the MSE gets small (1e-4 at 40 dB).
* **Eval**: ``reconstruction_psnr``, 10·log10(2² / MSE) in dB per held-out tile (peak-to-peak 2
  on [−1, 1] data; the reconstruction clipped to [−1, 1], the data's range), averaged over the
  tiles. The model's noise acts at evaluation too: the additive noise is part of the 'noise'
  model, drawn from a fixed eval key and the tile's position. A symmetric NIB also reports
  ``nib_asymmetry`` = ‖f1 − f2‖ / ‖f1 + f2‖ (`nib_asymmetry`): how far its kernels are from
  cancelling N; and every NIB ``nib_noise_psnr``, the PSNR between its reconstruction and the one
  with an independent noise map N' (+inf when no trace of N reaches the output). The 'noise'
  model also reports ``noisy_input_psnr`` (I + N against I) and ``clean_input_psnr``, its
  reconstruction of the clean image (N = 0: the noise as a training-only augmentation).
* **Report**: Figure 5 for this run's variant (`save_figure5`): a held-out image, the noisy input
  I + N (d), the reconstruction and its colour-coded error map; the contamination experiment
  (`experiments.contamination`) draws the three variants side by side.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from noise_research import config_schema as cs
from noise_research.data import comic_image, sample_images
from noise_research.data.base import PositionalImageBatches, ProcessSlice
from noise_research.layers.nib import NibConfig
from noise_research.metrics.halftone import psnr
from noise_research.models.autoencoder import AUTOENCODER_FIRST_LAYERS, ConvAutoencoder
from noise_research.tasks.base import Task
from noise_research.train.loop import LoopConfig
from noise_research.train.optim import OptimizerConfig, make_optimizer
from noise_research.train.parallel import ParallelContext, cross_replica_mean
from noise_research.train.rng import step_rngs
from noise_research.train.state import TrainState, apply_mean_gradients, init_train_state
from noise_research.viz import save_image_grid

DTYPES = ("float32", "bfloat16")
EVAL_NOISE_INDEX = 2**31 - 1  # eval's noise: fold_in(root, index) no training step uses

# scikit-image's `cat` is `chelsea` (the same array): it is in neither list, so no held-out
# image is trained on.
EVAL_IMAGE_NAMES = ("camera", "chelsea", "coffee", "rocket")
TRAIN_IMAGE_NAMES = (
    "astronaut",
    "brick",
    "clock",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "text",
)

VARIANT_FIRST_LAYERS = {"plain": "conv", "noise": "noise", "nib": "nib"}
"""The config files' variant names and the first layer each trains."""
VARIANTS = tuple(f"{name}{suffix}" for name in VARIANT_FIRST_LAYERS for suffix in ("", "_demo"))


def even_side(minimum: int) -> cs.Rule:
    return cs.Rule(
        lambda v, c: cs.integer(minimum=minimum).check(v, c) and v % 2 == 0,
        f"an even integer >= {minimum} (the encoder halves the image)",
    )


@dataclasses.dataclass(frozen=True)
class AutoencoderData:
    """The ``data`` section: random crops of the training samples (module docstring)."""

    crop_size: int = cs.setting(256, even_side(4), "side of the gray training crops")
    source_size: int = cs.setting(
        512,
        cs.Rule(
            lambda v, c: cs.integer(minimum=4).check(v, c) and v >= c.get("data.crop_size"),
            lambda c: f"an integer >= data.crop_size ({c.get('data.crop_size')})",
        ),
        "side of the squares the training samples are loaded at (centre crop, Lanczos resize)",
    )
    batch_size: int = cs.setting(8, cs.batch_size(), "global batch of training crops")
    comic_fraction: float = cs.setting(
        0.0, cs.number(minimum=0.0, maximum=1.0), "share of rows that are procedural comic crops"
    )
    seed: int = cs.setting(0, cs.integer(minimum=0), "seed of the crops and their order")


@dataclasses.dataclass(frozen=True)
class AutoencoderModelConfig:
    """The ``model`` section."""

    width: int = cs.setting(64, cs.integer(minimum=1), "channels of the first layer")
    latent_channels: int = cs.setting(
        8,
        cs.integer(minimum=1),
        "channels of the half-resolution latent: latent_channels / 4 numbers per gray pixel "
        "(>= 1 keeps the bottleneck from capping every variant at one PSNR)",
    )
    first_layer: str = cs.setting(
        "conv",
        cs.one_of(*AUTOENCODER_FIRST_LAYERS),
        "'conv' (plain), 'noise' (conv(I + N), fresh N per row and call) or 'nib'",
    )
    noise_scale: float = cs.setting(
        0.3, cs.number(minimum=0), "std of the additive noise N with first_layer = 'noise'"
    )
    dtype: str = cs.setting("float32", cs.one_of(*DTYPES), "compute dtype (params stay float32)")
    nib: NibConfig = cs.subsection(NibConfig, "the NIB, with first_layer = 'nib'")


def _eval_tiles(context: cs.Context) -> int:
    per_side = context.get("eval.image_size") // context.get("eval.tile_size")
    return len(EVAL_IMAGE_NAMES) * per_side**2


@dataclasses.dataclass(frozen=True)
class AutoencoderEval:
    """The ``eval`` section: held-out images cut into tiles, and the report's size."""

    image_size: int = cs.setting(
        256,
        cs.Rule(
            lambda v, c: cs.integer(minimum=2).check(v, c) and v % c.get("eval.tile_size") == 0,
            lambda c: f"an integer, a multiple of eval.tile_size ({c.get('eval.tile_size')})",
        ),
        "side of the held-out images",
        resumable=True,
    )
    tile_size: int = cs.setting(128, even_side(2), "side of the eval tiles", resumable=True)
    batch_size: int = cs.setting(
        8,
        cs.Rule(
            lambda v, c: cs.batch_size().check(v, c) and _eval_tiles(c) % v == 0,
            lambda c: (
                f"a positive integer divisible by the device count ({c.num_devices}) that "
                f"divides the {_eval_tiles(c)} eval tiles"
            ),
        ),
        "global eval batch; every tile is evaluated once",
        resumable=True,
    )
    report_image_size: int = cs.setting(
        256, even_side(4), "side of the report's Figure 5 image", resumable=True
    )


SECTIONS = {
    "train": LoopConfig,
    "data": AutoencoderData,
    "model": AutoencoderModelConfig,
    "optimizer": OptimizerConfig,
    "eval": AutoencoderEval,
}


def config_rules() -> dict[str, cs.Rule]:
    """Every key an autoencoder config may hold, and what each allows."""
    return cs.experiment_rules(SECTIONS, task=cs.one_of("autoencoder"))


def experiment_config(*, first_layer: str = "conv", demo: bool = False) -> Any:
    """The contamination experiment's ``ml_collections`` config.

    Full size (an accelerator): width 64, 256² crops of 512² samples, batch 8, Adam 1e-4 (the
    halftoning recipe of DESIGN.md; the paper's supplementary setting is not public), 50,000
    steps, eval on 16 tiles of 128². ``demo=True``: a few minutes on 2 CPU cores (width 16, 32²
    crops of 256² samples, Adam 3e-3 with 100 warm-up steps and a cosine decay, 4,000 steps,
    eval on 16 tiles of 32²).
    """
    if first_layer not in AUTOENCODER_FIRST_LAYERS:
        raise ValueError(
            f"first_layer={first_layer!r} is unknown; allowed: {AUTOENCODER_FIRST_LAYERS}"
        )
    sections = {
        "train": LoopConfig(num_steps=50_000, report_every=0, eval_every=5_000),
        "data": AutoencoderData(),
        "model": AutoencoderModelConfig(first_layer=first_layer),
        "optimizer": OptimizerConfig(),
        "eval": AutoencoderEval(),
    }
    if demo:
        sections.update(
            train=LoopConfig(
                num_steps=4_000, log_every=100, eval_every=800, checkpoint_every=1_000
            ),
            data=AutoencoderData(crop_size=32, source_size=256),
            model=dataclasses.replace(sections["model"], width=16),
            # Width 16 runs 3× the steps of width 32 in the same time, which buys more PSNR;
            # the cosine decay ends the run at a settled point.
            optimizer=OptimizerConfig(learning_rate=3e-3, schedule="cosine", warmup_steps=100),
            eval=AutoencoderEval(image_size=64, tile_size=32, batch_size=8, report_image_size=128),
        )
    return cs.config_dict(sections, task="autoencoder")


def variant_from_arg(arg: str | None) -> tuple[str, bool]:
    """``(first_layer, demo)`` of the config-file argument (``file.py:nib_demo``)."""
    if arg not in VARIANTS:
        raise ValueError(f"config argument {arg!r} is unknown; allowed: {', '.join(VARIANTS)}")
    return VARIANT_FIRST_LAYERS[arg.removesuffix("_demo")], arg.endswith("_demo")


def reconstruction_psnr(reconstruction: jax.Array, image: jax.Array) -> jax.Array:
    """(B,) PSNR in dB of each reconstruction, 10·log10(2² / MSE), the reconstruction clipped
    to the data's range [−1, 1] (peak-to-peak 2); identical images give +inf."""
    return psnr(jnp.clip(reconstruction, -1.0, 1.0), image)


def nib_asymmetry(fused_kernel: jax.Array, image_channels: int) -> jax.Array:
    """‖f1 − f2‖ / ‖f1 + f2‖ of a symmetric NIB's kernels (the fused kernel's input channels are
    [I + N, I − N]): f1(I + N) + f2(I − N) = (f1 + f2)(I) + (f1 − f2)(N), so this is how much of
    the noise map still reaches the features relative to the image; 0 when the NIB has learnt
    to cancel N (section 3.1: the two "potentials to be realized by the adaptively learned f1
    and f2")."""
    chex.assert_axis_dimension(fused_kernel, 2, 2 * image_channels)
    f1, f2 = fused_kernel[:, :, :image_channels], fused_kernel[:, :, image_channels:]
    return jnp.linalg.norm(f1 - f2) / jnp.linalg.norm(f1 + f2)


@functools.cache
def _loaded_samples(names: tuple[str, ...], size: int) -> np.ndarray:
    """The samples ``names`` as one (N, size, size, 1) array, loaded once per process."""
    return np.stack(list(sample_images(names, size=size).values()))


class SampleCropBatches(PositionalImageBatches):
    """Training rows: the example at global position n is a random crop of a training sample
    (a random one of `TRAIN_IMAGE_NAMES`, a random flip and quarter turn) or, with probability
    ``comic_fraction``, ``comic_image(seed, n)``; both from (seed, n) alone."""

    def __init__(self, *, source_size: int, comic_fraction: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source_size = source_size
        self.comic_fraction = comic_fraction

    def image(self, position: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, position])
        if rng.uniform() < self.comic_fraction:
            return comic_image(self.seed, position, self.size)
        samples = _loaded_samples(TRAIN_IMAGE_NAMES, self.source_size)
        height, width = self.size
        sample = samples[rng.integers(len(samples))]
        top = rng.integers(self.source_size - height + 1)
        left = rng.integers(self.source_size - width + 1)
        crop = sample[top : top + height, left : left + width]
        if rng.uniform() < 0.5:
            crop = crop[:, ::-1]
        if height == width:
            crop = np.rot90(crop, k=int(rng.integers(4)))
        return np.ascontiguousarray(crop)


@dataclasses.dataclass
class HeldOutTiles:
    """The eval set: `EVAL_IMAGE_NAMES` at ``image_size``², cut into ``tile_size``² tiles in
    (image, row, column) order; tile n has position n (``{"image", "position"}`` batches)."""

    global_batch_size: int
    image_size: int
    tile_size: int
    process_index: int
    process_count: int

    def tiles(self) -> np.ndarray:
        images = _loaded_samples(EVAL_IMAGE_NAMES, self.image_size)
        per_side, side = self.image_size // self.tile_size, self.tile_size
        tiles = images.reshape(len(images), per_side, side, per_side, side, 1)
        return tiles.transpose(0, 1, 3, 2, 4, 5).reshape(-1, side, side, 1)

    def batch(self, index: int) -> dict[str, np.ndarray]:
        rows = ProcessSlice(self.global_batch_size, self.process_index, self.process_count)
        positions = np.arange(rows.global_positions(index).start, rows.global_positions(index).stop)
        return {"image": self.tiles()[positions], "position": positions.astype(np.int32)}


def build(config: Mapping[str, Any]) -> AutoencoderTask:
    """The task for a validated config (a plain nested dict)."""
    return AutoencoderTask(config)


class AutoencoderTask(Task):
    """Train / eval steps and the Figure 5 report (module docstring)."""

    sections = SECTIONS

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.loop = cs.read_section(LoopConfig, config["train"])
        self.data = cs.read_section(AutoencoderData, config["data"])
        self.model_config = cs.read_section(AutoencoderModelConfig, config["model"])
        self.eval_config = cs.read_section(AutoencoderEval, config["eval"])
        model = self.model_config
        self.model = ConvAutoencoder(
            width=model.width,
            latent_channels=model.latent_channels,
            first_layer=model.first_layer,
            # The model rejects NIB settings for another first layer.
            nib=dataclasses.asdict(model.nib) if model.first_layer == "nib" else None,
            noise_scale=model.noise_scale,
            dtype=jnp.dtype(model.dtype),
        )
        tiles_per_side = self.eval_config.image_size // self.eval_config.tile_size
        num_tiles = len(EVAL_IMAGE_NAMES) * tiles_per_side**2
        self.num_eval_batches = num_tiles // self.eval_config.batch_size
        self.tx = make_optimizer(
            cs.read_section(OptimizerConfig, config["optimizer"]), self.loop.num_steps
        )
        self._reconstruct_jit = jax.jit(self._reconstruct)

    # --- data -------------------------------------------------------------------------------
    def train_source(self, process_index: int, process_count: int) -> SampleCropBatches:
        return SampleCropBatches(
            global_batch_size=self.data.batch_size,
            size=(self.data.crop_size, self.data.crop_size),
            seed=self.data.seed,
            process_index=process_index,
            process_count=process_count,
            source_size=self.data.source_size,
            comic_fraction=self.data.comic_fraction,
        )

    def eval_source(self, process_index: int, process_count: int) -> HeldOutTiles:
        return HeldOutTiles(
            global_batch_size=self.eval_config.batch_size,
            image_size=self.eval_config.image_size,
            tile_size=self.eval_config.tile_size,
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
        images = batch["image"]
        rngs = step_rngs(state.rng, state.step, ("noise",))

        def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
            variables = {"params": params, **state.model_state}
            reconstruction = self.model.apply(variables, images, batch["position"], rngs=rngs)
            loss = jnp.mean(jnp.square(reconstruction - images))
            return loss, {"loss": loss}

        grads, step_metrics = jax.grad(loss_fn, has_aux=True)(state.params)
        return apply_mean_gradients(state, grads, step_metrics, parallel)

    def _reconstruct(
        self,
        state: TrainState,
        images: jax.Array,
        positions: jax.Array,
        redraw_noise: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """The reconstructions of `images` (rows at `positions`) with the eval noise, and the
        input the first layer perturbs: I + N for 'noise', else I. ``redraw_noise``: with
        another, independent noise (another eval key, and another key of every stationary map)."""
        index = EVAL_NOISE_INDEX - 1 if redraw_noise else EVAL_NOISE_INDEX
        rngs = {"noise": jax.random.fold_in(state.rng, index)}
        variables = state.variables
        if redraw_noise and "noise_keys" in variables:
            noise_keys = jax.tree.map(lambda key_data: key_data + 1, variables["noise_keys"])
            variables = {**variables, "noise_keys": noise_keys}
        reconstruction, sown = self.model.apply(
            variables, images, positions, rngs=rngs, mutable=["intermediates"]
        )
        noisy = images
        if self.model_config.first_layer == "noise":
            epsilon = sown["intermediates"]["input_noise"]["epsilon"][0]
            noisy = images + self.model_config.noise_scale * epsilon
        return reconstruction, noisy

    def eval_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], parallel: ParallelContext
    ) -> dict[str, jax.Array]:
        reconstruction, noisy = self._reconstruct(state, batch["image"], batch["position"])
        results = {
            "reconstruction_psnr": jnp.mean(reconstruction_psnr(reconstruction, batch["image"])),
            "reconstruction_mse": jnp.mean(jnp.square(reconstruction - batch["image"])),
        }
        if self.model_config.first_layer == "noise":
            results["noisy_input_psnr"] = jnp.mean(reconstruction_psnr(noisy, batch["image"]))
            # The same network fed the clean image (N = 0): noise as a training-only augmentation.
            clean = self.model.clone(noise_scale=0.0).apply(
                state.variables, batch["image"], batch["position"], rngs={"noise": state.rng}
            )
            results["clean_input_psnr"] = jnp.mean(reconstruction_psnr(clean, batch["image"]))
        if self.model_config.first_layer == "nib":
            # How much of N reaches the output: the reconstruction with an independent N'.
            redrawn, _ = self._reconstruct(state, batch["image"], batch["position"], True)
            results["nib_noise_psnr"] = jnp.mean(
                reconstruction_psnr(redrawn, jnp.clip(reconstruction, -1.0, 1.0))
            )
        results = cross_replica_mean(results, parallel)
        if self.model_config.first_layer == "nib" and self.model_config.nib.combine == "symmetric":
            kernel = state.params["nib"]["fused_conv"]["kernel"]
            results["nib_asymmetry"] = nib_asymmetry(kernel, batch["image"].shape[-1])
        return results

    # --- host side --------------------------------------------------------------------------
    def reconstruct(self, state: TrainState, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Host arrays ``(reconstruction, first-layer input)`` of (B, H, W, 1) images, rows at
        positions 0 … B−1 with the eval noise (for 'noise' the input is I + N, else I)."""
        positions = jnp.arange(images.shape[0], dtype=jnp.int32)
        reconstruction, noisy = self._reconstruct_jit(state, jnp.asarray(images), positions)
        return np.asarray(reconstruction), np.asarray(noisy)

    def report(self, state: TrainState, workdir: str, step: int) -> dict[str, float]:
        """Figure 5 for this run's variant: a held-out image, I + N (this run's noise for
        'noise', a reference draw of N(0, σ) otherwise), the reconstruction and its error map."""
        out = pathlib.Path(workdir) / "report" / f"step_{step:07d}"
        image = report_image(self.eval_config.report_image_size)
        reconstruction, noisy = self.reconstruct(state, image)
        if self.model_config.first_layer != "noise":
            noisy = reference_noisy_input(image, self.model_config.noise_scale)
        name = {layer: variant for variant, layer in VARIANT_FIRST_LAYERS.items()}
        reconstructions = {name[self.model_config.first_layer]: reconstruction[0]}
        psnrs = save_figure5(out / "figure5.png", image[0], noisy[0], reconstructions)
        return {f"{variant}/report_psnr": value for variant, value in psnrs.items()}


def report_image(size: int) -> np.ndarray:
    """The (1, size, size, 1) held-out image of Figure 5: the first of `EVAL_IMAGE_NAMES`."""
    return _loaded_samples(EVAL_IMAGE_NAMES[:1], size)


def reference_noisy_input(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """I + N, N ~ N(0, σ²) per pixel from ``seed``: the noisy image of Figure 5 (d) for a run
    whose model does not add noise itself."""
    noise = np.random.default_rng(seed).normal(0.0, sigma, image.shape).astype(np.float32)
    return image + noise


def error_map_rgb(error: np.ndarray, max_error: float) -> np.ndarray:
    """|error| (H, W, 1) colour-coded with matplotlib's 'inferno' map, 0 → black, ``max_error``
    and above → pale yellow: an (H, W, 3) float array in [0, 1]."""
    from matplotlib import colormaps

    unit = np.clip(np.abs(error[..., 0]) / max_error, 0.0, 1.0)
    return colormaps["inferno"](unit)[..., :3]


def save_figure5(
    path: str | os.PathLike,
    image: np.ndarray,
    noisy: np.ndarray,
    reconstructions: Mapping[str, np.ndarray],
    max_error: float | None = None,
) -> dict[str, float]:
    """Figure 5's layout as one PNG: the top row holds the input and each variant's
    reconstruction (titled with its PSNR on this image), the bottom row the noisy input I + N
    (the paper's (d)) and each variant's colour-coded error map under its reconstruction, all on
    one scale (`error_map_rgb`): ``max_error``, or the 99th percentile of every shown |error|.
    Returns each variant's PSNR on this image."""
    errors = {name: np.clip(r, -1.0, 1.0) - image for name, r in reconstructions.items()}
    if max_error is None:
        max_error = max(float(np.percentile(np.abs(np.stack(list(errors.values()))), 99)), 1e-3)
    psnrs = {
        name: float(reconstruction_psnr(jnp.asarray(r[None]), jnp.asarray(image[None]))[0])
        for name, r in reconstructions.items()
    }

    def gray(x: np.ndarray) -> np.ndarray:
        return np.repeat((np.clip(x, -1.0, 1.0) + 1.0) / 2.0, 3, axis=-1)

    names = list(reconstructions)
    top = [gray(image)] + [gray(reconstructions[name]) for name in names]
    bottom = [gray(noisy)] + [error_map_rgb(errors[name], max_error) for name in names]
    titles = ["input", *(f"{name}: {psnrs[name]:.2f} dB" for name in names)]
    titles += ["(d) input + N", *(f"{name} |error| 0-{max_error:.3f}" for name in names)]
    save_image_grid(path, top + bottom, titles, ncols=len(top), value_range=(0.0, 1.0))
    return psnrs
