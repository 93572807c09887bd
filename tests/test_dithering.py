"""Deep neural dithering (the NIB paper's section 4.3): the structure term, the dithering configs,
their training under both backends and resume, the sample crops and the experiment's table."""

from __future__ import annotations

import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from configs.halftone import dithering as dithering_configs
from noise_research import config_schema
from noise_research.classical import ordered_dither
from noise_research.data.sample_crops import TRAINING_SAMPLE_NAMES, SampleCropBatches
from noise_research.data.sample_images import DEFAULT_SAMPLE_IMAGE_NAMES
from noise_research.experiments import dithering
from noise_research.tasks import halftone
from noise_research.train.loop import LoopConfig, train
from tests.test_halftone_task import _reference_losses


def _batch(seed: int = 0, size: int = 24):
    """3 textured training rows and 1 constant-gray row, a continuous output y."""
    rng = np.random.default_rng(seed)
    gray = rng.uniform(-1, 1, size=(4, size, size, 1)).astype(np.float32)
    gray[:3] = np.cumsum(gray[:3], axis=2) / size  # smoother, structured rows
    gray[3] = 0.2
    y = np.tanh(rng.normal(0.0, 1.5, size=gray.shape)).astype(np.float32)
    return y, gray


_losses = jax.jit(halftone.halftone_losses, static_argnums=(2, 3))


def test_structure_term_is_one_minus_skimage_ssim_of_the_binarized_training_rows():
    y, gray = _batch()
    weights = halftone.HalftoneLoss(structure_weight=0.7)
    loss, terms = _losses(y, gray, 1, weights)
    # Independent: scikit-image's SSIM (Gaussian window σ 1.5, population statistics, border of
    # the 11×11 window cropped) of sign(y) and the gray, both on [0, 1], training rows only.
    halftones = np.where(y >= 0, 1.0, 0.0)
    expected = np.mean(
        [
            1.0
            - structural_similarity(
                halftones[i, ..., 0],
                (gray[i, ..., 0] + 1.0) / 2.0,
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(terms["structure_loss"], expected, rtol=1e-4)
    _, without = _losses(y, gray, 1, halftone.HalftoneLoss())
    np.testing.assert_allclose(loss, without["loss"] + 0.7 * expected, rtol=1e-5)
    # It sees the halftone (a rescaled y binarizes alike) and not the constant-gray row.
    rescaled = y.copy()
    rescaled[:3] *= 0.3
    rescaled[3] = -rescaled[3]
    _, other = _losses(rescaled, gray, 1, weights)
    np.testing.assert_allclose(other["structure_loss"], terms["structure_loss"], rtol=1e-6)
    # Its straight-through gradient reaches y's training rows.
    only_structure = halftone.HalftoneLoss(
        tone_weight=0,
        constant_tone_weight=0,
        quantization_weight=0,
        blue_noise_weight=0,
        structure_weight=1.0,
    )
    gradient = jax.jit(jax.grad(lambda y: halftone.halftone_losses(y, gray, 1, only_structure)[0]))(
        y
    )
    assert np.all(np.isfinite(gradient)) and float(jnp.abs(gradient[:3]).sum()) > 0
    assert float(jnp.abs(gradient[3]).sum()) == 0.0


def test_a_halftone_with_the_images_structure_has_the_lower_structure_loss():
    """Same tone, different structure: ordered dithering of a grating with an edge against the
    same halftone with each column shuffled inside each half (each half's tone kept)."""
    size = 32
    gray = np.where(np.arange(size)[None, :] < size // 2, -0.4, 0.4) * np.ones((size, 1))
    gray = np.clip(gray + 0.7 * np.sin(np.arange(size) / 2.0)[:, None], -1, 1)
    gray = gray.astype(np.float32)[None, ..., None]
    structured = ordered_dither(gray)
    rng = np.random.default_rng(0)
    shuffled = structured.copy()
    for half in (slice(0, size // 2), slice(size // 2, size)):
        shuffled[0, :, half] = rng.permuted(shuffled[0, :, half], axis=0)
    rows = np.concatenate([gray, gray])  # one training row, one (ignored) constant row
    weights = halftone.HalftoneLoss(structure_weight=1.0)
    _, good = _losses(np.concatenate([structured, structured]), rows, 1, weights)
    _, bad = _losses(np.concatenate([shuffled, structured]), rows, 1, weights)
    # Measured: 0.69 against 0.94.
    assert good["structure_loss"] < bad["structure_loss"] - 0.1, (good, bad)


@pytest.mark.parametrize("output", ["continuous", "binary"])
def test_structure_weight_zero_is_exactly_the_halftoning_loss(output):
    y, gray = _batch(1)
    loss, terms = _losses(y, gray, 1, halftone.HalftoneLoss(output=output))
    assert halftone.HalftoneLoss().structure_weight == 0.0
    expected = _reference_losses(y, gray, 1, output)
    assert set(terms) == set(expected)  # no structure term computed or logged
    np.testing.assert_allclose(loss, expected["loss"], rtol=2e-4)


def test_dithering_variants_validate_and_differ_only_in_the_blue_noise_weight():
    configs = {
        arg: dithering_configs.get_config(arg).to_dict() for arg in halftone.DITHERING_VARIANTS
    }
    for arg, config in configs.items():
        config_schema.validate(
            config, halftone.config_rules(), num_devices=4 if "demo" in arg else 8
        )
        assert config["model"]["first_layer"] == "nib"
        assert config["loss"]["structure_weight"] > 0
    for suffix in ("", "_demo"):
        with_lb, without = (
            config_schema.flatten(configs[f"blue_noise{suffix}"]),
            config_schema.flatten(configs[f"no_blue_noise{suffix}"]),
        )
        assert {k for k in with_lb if with_lb[k] != without[k]} == {"loss.blue_noise_weight"}
        assert with_lb["loss.blue_noise_weight"] == 0.3 and without["loss.blue_noise_weight"] == 0.0
    assert config_schema.flatten(dithering_configs.get_config(None).to_dict()) == (
        config_schema.flatten(configs["blue_noise"])
    )
    with pytest.raises(ValueError, match="allowed: blue_noise, blue_noise_demo, no_blue_noise"):
        dithering_configs.get_config("blue")


def test_sample_crops_are_positional_held_out_and_mixed_with_comics():
    source = SampleCropBatches(4, (32, 32), seed=3, mix_comics=True)
    batch = source.batch(5)
    chex.assert_shape(batch["image"], (4, 32, 32, 1))
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    halves = SampleCropBatches(
        4, (32, 32), seed=3, mix_comics=True, process_index=1, process_count=2
    )
    np.testing.assert_array_equal(halves.batch(5)["image"], batch["image"][2:])
    only_samples = SampleCropBatches(4, (32, 32), seed=3).batch(5)["image"]
    np.testing.assert_array_equal(only_samples[1::2], batch["image"][1::2])  # odd rows: crops
    assert not np.array_equal(only_samples[0::2], batch["image"][0::2])  # even rows: comics
    assert not np.array_equal(only_samples[1], only_samples[3])  # a crop per position
    assert not set(TRAINING_SAMPLE_NAMES) & {*DEFAULT_SAMPLE_IMAGE_NAMES, "cat"}


def _tiny_dithering_config(num_steps: int, parallel: str = "jit") -> dict:
    config = halftone.dithering_config(blue_noise=True, demo=True).to_dict()
    config["data"].update(crop_size=16, batch_size=8, constant_batch_size=8)
    config["model"].update(width=8)
    config["eval"].update(image_size=16, batch_size=8, num_batches=1)
    config["train"].update(
        num_steps=num_steps,
        parallel=parallel,
        final_report=False,
        log_every=1,
        eval_every=100,
        checkpoint_every=1000,
        progress=False,
        async_checkpoints=False,
    )
    return config


def _train(tmp_path, name: str, num_steps: int, parallel: str, num_devices: int):
    config = _tiny_dithering_config(num_steps, parallel)
    return train(
        halftone.build(config),
        LoopConfig(**config["train"]),
        str(tmp_path / name),
        devices=jax.devices()[:num_devices],
    )


def test_dithering_trains_alike_under_jit_pmap_and_one_device_and_resumes(tmp_path):
    """3 steps on one device, on 8 under jit, and on 8 under pmap stopped after 2 and resumed."""
    one = _train(tmp_path, "one", 3, "jit", 1)
    runs = {"jit": _train(tmp_path, "jit", 3, "jit", 8)}
    assert _train(tmp_path, "pmap", 2, "pmap", 8).step == 2
    runs["pmap"] = _train(tmp_path, "pmap", 3, "pmap", 8)
    assert runs["pmap"].step == 3 and not runs["pmap"].already_finished
    assert "structure_loss" in one.train_metrics
    for name, run in runs.items():
        # Tolerances as in tests/test_halftone_task.py (Adam's first steps ≈ lr · sign(grad)).
        chex.assert_trees_all_close(run.state.params, one.state.params, atol=1e-4)
        for key in ("loss", "structure_loss", "blue_noise_loss"):
            np.testing.assert_allclose(
                run.train_metrics[key], one.train_metrics[key], rtol=1e-5, err_msg=name
            )


def test_experiment_evaluates_and_writes_table_4(tmp_path):
    methods = {
        "ordered": halftone.one_image_at_a_time(ordered_dither),
        "threshold": lambda gray: np.where(gray >= 0, 1.0, -1.0).astype(np.float32),
    }
    rows = dithering.evaluate(methods, tmp_path, sample_size=32)
    for name in ("samples.png", "spectra.png", "anisotropy.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert rows["ordered"]["tone_psnr"] > rows["threshold"]["tone_psnr"] + 3.0, rows
    assert set(rows["ordered"]["per_image"]) == set(DEFAULT_SAMPLE_IMAGE_NAMES)
    # Networks: two seeds each (mean ± std); classical rows one seed.
    results = [
        {
            "method": "ostromoukhov",
            "seed": 0,
            "tone_psnr": 39.9,
            "ssim": 0.24,
            "low_frequency_energy": 0.01,
        },
        *(
            {
                "method": row,
                "seed": seed,
                "tone_psnr": 30.0 + seed,
                "ssim": 0.3,
                "low_frequency_energy": 0.02,
            }
            for row in dithering.VARIANTS.values()
            for seed in (0, 1)
        ),
    ]
    budget = {
        "config": "c",
        "steps": 2,
        "seeds": [0, 1],
        "width": 4,
        "crop_size": 16,
        "structure_weight": 0.1,
        "samples": ["camera"],
        "sample_size": 32,
        "mean_train_seconds": 1.0,
        "wall_seconds": 2.0,
        "device": "cpu",
    }
    report = dithering.write_report(pathlib.Path(tmp_path), results, budget)
    assert json.loads((tmp_path / "dithering.json").read_text())["table"] == report["table"]
    lines = (tmp_path / "dithering.md").read_text().splitlines()
    assert lines[0].startswith("| method | tone PSNR (dB) ↑ | SSIM ↑ | low-frequency energy ↓")
    assert lines[2] == "| ostromoukhov | 39.900 | 0.240 | 0.010 |"
    # Two seeds show their spread even when it is 0; one seed (the classical rows) the value alone.
    assert lines[3] == (
        "| deep neural dithering w/o L_B | 30.500 ± 0.707 | 0.300 ± 0.000 | 0.020 ± 0.000 |"
    )
    assert "| Deep neural dithering | 36.434 | 0.3078 |" in lines
