"""The halftoning trainer: losses, straight-through gradient, PRNG policy, NIB vs plain, report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
import scipy.ndimage
import tensorflow_datasets as tfds

from noise_research import config_schema
from noise_research.tasks import halftone
from noise_research.train.loop import LoopConfig, train
from noise_research.train.rng import step_rngs
from tests.halftone_configs import tiny_halftone_config


def test_binarize_is_sign_forward_and_identity_backward():
    y = jnp.array([-0.7, -0.01, 0.0, 0.2, 0.99])
    chex.assert_trees_all_equal(halftone.binarize(y), jnp.array([-1.0, -1.0, 1.0, 1.0, 1.0]))
    gradient = jax.grad(lambda v: jnp.sum(halftone.binarize(v) * jnp.arange(5.0)))(y)
    chex.assert_trees_all_close(gradient, jnp.arange(5.0))


def test_blue_noise_loss_prefers_high_frequency_patterns():
    """On mid-gray, a checkerboard (all power at the highest frequency) beats two flat halves."""
    size = 32
    gray = jnp.zeros((2, size, size, 1))
    checker = jnp.where((jnp.arange(size)[:, None] + jnp.arange(size)[None, :]) % 2 == 0, 1.0, -1.0)
    halves = jnp.where(jnp.arange(size)[None, :] < size // 2, 1.0, -1.0) * jnp.ones((size, 1))
    weights = halftone.HalftoneLoss()
    terms = {}
    for name, pattern in (("checker", checker), ("halves", halves)):
        pair = jnp.stack([pattern, pattern])[..., None]  # one "real" row, one constant row
        _, terms[name] = halftone.halftone_losses(pair, gray, 1, weights)
    assert terms["checker"]["blue_noise_loss"] < 0.1 * terms["halves"]["blue_noise_loss"]
    assert terms["checker"]["constant_tone_loss"] < terms["halves"]["constant_tone_loss"]
    assert terms["checker"]["quantization_loss"] == 0.0


def _reference_losses(y, gray, num_constant, output):
    """The authors' loss, written out in numpy/scipy: 0.6 tone(real) + 0.3 tone(constant) +
    0.1 (quant(real) + quant(constant)) / 2 + 0.3 blue noise, tone and blue noise on `output`
    ('continuous' y or its sign), the blur unpadded, the DCT on [0, 1] with a 50/256 block."""
    y, gray = np.asarray(y, np.float64), np.asarray(gray, np.float64)
    shaped = y if output == "continuous" else np.where(y >= 0, 1.0, -1.0)

    def blur(images):
        return np.stack(
            [scipy.ndimage.gaussian_filter(im[..., 0], 2.0, truncate=2.5) for im in images]
        )[:, 5:-5, 5:-5]

    def tone(rows):
        return np.mean((blur(shaped[rows]) - blur(gray[rows])) ** 2)

    def quant(rows):
        return np.mean(np.abs(np.abs(y[rows]) - 1.0))

    real, constant = slice(0, len(y) - num_constant), slice(len(y) - num_constant, None)
    block = int(np.ceil(50 / 256 * y.shape[1]))
    dct = scipy.fft.dctn((shaped[constant] - gray[constant]) / 2.0, axes=(1, 2), norm="ortho")
    blue_noise = np.mean(np.abs(dct[:, :block, :block]))
    return {
        "tone_loss": tone(real),
        "constant_tone_loss": tone(constant),
        "quantization_loss": (quant(real) + quant(constant)) / 2,
        "blue_noise_loss": blue_noise,
        "loss": 0.6 * tone(real)
        + 0.3 * tone(constant)
        + 0.1 * (quant(real) + quant(constant)) / 2
        + 0.3 * blue_noise,
    }


@pytest.mark.parametrize("output", ["continuous", "binary"])
def test_losses_follow_the_authors_weights_ranges_and_unpadded_blur(output):
    rng = np.random.default_rng(0)
    # 3 training rows and 1 constant-gray row: unequal groups, so a loss averaged over the joined
    # batch weighs them differently from the authors' per-group means.
    gray = rng.uniform(-1, 1, size=(4, 24, 24, 1)).astype(np.float32)
    gray[3] = 0.4
    y = np.tanh(rng.normal(0.0, 1.5, size=gray.shape)).astype(np.float32)
    loss, terms = jax.jit(
        lambda y, gray: halftone.halftone_losses(y, gray, 1, halftone.HalftoneLoss(output=output))
    )(y, gray)
    expected = _reference_losses(y, gray, 1, output)
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name], value, rtol=2e-4, err_msg=name)
    np.testing.assert_allclose(loss, expected["loss"], rtol=2e-4)


def test_continuous_losses_see_y_and_binary_losses_see_the_straight_through_halftone():
    """y = ±0.5 everywhere binarizes to exact ±1 checkerboard tone; only 'binary' sees that."""
    size = 16
    checker = jnp.where((jnp.arange(size)[:, None] + jnp.arange(size)[None, :]) % 2 == 0, 1.0, -1.0)
    y = jnp.stack([0.5 * checker, 0.5 * checker])[..., None]
    gray = jnp.zeros_like(y)
    _, continuous = halftone.halftone_losses(y, gray, 1, halftone.HalftoneLoss())
    _, binary = halftone.halftone_losses(y, gray, 1, halftone.HalftoneLoss(output="binary"))
    # Both see a zero-mean checkerboard (tone ≈ 0); the binarized one has twice the amplitude, so
    # its tiny residual is 4× larger; the quantization loss always sees y.
    np.testing.assert_allclose(binary["tone_loss"], 4 * continuous["tone_loss"], rtol=1e-3)
    assert continuous["quantization_loss"] == binary["quantization_loss"] == 0.5
    gradient = jax.grad(
        lambda y: halftone.halftone_losses(y, gray, 1, halftone.HalftoneLoss(output="binary"))[0]
    )(y)
    assert np.all(np.isfinite(gradient)) and float(jnp.abs(gradient).sum()) > 0


def test_losses_need_both_kinds_of_rows():
    with pytest.raises(
        ValueError, match=r"needs training rows and constant-gray rows; got 0 and 2"
    ):
        halftone.halftone_losses(
            jnp.zeros((2, 16, 16, 1)), jnp.zeros((2, 16, 16, 1)), 2, halftone.HalftoneLoss()
        )


def test_config_rules_accept_every_shipped_config():
    from configs.halftone import demo, nib_resnet, nib_unet, plain_resnet, plain_unet

    for module in (nib_resnet, nib_unet, plain_resnet, plain_unet):
        for arg, num_devices in ((None, 8), ("demo", 4)):
            config = module.get_config(arg).to_dict()
            config_schema.validate(config, halftone.config_rules(), num_devices=num_devices)
    config_schema.validate(demo.get_config().to_dict(), halftone.config_rules(), num_devices=1)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.nib.noise_scale", -0.3, "config.model.nib.noise_scale = -0.3: not allowed"),
        ("model.first_layer", "nibb", "one of 'conv', 'nib'"),
        ("data.batch_size", 6, "divisible by the device count (4)"),
        ("model.nib.combine", "impulse", "needs model.nib.distribution='bernoulli'"),
        ("train.parallel", "pjit", "one of 'jit', 'pmap'"),
    ],
)
def test_bad_config_values_name_key_value_and_rule(key, value, message):
    config = tiny_halftone_config()
    section, *rest = key.split(".")
    node = config[section]
    for part in rest[:-1]:
        node = node[part]
    node[rest[-1]] = value
    with pytest.raises(config_schema.ConfigError, match=re.escape(message)):
        config_schema.validate(config, halftone.config_rules(), num_devices=4)


def test_unknown_key_in_config_file_is_reported_with_suggestion():
    config = tiny_halftone_config()
    config["model"]["widht"] = 8
    with pytest.raises(
        config_schema.ConfigError,
        match=r"config.model.widht = 8: unknown key; did you mean config.model.width",
    ):
        config_schema.validate(config, halftone.config_rules(), num_devices=1)


def test_noise_keys_differ_per_step_and_kind_and_stationary_keys_do_not_change(tmp_path):
    root = jax.random.PRNGKey(0)
    per_step = [step_rngs(root, jnp.int32(s))["noise"] for s in range(3)]
    per_kind = [step_rngs(root, jnp.int32(0), kind=k)["noise"] for k in ("train", "generator")]
    assert len({tuple(np.asarray(k)) for k in per_step + per_kind[1:]}) == 4

    config = tiny_halftone_config(num_steps=2, parallel="pmap")
    task = halftone.build(config)
    initial = task.init(
        jax.random.PRNGKey(config["train"]["seed"]), task.train_source(0, 1).batch(0)
    )
    result = train(task, LoopConfig(**config["train"]), str(tmp_path), devices=jax.devices()[:2])
    # Stationary noise keys: untouched by training on 2 devices, identical after a restore.
    chex.assert_trees_all_equal(
        result.state.model_state["noise_keys"], initial.model_state["noise_keys"]
    )
    resumed = train(halftone.build(config), LoopConfig(**config["train"]), str(tmp_path))
    chex.assert_trees_all_equal(
        resumed.state.model_state["noise_keys"], initial.model_state["noise_keys"]
    )


def test_joined_batch_positions_number_images_then_constants_for_any_process_count():
    config = tiny_halftone_config()
    task = halftone.build(config)
    step, images, constants = 3, config["data"]["batch_size"], config["data"]["constant_batch_size"]
    joined = images + constants
    for process_count in (1, 2):
        shards = [task.train_source(p, process_count).batch(step) for p in range(process_count)]
        image_positions = np.concatenate([b["image_position"] for b in shards])
        constant_positions = np.concatenate([b["constant_position"] for b in shards])
        np.testing.assert_array_equal(image_positions, step * joined + np.arange(images))
        np.testing.assert_array_equal(
            constant_positions, step * joined + images + np.arange(constants)
        )
        whole = task.train_source(0, 1).batch(step)
        np.testing.assert_array_equal(np.concatenate([b["image"] for b in shards]), whole["image"])
        np.testing.assert_array_equal(
            np.concatenate([b["constant"] for b in shards]), whole["constant"]
        )


def test_jit_and_pmap_dynamic_noise_halftone_runs_match_one_device(tmp_path):
    """On 8 devices the joined batch is split differently by each backend (pmap joins each
    device's image and constant rows); with dynamic noise keyed by position the run is the same."""
    config = tiny_halftone_config(num_steps=3)
    config["data"].update(batch_size=8, constant_batch_size=8)
    config["model"]["nib"]["stationary"] = False
    runs = {}
    for name, parallel, count in [("one", "jit", 1), ("jit", "jit", 8), ("pmap", "pmap", 8)]:
        config["train"]["parallel"] = parallel
        runs[name] = train(
            halftone.build(config),
            LoopConfig(**config["train"]),
            str(tmp_path / name),
            devices=jax.devices()[:count],
        )
    for name in ("jit", "pmap"):
        # Adam's first steps are ≈ lr · sign(gradient) (1e-3 here), so a float reduction-order
        # difference on a near-zero gradient moves a parameter by up to ~1e-4 (3e-5 seen); a wrong
        # split or noise key moves many by ~1e-3. The losses below must agree to 1e-5.
        chex.assert_trees_all_close(runs[name].state.params, runs["one"].state.params, atol=1e-4)
        np.testing.assert_allclose(
            runs[name].train_metrics["loss"], runs["one"].train_metrics["loss"], rtol=1e-5
        )
        np.testing.assert_allclose(
            runs[name].eval_metrics["constant/tone_psnr"],
            runs["one"].eval_metrics["constant/tone_psnr"],
            rtol=1e-5,
        )


def test_nib_beats_plain_on_constant_gray_and_comics(tmp_path):
    """Same budget and seed; the plain net cannot dither flat regions (flatness degradation)."""
    results = {}
    for first_layer in ("conv", "nib"):
        config = tiny_halftone_config(first_layer, num_steps=150, eval_every=1000, log_every=50)
        # The tone loss sees the continuous output (the authors' choice), which a flat y = gray
        # satisfies; only the quantization loss pushes y to ±1, so the NIB's dithering shows once
        # the output binarizes: width 16 gets there in 150 steps (width 8: +0.9 dB only).
        config["model"]["width"] = 16
        task = halftone.build(config)
        results[first_layer] = train(
            task,
            LoopConfig(**config["train"]),
            str(tmp_path / first_layer),
            devices=jax.devices()[:1],
        ).eval_metrics
    nib, plain = results["nib"], results["conv"]
    assert nib["constant/tone_psnr"] > plain["constant/tone_psnr"] + 3.0, results
    assert nib["comic/tone_psnr"] > plain["comic/tone_psnr"], results
    assert nib["constant/fraction_binary"] > plain["constant/fraction_binary"], results


def test_tfds_dataset_trains_through_the_same_task(tmp_path):
    config = tiny_halftone_config(num_steps=2)
    config["data"]["name"] = "cifar10"
    with tfds.testing.mock_data(num_examples=16):
        task = halftone.build(config)
        batch = task.train_source(0, 1).batch(0)
        chex.assert_shape(batch["image"], (4, 32, 32, 1))
        assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
        result = train(
            task, LoopConfig(**config["train"]), str(tmp_path), devices=jax.devices()[:1]
        )
    assert np.isfinite(result.train_metrics["loss"])


def test_report_writes_pictures_and_comparison_table(tmp_path, monkeypatch):
    config = tiny_halftone_config()
    task = halftone.build(config)
    state = task.init(jax.random.PRNGKey(0), task.train_source(0, 1).batch(0))
    drawn = {}  # what the line figures were asked to draw
    for writer in ("save_line_plot", "save_line_plot_grid"):
        original = getattr(halftone, writer)

        def spy(path, curves, *args, _original=original, **kwargs):
            drawn[os.path.basename(path)] = (curves, kwargs.get("colors"))
            return _original(path, curves, *args, **kwargs)

        monkeypatch.setattr(halftone, writer, spy)
    report = task.report(jax.device_get(state), str(tmp_path), step=0)
    out = tmp_path / "report" / "step_0000000"
    for name in ("samples.png", "gray_ramps.png", "spectra.png", "anisotropy.png", "comparison.md"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "comparison.json") as f:
        table = json.load(f)["methods"]
    assert {"nib-resnet", "floyd_steinberg", "ordered"} <= set(table)
    # Spectra: one panel per gray level, each with every method; one colour per method, the same
    # in the anisotropy figure.
    spectra, spectra_colors = drawn["spectra.png"]
    assert list(spectra) == ["g = 1/8", "g = 1/4", "g = 1/2"]
    assert all(list(panel) == list(table) for panel in spectra.values())
    assert len(set(spectra_colors.values())) == len(table)
    assert drawn["anisotropy.png"][1] == spectra_colors
    # Floyd–Steinberg is blue noise: little low-frequency power on mid-gray, good tone.
    assert table["floyd_steinberg"]["constant_1/2_low_frequency_energy"] < 0.05
    assert report["floyd_steinberg/constant_tone_psnr"] > 25.0
    # The returned figures, comparison.json and comparison.md hold the same numbers.
    assert report == {f"{m}/{key}": value for m, row in table.items() for key, value in row.items()}
    table_text, caption = (out / "comparison.md").read_text().split("\n\n", 1)
    # The caption says what the run is and what to compare it with (the demo's point).
    assert "step 0 of 4" in caption and "--config.model.first_layer=conv" in caption
    header, _, *rows = table_text.splitlines()
    columns = [cell.strip() for cell in header.split("|")[2:-1]]
    markdown = {}
    for line in rows:
        method, *cells = (cell.strip() for cell in line.split("|")[1:-1])
        markdown[method] = dict(zip(columns, map(float, cells), strict=True))
    assert markdown.keys() == table.keys()
    for method, row in table.items():
        assert markdown[method].keys() == row.keys(), method
        np.testing.assert_allclose(
            [markdown[method][key] for key in row], list(row.values()), rtol=1e-3, err_msg=method
        )


def test_the_halftoner_trains_where_grain_tfds_ml_collections_and_tensorboardx_are_absent(tmp_path):
    """The GPU machine has none of them: the comic halftoner must train through the loop, its
    metrics going to metrics.jsonl alone."""
    script = f"""
import dataclasses, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("grain", "tensorflow_datasets", "ml_collections", "tensorboardX"):
            raise ImportError(name)
sys.meta_path.insert(0, Absent())
import jax
from noise_research.tasks import halftone
from noise_research.train.loop import LoopConfig, train

def values(section):
    return {{f.name: values(v) if dataclasses.is_dataclass(v := getattr(section, f.name)) else v
            for f in dataclasses.fields(section)}}

config = {{"task": "halftone", **{{k: values(s()) for k, s in halftone.SECTIONS.items()}}}}
config["train"].update(num_steps=2, final_report=False, progress=False, async_checkpoints=False)
config["data"].update(crop_size=16, batch_size=2, constant_batch_size=2)
config["model"].update(width=4)
config["model"]["nib"]["stationary"] = False
config["eval"].update(image_size=16, batch_size=2, num_batches=1)
result = train(halftone.build(config), LoopConfig(**config["train"]), {str(tmp_path)!r})
assert result.step == 2, result
assert not {{"grain", "tensorflow_datasets", "ml_collections", "tensorboardX"}} & set(sys.modules)
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "tensorboardX is not installed" in completed.stderr
    assert (tmp_path / "metrics.jsonl").read_text().count('"split": "train"') >= 1
    assert not (tmp_path / "tensorboard").exists()
