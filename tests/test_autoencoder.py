"""The contamination autoencoder (NIB paper, section 3.3): its three first layers, the PSNR, the
task under both backends and on resume, the config variants."""

from __future__ import annotations

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research import config_schema
from noise_research.layers.nib import NoiseIncentiveBlock
from noise_research.models.autoencoder import ConvAutoencoder
from noise_research.registry import get_block
from noise_research.tasks import autoencoder
from noise_research.train.loop import LoopConfig, train


def _init(model, images):
    return model.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, images)


@pytest.mark.parametrize("first_layer", ["conv", "noise", "nib"])
def test_model_shapes_latent_and_registered_blocks(first_layer):
    images = jnp.linspace(-1, 1, 4 * 8 * 8).reshape(4, 8, 8, 1)
    model = ConvAutoencoder(width=4, latent_channels=8, first_layer=first_layer)
    variables = _init(model, images)
    outputs, captured = model.apply(
        variables,
        images,
        rngs={"noise": jax.random.key(2)},
        capture_intermediates=lambda module, _: module.name == "latent_conv",
    )
    chex.assert_shape(outputs, images.shape)
    chex.assert_type(outputs, jnp.float32)
    chex.assert_shape(captured["intermediates"]["latent_conv"]["__call__"][0], (4, 4, 4, 8))
    assert model.latent_ratio() == 2.0
    name = {"conv": "autoencoder_plain"}.get(first_layer, f"autoencoder_{first_layer}")
    module, _, rng_names = get_block(name)(None)
    assert module.first_layer == first_layer
    assert rng_names == (("noise",) if first_layer == "noise" else ())


def test_model_rejects_odd_sides_and_nib_settings_elsewhere():
    with pytest.raises(ValueError, match="must be even"):
        _init(ConvAutoencoder(width=4), jnp.zeros((4, 7, 8, 1)))
    with pytest.raises(ValueError, match="first_layer='noise'; drop nib"):
        ConvAutoencoder(width=4, first_layer="noise", nib={"noise_scale": 0.3})
    with pytest.raises(ValueError, match=r"allowed: \('conv', 'noise', 'nib'\)"):
        ConvAutoencoder(width=4, first_layer="gauss")


def test_additive_noise_perturbs_each_row_by_its_position_not_its_place_in_the_batch():
    images = jnp.full((4, 8, 8, 1), 0.25)
    model = ConvAutoencoder(width=4, first_layer="noise", noise_scale=0.3)
    variables = _init(model, images)
    key = {"noise": jax.random.key(7)}
    positions = jnp.array([10, 11, 12, 13], jnp.int32)
    batch = model.apply(variables, images, positions, rngs=key)
    # Identical rows, different positions: different noise, so different outputs.
    assert float(jnp.abs(batch[0] - batch[1]).max()) > 1e-3
    # A row alone with its position (another device's share, another batch) is the same row.
    alone = model.apply(variables, images[2:3], positions[2:3], rngs=key)
    chex.assert_trees_all_close(alone[0], batch[2], atol=1e-6)
    # It is I + N with N of std σ: the sown ε is standard normal.
    _, sown = model.apply(variables, images, positions, rngs=key, mutable=["intermediates"])
    epsilon = sown["intermediates"]["input_noise"]["epsilon"][0]
    assert 0.8 < float(jnp.std(epsilon)) < 1.2
    # σ = 0 is the plain model with the same params.
    quiet = ConvAutoencoder(width=4, first_layer="noise", noise_scale=0.0)
    plain = ConvAutoencoder(width=4, first_layer="conv")
    chex.assert_trees_all_close(
        quiet.apply(variables, images, positions, rngs=key),
        plain.apply(variables, images, positions),
        atol=1e-6,
    )


def test_nib_variant_is_the_noise_incentive_block_and_cancels_n_when_f1_equals_f2():
    images = jax.random.uniform(jax.random.key(3), (4, 8, 8, 1), minval=-1, maxval=1)
    model = ConvAutoencoder(width=4, first_layer="nib", nib={"noise_scale": 0.3})
    variables = _init(model, images)
    called = {}

    def record(next_fun, args, kwargs, context):
        called[context.module.name] = context.module
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, images)
    assert type(called["nib"]) is NoiseIncentiveBlock
    assert called["nib"].stationary and called["nib"].noise_scale == 0.3
    assert called["nib"].combine == "symmetric" and called["nib"].distribution == "normal"
    kernel = variables["params"]["nib"]["fused_conv"]["kernel"]
    chex.assert_shape(kernel, (3, 3, 2, 4))  # f1 and f2 over (I + N, I − N)
    other_noise = jax.tree.map(lambda k: k + 1, variables["noise_keys"])

    def output(kernel, noise_keys):
        params = dict(variables["params"])
        params["nib"] = {"fused_conv": {**params["nib"]["fused_conv"], "kernel": kernel}}
        return model.apply({"params": params, "noise_keys": noise_keys}, images)

    # f1 ≠ f2: the noise map reaches the output; f1 = f2: f(I+N) + f(I−N) = 2 f(I), N cancels.
    assert (
        float(jnp.abs(output(kernel, other_noise) - output(kernel, variables["noise_keys"])).max())
        > 1e-3
    )
    tied = kernel.at[:, :, 1].set(kernel[:, :, 0])
    assert float(autoencoder.nib_asymmetry(tied, 1)) == 0.0
    assert 0.5 < float(autoencoder.nib_asymmetry(kernel, 1)) < 2.0  # independent f1, f2 at init
    chex.assert_trees_all_close(
        output(tied, other_noise), output(tied, variables["noise_keys"]), atol=1e-5
    )


def test_reconstruction_psnr_matches_the_numpy_formula():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    reconstruction = image + rng.normal(0, 0.05, image.shape).astype(np.float32)
    reconstruction[0, 0, 0, 0] = 3.0  # outside [−1, 1]: clipped to 1 first
    clipped = np.clip(reconstruction, -1, 1).astype(np.float64)
    expected = 10 * np.log10(4.0 / np.mean((clipped - image) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(
        autoencoder.reconstruction_psnr(jnp.asarray(reconstruction), jnp.asarray(image)),
        expected,
        rtol=1e-5,
    )


def test_figure5_puts_each_variant_over_its_error_map_on_one_scale(tmp_path):
    from PIL import Image

    from noise_research.viz.images import GRID_PADDING_PX, TITLE_HEIGHT_PX

    image = np.linspace(-1, 1, 16 * 16, dtype=np.float32).reshape(16, 16, 1)
    good, bad = image + 0.01, image + np.where(image > 0, 0.2, -0.2)
    psnrs = autoencoder.save_figure5(
        tmp_path / "f.png", image, image + 0.3, {"plain": good, "noise": bad}, max_error=0.2
    )
    np.testing.assert_allclose(psnrs["plain"], 10 * np.log10(4 / 0.01**2), rtol=1e-3)
    assert psnrs["noise"] < psnrs["plain"]
    # Two rows (reconstructions, error maps) of three 16² cells with a title band each.
    pad, title = GRID_PADDING_PX, TITLE_HEIGHT_PX
    size = (3 * (16 + pad) + pad, 2 * (16 + title + pad) + pad)
    assert Image.open(tmp_path / "f.png").size == size
    quiet, loud = (
        autoencoder.error_map_rgb(good - image, 0.2),
        autoencoder.error_map_rgb(np.clip(bad, -1, 1) - image, 0.2),
    )
    assert quiet.mean() < 0.1 < loud.mean()  # 'inferno': small errors dark, 0.2 and up bright


def _tiny_config(first_layer: str = "noise", **train_overrides) -> dict:
    config = autoencoder.experiment_config(first_layer=first_layer, demo=True).to_dict()
    config["data"].update(crop_size=16, source_size=64, batch_size=8)
    config["model"].update(width=4, latent_channels=4)
    # A constant rate: a run stopped at 2 of 4 steps is the same run (train.num_steps is free).
    config["optimizer"].update(schedule="constant", warmup_steps=0)
    config["eval"].update(image_size=32, tile_size=16, batch_size=8, report_image_size=32)
    config["train"].update(
        num_steps=3,
        log_every=1,
        eval_every=100,
        checkpoint_every=1000,
        final_report=False,
        progress=False,
        async_checkpoints=False,
    )
    config["train"].update(train_overrides)
    config_schema.validate(config, autoencoder.config_rules(), num_devices=8)
    return config


def _train(config, workdir, count=1):
    task = autoencoder.build(config)
    loop = LoopConfig(**config["train"])
    return train(task, loop, str(workdir), devices=jax.devices()[:count])


def test_noise_variant_resumes_bit_exact_and_runs_on_8_devices_under_jit_and_pmap_alike(tmp_path):
    """Stopped at step 2 and resumed to 4, a run ends bit-exact where the straight run does (one
    device); on 8 devices, jit and pmap split the batch differently, and the additive noise,
    keyed by each row's global position, keeps the run the same."""
    straight = _train(_tiny_config("noise", num_steps=4), tmp_path / "straight")
    assert _train(_tiny_config("noise", num_steps=2), tmp_path / "resumed").step == 2
    resumed = _train(_tiny_config("noise", num_steps=4), tmp_path / "resumed")
    assert resumed.resumed_from == 2 and resumed.step == 4
    for field in ("step", "params", "model_state", "opt_state", "rng"):
        chex.assert_trees_all_equal(getattr(resumed.state, field), getattr(straight.state, field))
    assert resumed.eval_metrics == straight.eval_metrics
    assert straight.eval_metrics["noisy_input_psnr"] < 20.0  # σ = 0.3: ≈ 16.5 dB
    for parallel in ("jit", "pmap"):
        run = _train(_tiny_config("noise", num_steps=4, parallel=parallel), tmp_path / parallel, 8)
        chex.assert_trees_all_close(run.state.params, straight.state.params, atol=1e-4)
        for key in ("loss",):
            np.testing.assert_allclose(
                run.train_metrics[key], straight.train_metrics[key], rtol=1e-5
            )
        for key in ("reconstruction_psnr", "noisy_input_psnr"):
            np.testing.assert_allclose(run.eval_metrics[key], straight.eval_metrics[key], rtol=1e-5)


def test_data_rows_are_functions_of_their_position_and_eval_tiles_are_held_out():
    config = _tiny_config()
    task = autoencoder.build(config)
    whole = task.train_source(0, 1).batch(5)
    halves = [task.train_source(p, 2).batch(5) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), whole["image"])
    np.testing.assert_array_equal(whole["position"], 5 * 8 + np.arange(8))
    assert whole["image"].min() >= -1 and whole["image"].max() <= 1
    assert not set(autoencoder.EVAL_IMAGE_NAMES) & set(autoencoder.TRAIN_IMAGE_NAMES)
    assert task.num_eval_batches == 2  # 4 images × 2² tiles, 8 per batch
    tiles = np.concatenate([task.eval_source(0, 1).batch(i)["image"] for i in range(2)])
    image = autoencoder.report_image(32)[0]
    np.testing.assert_array_equal(tiles[1], image[:16, 16:])  # tile 1: row 0, column 1


def test_config_rules_accept_every_shipped_variant_and_name_the_allowed_ones():
    from configs.autoencoder import contamination

    for arg in autoencoder.VARIANTS:
        config = contamination.get_config(arg).to_dict()
        num_devices = 8 if not arg.endswith("_demo") else 4
        config_schema.validate(config, autoencoder.config_rules(), num_devices=num_devices)
    assert contamination.get_config("nib").model.first_layer == "nib"
    assert contamination.get_config("plain_demo").model.first_layer == "conv"
    allowed = "allowed: plain, plain_demo, noise, noise_demo, nib, nib_demo"
    for arg in ("nib-demo", None):
        with pytest.raises(ValueError, match=re.escape(allowed)):
            contamination.get_config(arg)
    config = contamination.get_config("nib_demo").to_dict()
    config["eval"]["batch_size"] = 12
    with pytest.raises(config_schema.ConfigError, match=r"divides the 16 eval tiles"):
        config_schema.validate(config, autoencoder.config_rules(), num_devices=4)


def test_experiment_table_pairs_the_gaps_per_seed_over_the_common_steps():
    from noise_research.experiments import contamination

    def run(variant, seed, psnrs, **probes):
        return {
            "variant": variant,
            "seed": seed,
            "psnr_by_step": {str(s): p for s, p in zip((10, 20), psnrs, strict=True)},
            **{f"{k}_by_step": {"10": v, "20": v} for k, v in probes.items()},
        }

    results = [
        run("plain", 0, (30.0, 40.0)),
        run("noise", 0, (25.0, 26.0)),
        run("nib", 0, (28.0, 39.0), nib_asymmetry=0.5, nib_noise_psnr=45.0),
        run("plain", 1, (32.0, 42.0)),
        run("noise", 1, (25.0, 28.0)),
        run("nib", 1, (30.0, 43.0), nib_asymmetry=0.3, nib_noise_psnr=47.0),
    ]
    table, steps = contamination.summarize(results)
    assert steps == [10, 20]
    gap = table["NIB − plain"]["step_20"]
    assert (gap["mean"], gap["n"]) == (0.0, 2)
    np.testing.assert_allclose(gap["std"], np.std([-1.0, 1.0], ddof=1))
    assert table["plain − noise"]["step_10"]["mean"] == 6.0
    assert table[contamination.ASYMMETRY]["step_10"]["mean"] == pytest.approx(0.4)
    budget = {
        "seeds": [0, 1],
        "eval_tiles": 16,
        "tile_size": 32,
        "config": "c",
        "width": 16,
        "latent_channels": 8,
        "crop_size": 32,
        "batch_size": 8,
        "steps": 20,
        "mean_train_seconds": 60.0,
        "wall_seconds": 200.0,
        "device": "cpu",
    }
    markdown = contamination.format_markdown(table, steps, budget)
    assert "| NIB − plain | -2.00 ± 0.00 | 0.00 ± 1.41 |" in markdown
    assert "plain / noise / NIB: 41.00 / 27.00 / 41.00 dB" in markdown
    assert "47.95 / 35.54 / 48.56 dB" in markdown
    # One seed: the value alone, no "± 0.00" (the JSON's cell still has std 0 and n 1).
    one_seed, steps = contamination.summarize([r for r in results if r["seed"] == 0])
    assert one_seed["plain"]["step_20"] == {"mean": 40.0, "std": 0.0, "n": 1}
    markdown = contamination.format_markdown(one_seed, steps, {**budget, "seeds": [0]})
    assert "| plain | 30.00 | 40.00 |" in markdown
    assert "| NIB − plain | -2.00 | -1.00 |" in markdown
    assert not [line for line in markdown.splitlines() if line.startswith("| ") and "±" in line]
