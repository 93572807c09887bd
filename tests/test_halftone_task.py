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
    gray = jnp.zeros((1, size, size, 1))
    checker = jnp.where((jnp.arange(size)[:, None] + jnp.arange(size)[None, :]) % 2 == 0, 1.0, -1.0)
    halves = jnp.where(jnp.arange(size)[None, :] < size // 2, 1.0, -1.0) * jnp.ones((size, 1))
    weights = halftone.HalftoneLoss()
    _, checker_terms = halftone.halftone_losses(checker[None, :, :, None], gray, 1, weights)
    _, halves_terms = halftone.halftone_losses(halves[None, :, :, None], gray, 1, weights)
    assert checker_terms["blue_noise_loss"] < 0.1 * halves_terms["blue_noise_loss"]
    assert checker_terms["tone_loss"] < halves_terms["tone_loss"]
    assert checker_terms["quantization_loss"] == 0.0


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
        chex.assert_trees_all_close(runs[name].state.params, runs["one"].state.params, atol=2e-5)
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
    header, _, *rows = (out / "comparison.md").read_text().splitlines()
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


def test_the_halftoner_trains_where_grain_tfds_and_ml_collections_are_absent(tmp_path):
    """The GPU machine has none of them: the comic halftoner must train through the loop."""
    script = f"""
import dataclasses, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("grain", "tensorflow_datasets", "ml_collections"):
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
assert not {{"grain", "tensorflow_datasets", "ml_collections"}} & set(sys.modules)
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
