"""Colour hiding (invertible grayscale, NIB paper section 4.2): flat-colour comics, the losses, the
uint8 evaluation, jit / pmap = one device, resume, configs."""

from __future__ import annotations

import hashlib
import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from noise_research import config_schema
from noise_research.data.colour_images import ColourCropBatches, held_out_colour_samples
from noise_research.data.procedural import ColourComicBatches, colour_comic_image, comic_image
from noise_research.metrics.halftone import psnr
from noise_research.models.invertible_grayscale import uint8_levels
from noise_research.tasks import colour_hiding
from noise_research.train.loop import LoopConfig, train
from noise_research.train.parallel import SINGLE_DEVICE
from noise_research.train.state import TrainState

LEVELS = np.arange(256) / 127.5 - 1.0


def tiny_config(first_layer: str = "nib", **train_overrides) -> dict:
    """16² crops, width 4, the smallest blocks, no pictures."""
    config = colour_hiding.experiment_config(first_layer=first_layer, demo=True).to_dict()
    config["data"].update(crop_size=16, batch_size=8)
    config["model"].update(width=4, encoder_blocks=(0, 0, 0), decoder_blocks=1)
    config["loss"]["quantization_from_step"] = 2
    config["optimizer"]["schedule"] = "constant"  # a resumed run may then train longer
    config["eval"].update(image_size=16, batch_size=8, num_batches=1, report_image_size=16)
    config["train"].update(
        num_steps=3,
        final_report=False,
        log_every=1,
        eval_every=100,
        checkpoint_every=1000,
        progress=False,
        async_checkpoints=False,
    )
    config["train"].update(train_overrides)
    return config


# --- data -----------------------------------------------------------------------------------


def test_gray_comics_are_unchanged_bit_for_bit():
    """The colour comics share the gray comics' drawing code; the gray ones must not move (the
    digest of the code before the colour version was added)."""
    images = np.stack([comic_image(7, i, (48, 40)) for i in range(6)])
    digest = hashlib.sha256(images.tobytes()).hexdigest()
    assert digest == "9b5c8bc92b4662df4f6c1496b886ee75598dfe0b9c08814b2e9f3e8e125e49e3"


def test_colour_comics_are_flat_coloured_and_deterministic():
    shares = []
    for index in range(8):
        image = colour_comic_image(3, index, (64, 64))
        chex.assert_shape(image, (64, 64, 3))
        assert image.dtype == np.float32 and image.min() >= -1.0 and image.max() <= 1.0
        np.testing.assert_array_equal(image, colour_comic_image(3, index, (64, 64)))
        # Flat colour: a few exact colours cover much of every image (a gradient sky or shape
        # takes the rest).
        _, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
        shares.append(np.sort(counts)[::-1][:8].sum() / 64**2)
        # Colour, not gray: the channels differ on many pixels.
        assert np.mean(np.ptp(image, axis=-1) > 0.1) > 0.3, index
    assert min(shares) > 0.35 and np.mean(shares) > 0.65, shares
    first = colour_comic_image(3, 0, (64, 64))
    assert not np.array_equal(first, colour_comic_image(3, 1, (64, 64)))
    assert not np.array_equal(first, colour_comic_image(4, 0, (64, 64)))


@pytest.mark.parametrize("source", ["comic", "mixed"])
def test_colour_batches_are_the_same_global_batch_for_any_process_count(source):
    def shards(count, cls, **kwargs):
        batches = [
            cls(4, (16, 16), seed=2, process_index=p, process_count=count, **kwargs)
            for p in range(count)
        ]
        return [b.batch(5) for b in batches]

    cls, kwargs = (
        (ColourComicBatches, {}) if source == "comic" else (ColourCropBatches, {"source": source})
    )
    whole, halves = shards(1, cls, **kwargs)[0], shards(2, cls, **kwargs)
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), whole["image"])
    np.testing.assert_array_equal(whole["position"], 20 + np.arange(4))
    chex.assert_shape(whole["image"], (4, 16, 16, 3))


def test_held_out_embedded_images_are_colour_quadrants():
    images = held_out_colour_samples(16)
    chex.assert_shape(images, (8, 16, 16, 3))
    assert np.mean(np.ptp(images, axis=-1)) > 0.05


# --- losses and metrics -----------------------------------------------------------------------


def test_uint8_levels_and_quantization_loss_match_the_minimum_over_256_levels():
    rng = np.random.default_rng(0)
    gray = rng.uniform(-1, 1, size=(2, 8, 8, 1)).astype(np.float32)
    nearest = np.min(np.abs(gray[..., None] - LEVELS), axis=-1)
    np.testing.assert_allclose(np.abs(gray - uint8_levels(gray)), nearest, atol=1e-6)
    colour = np.zeros((2, 8, 8, 3), np.float32)
    weights = colour_hiding.ColourHidingLoss()

    def quantization(g):
        return colour_hiding.colour_hiding_losses(colour, g, colour, weights, True)[1][
            "quantization_loss"
        ]

    np.testing.assert_allclose(quantization(gray), nearest.mean(), rtol=1e-5)
    on_levels = LEVELS[rng.integers(256, size=gray.shape)].astype(np.float32)
    assert float(quantization(on_levels)) < 1e-6
    between = np.clip(on_levels + 1 / 255, -1, 1 - 1 / 255)  # half a level step away
    np.testing.assert_allclose(quantization(between), 1 / 255, rtol=1e-3)


def _reference_losses(colour, gray, restored, stage):
    """Xia et al.'s terms written out in numpy with the authors' weights."""
    colour, gray, restored = (np.asarray(a, np.float64) for a in (colour, gray, restored))
    luminance = (0.299 * colour[..., 0] + 0.587 * colour[..., 1] + 0.114 * colour[..., 2])[
        ..., None
    ]

    def tv(images):
        h, w = images.shape[1:3]
        return (
            np.abs(np.diff(images, axis=1)).sum((1, 2, 3))
            + np.abs(np.diff(images, axis=2)).sum((1, 2, 3))
        ) / (h * w)

    restoration = np.mean((restored - colour) ** 2)
    lightness = np.mean(np.maximum(np.abs(gray - luminance) - 70 / 127.5, 0))
    structure = np.mean(np.abs(tv(gray) - tv(luminance)))
    quantization = np.mean(np.min(np.abs(gray[..., None] - LEVELS), axis=-1))
    loss = 3 * restoration + lightness + (0.1 if stage else 0.5) * structure
    loss += 10 * quantization if stage else 0.0
    return {
        "restoration_loss": restoration,
        "lightness_loss": lightness,
        "structure_loss": structure,
        "quantization_loss": quantization,
        "loss": loss,
    }


@pytest.mark.parametrize("stage", [False, True])
def test_losses_follow_xia_et_al_with_the_authors_weights(stage):
    rng = np.random.default_rng(1)
    colour = rng.uniform(-1, 1, size=(3, 12, 12, 3)).astype(np.float32)
    # Gray far from and near the luminance: some pixels inside the 70-level tolerance, some out.
    gray = np.tanh(rng.normal(0, 1.5, size=(3, 12, 12, 1))).astype(np.float32)
    restored = np.tanh(rng.normal(0, 1, size=colour.shape)).astype(np.float32)
    loss, terms = jax.jit(
        lambda c, g, r, s: colour_hiding.colour_hiding_losses(
            c, g, r, colour_hiding.ColourHidingLoss(), s
        )
    )(colour, gray, restored, jnp.asarray(stage))
    for name, value in _reference_losses(colour, gray, restored, stage).items():
        np.testing.assert_allclose(terms[name], value, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(loss, terms["loss"])


def test_lightness_is_free_within_70_levels_and_linear_beyond():
    colour = np.full((1, 8, 8, 3), 0.1, np.float32)  # luminance 0.1
    weights = colour_hiding.ColourHidingLoss()
    for offset, expected in ((60 / 127.5, 0.0), (-80 / 127.5, 10 / 127.5)):
        gray = np.full((1, 8, 8, 1), 0.1 + offset, np.float32)
        _, terms = colour_hiding.colour_hiding_losses(colour, gray, colour, weights, False)
        np.testing.assert_allclose(terms["lightness_loss"], expected, atol=1e-6)


def test_flat_region_mask_marks_only_constant_neighbourhoods():
    colour = np.zeros((1, 16, 16, 3), np.float32)
    colour[:, :, 8:, 0] = 0.5  # a vertical edge between columns 7 and 8
    mask = np.asarray(colour_hiding.flat_region_mask(jnp.asarray(colour)))[0, ..., 0]
    assert mask[8, 3] == 1 and mask[8, 12] == 1  # far from the edge and the border
    assert mask[8, 6] == 0 and mask[8, 9] == 0  # the 5×5 window crosses the edge
    assert mask[0, 3] == 0  # the window would leave the image


# --- model ----------------------------------------------------------------------------------


def random_state(task: colour_hiding.ColourHidingTask, seed: int = 0) -> TrainState:
    """A state of ``task``'s model with N(0, 0.2) numpy weights and a random stationary-noise key:
    no init to compile (shapes from `jax.eval_shape`), and a decoder whose output depends on its
    input (the N(0, 0.02) init makes it nearly constant)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(
        task.model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3), jnp.float32)
    )

    def fill(leaf):
        if leaf.dtype == jnp.uint32:
            return jnp.asarray(rng.integers(2**32, size=leaf.shape, dtype=np.uint32))
        return jnp.asarray(rng.normal(0.0, 0.2, size=leaf.shape).astype(np.float32))

    variables = jax.tree_util.tree_map(fill, shapes)
    return TrainState.create(variables=variables, tx=optax.identity(), rng=jnp.zeros(2, jnp.uint32))


def test_plain_encoder_maps_flat_colour_to_flat_gray_and_the_nib_does_not():
    # 64²: the centre 16² lies farther than the encoder's receptive-field radius (22 px) from
    # the zero-padded border.
    flat = jnp.full((1, 64, 64, 3), 0.3)
    spreads = {}
    for first_layer in ("conv", "nib"):
        task = colour_hiding.build(tiny_config(first_layer))
        state = random_state(task)
        gray = jax.jit(lambda v, x, m=task.model: m.apply(v, x, method="encode"))(
            state.variables, flat
        )
        spreads[first_layer] = float(jnp.std(gray[0, 24:-24, 24:-24, 0]))
    assert spreads["conv"] < 1e-6 < 1e-4 < spreads["nib"], spreads


# --- the task through the loop ----------------------------------------------------------------


def test_evaluation_decodes_the_grayscale_rounded_to_uint8(monkeypatch):
    """The eval step decodes `uint8_levels(gray)`: with a 4-level stand-in for the rounding, its
    PSNR is that of the 4-level gray's colour (an eval that skipped the rounding would report the
    continuous gray's)."""
    task = colour_hiding.build(tiny_config())
    state = random_state(task)
    batch = task.eval_source(0, 1).batch(0)
    colour = jnp.asarray(batch["comic"])

    def four_levels(gray):
        return jnp.round((gray + 1.0) * 1.5) / 1.5 - 1.0

    monkeypatch.setattr(colour_hiding, "uint8_levels", four_levels)
    metrics = jax.jit(lambda s, b: task.eval_step(s, b, SINGLE_DEVICE))(state, batch)

    @jax.jit
    def decoded_psnr(variables):
        gray = task.model.apply(variables, colour, method="encode")
        return [
            jnp.mean(psnr(task.model.apply(variables, g, method="decode"), colour))
            for g in (four_levels(gray), gray)
        ]

    quantized, continuous = decoded_psnr(state.variables)
    np.testing.assert_allclose(metrics["comic/psnr"], quantized, rtol=1e-5)
    np.testing.assert_allclose(metrics["comic/psnr_continuous"], continuous, rtol=1e-5)
    assert abs(quantized - continuous) > 0.01, (quantized, continuous)


def test_jit_and_pmap_on_8_devices_match_one_device_and_resume_is_exact(tmp_path):
    """NIB with dynamic noise keyed by position, 3 steps across the quantization stage (step 2)."""
    config = tiny_config()
    config["model"]["nib"]["stationary"] = False
    runs = {}
    for name, parallel, count in [("one", "jit", 1), ("jit", "jit", 8), ("pmap", "pmap", 8)]:
        config["train"]["parallel"] = parallel
        runs[name] = train(
            colour_hiding.build(config),
            LoopConfig(**config["train"]),
            str(tmp_path / name),
            devices=jax.devices()[:count],
        )
    for name in ("jit", "pmap"):
        chex.assert_trees_all_close(runs[name].state.params, runs["one"].state.params, atol=1e-4)
        for key in ("loss", "quantization_loss"):
            np.testing.assert_allclose(
                runs[name].train_metrics[key], runs["one"].train_metrics[key], rtol=1e-5
            )
        np.testing.assert_allclose(
            runs[name].eval_metrics["comic/psnr"],
            runs["one"].eval_metrics["comic/psnr"],
            rtol=1e-5,
        )
    # Resume: 1 step, then on to 3 in the same workdir = the straight 3-step run.
    config["train"]["parallel"] = "jit"
    for steps in (1, 3):
        config["train"]["num_steps"] = steps
        resumed = train(
            colour_hiding.build(config),
            LoopConfig(**config["train"]),
            str(tmp_path / "resumed"),
            devices=jax.devices()[:1],
        )
    assert resumed.resumed_from == 1
    chex.assert_trees_all_equal(resumed.state.params, runs["one"].state.params)
    chex.assert_trees_all_equal(resumed.state.opt_state, runs["one"].state.opt_state)


# --- configs ----------------------------------------------------------------------------------


def test_every_config_variant_validates_and_bad_names_list_the_allowed_ones():
    module = importlib.import_module("configs.colour_hiding.invertible_grayscale")
    for arg, first_layer, num_devices in [
        (None, "nib", 8),
        ("plain", "conv", 8),
        ("nib", "nib", 8),
        ("plain_demo", "conv", 4),
        ("nib_demo", "nib", 4),
    ]:
        config = module.get_config(arg).to_dict()
        config_schema.validate(config, colour_hiding.config_rules(), num_devices=num_devices)
        assert config["model"]["first_layer"] == first_layer, arg
    with pytest.raises(ValueError, match="allowed: plain, nib, plain_demo, nib_demo"):
        module.get_config("nib_dmeo")
    config = module.get_config("nib_demo").to_dict()
    config["data"]["crop_size"] = 30
    with pytest.raises(config_schema.ConfigError, match=r"data.crop_size = 30.*multiple of 4"):
        config_schema.validate(config, colour_hiding.config_rules(), num_devices=1)
