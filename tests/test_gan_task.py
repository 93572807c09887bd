"""The GAN task on the one loop: step kinds, losses, R1, EMA, backends, resume mid-R1 cycle."""

from __future__ import annotations

import copy
import dataclasses
import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research import config_schema as cs
from noise_research.tasks import gan
from noise_research.train.loop import LoopConfig, train
from noise_research.train.metric_writer import read_metrics
from noise_research.train.parallel import ParallelContext


def _tiny_config(injection: str = "riemannian", **train_overrides) -> dict:
    config = gan.experiment_config(injection=injection, demo=True).to_dict()
    config["data"].update(batch_size=8)
    config["model"].update(latent_dim=8, width=4, discriminator_width=4)
    config["loss"].update(r1_gamma=1.0, r1_every=2)
    config["eval"].update(batch_size=8, num_batches=1)
    config["train"].update(
        num_steps=6,
        log_every=2,
        eval_every=100,
        checkpoint_every=1000,
        final_report=False,
        progress=False,
        async_checkpoints=False,
    )
    config["train"].update(train_overrides)
    return config


def _tiny_stylegan2_config(injection: str = "riemannian", **train_overrides) -> dict:
    """An 8² StyleGAN2 pair (blocks b4, b8) of at most 8 channels, R1 every other D step and the
    path-length regulariser every other G step, on batches of 8 (minibatch-std groups of 4)."""
    config = _tiny_config(injection, **train_overrides)
    demo = gan.experiment_config(architecture="stylegan2", injection=injection, demo=True)
    config["model"] = demo.to_dict()["model"]
    config["model"].update(
        latent_dim=8, w_dim=8, mapping_layers=2, channel_base=32, channel_max=8, inject_at=(4, 8)
    )
    config["data"].update(resolution=8)
    config["loss"].update(path_length_weight=2.0, path_length_every=2)
    # Adam's first step is ±lr for any gradient ≫ ε: near-zero gradients (the mapping network
    # has lr multiplier 0.01) turn reduction-order noise into ±lr, which changes the next step's
    # gradients by O(1). With ε = 1 the updates are lr·g/(|g| + 1) ≈ lr·g, proportional to the
    # gradients, so backends can be compared closely (see the backend test's tolerance).
    config["optimizer"]["eps"] = 1.0
    return config


def _train(config: dict, workdir, num_devices: int = 1, parallel: str = "jit"):
    config["train"]["parallel"] = parallel
    return train(
        gan.build(config),
        LoopConfig(**config["train"]),
        str(workdir),
        devices=jax.devices()[:num_devices],
    )


def test_steps_alternate_and_r1_is_lazy():
    task = gan.build(_tiny_config())
    kinds = [task.step_kind(step) for step in range(8)]
    assert kinds == [
        "discriminator_r1",
        "generator",
        "discriminator",
        "generator",
        "discriminator_r1",
        "generator",
        "discriminator",
        "generator",
    ]
    config = _tiny_config()
    config["loss"]["r1_gamma"] = 0.0
    no_r1 = gan.build(config)
    assert set(no_r1.train_steps()) == {"discriminator", "generator"}
    assert no_r1.step_kind(0) == "discriminator"


def test_r1_penalty_of_a_linear_critic_is_the_squared_weight_norm():
    weights = jax.random.normal(jax.random.key(0), (4, 4, 3))
    reals = jax.random.normal(jax.random.key(1), (5, 4, 4, 3))
    penalty = gan.r1_penalty(lambda x: jnp.sum(x * weights, axis=(1, 2, 3)), reals)
    np.testing.assert_allclose(penalty, jnp.sum(weights**2), rtol=1e-5)


def test_each_step_kind_trains_its_own_player_and_the_ema_follows_the_generator(tmp_path):
    task = gan.build(_tiny_config())
    source = task.train_source(0, 1)
    state = task.init(jax.random.key(0), source.batch(0))
    parallel = ParallelContext()
    steps = task.train_steps()
    after_d, metrics = jax.jit(lambda s, b: steps["discriminator_r1"](s, b, parallel))(
        state, source.batch(0)
    )
    assert {"discriminator_loss", "r1_penalty", "real_logit", "fake_logit"} <= set(metrics)
    chex.assert_trees_all_equal(after_d.generator, state.generator)
    assert not np.allclose(
        after_d.discriminator["logit"]["kernel"], state.discriminator["logit"]["kernel"]
    )
    after_g, metrics = jax.jit(lambda s, b: steps["generator"](s, b, parallel))(
        after_d, source.batch(1)
    )
    assert set(metrics) == {"generator_loss"}
    chex.assert_trees_all_equal(after_g.discriminator, after_d.discriminator)
    decay = min(task.loss.ema_decay, 1 / 10)  # the ramp at the first generator step, t = 0
    assert float(gan.ema_decay(0.999, jnp.array(0))) == pytest.approx(0.1)
    assert float(gan.ema_decay(0.999, jnp.array(10**6))) == pytest.approx(0.999)
    expected_ema = jax.tree.map(
        lambda old, new: decay * old + (1 - decay) * new, after_d.generator_ema, after_g.generator
    )
    chex.assert_trees_all_close(after_g.generator_ema, expected_ema, rtol=1e-6, atol=1e-8)
    assert int(after_g.step) == 2


@pytest.mark.parametrize("architecture", ["dcgan", "stylegan2"])
def test_eight_devices_give_the_one_device_run_under_jit_and_pmap(tmp_path, architecture):
    """DCGAN's BatchNorm statistics and StyleGAN2's minibatch std over the global batch, the
    path-length mean over the global batch, latents/noise/style mixing keyed by position: a
    discriminator step and a generator step give the same run on 8 devices, under either backend,
    as on one. (R1 is off here to keep the test short: its penalty is a per-shard mean averaged
    like every other term; the one-device R1 step is covered by the resume test. StyleGAN2's
    generator step is the path-length one; its running means are checked on the one-device run.)"""
    if architecture == "dcgan":
        config, atol = _tiny_config(num_steps=2, log_every=1), 2e-4
    else:  # updates ≈ 1e-3·g (ε = 1): a wrong gradient moves a parameter by ≫ 1e-6
        config, atol = _tiny_stylegan2_config(num_steps=2, log_every=1), 1e-6
    config["loss"].update(r1_gamma=0.0, path_length_batch_shrink=1)  # 1 row per device
    one = _train(copy.deepcopy(config), tmp_path / "one")
    one_records = read_metrics(str(tmp_path / "one"), split="train")
    if architecture == "stylegan2":
        _check_stylegan2_statistics(gan.build(config), config, one, one_records)
    for parallel in ("jit", "pmap"):
        many = _train(copy.deepcopy(config), tmp_path / parallel, 8, parallel)
        chex.assert_trees_all_close(many.state.generator, one.state.generator, atol=atol)
        chex.assert_trees_all_close(many.state.discriminator, one.state.discriminator, atol=atol)
        for stats in ("discriminator_stats", "generator_stats"):
            chex.assert_trees_all_close(
                getattr(many.state, stats), getattr(one.state, stats), rtol=1e-4, atol=1e-5
            )
        many_records = read_metrics(str(tmp_path / parallel), split="train")
        for record, expected in zip(many_records, one_records, strict=True):
            assert record.keys() == expected.keys()
            for name in record.keys() - {"steps_per_second", "split"}:
                np.testing.assert_allclose(
                    record[name], expected[name], rtol=1e-4, err_msg=f"{parallel} {name}"
                )


def test_resume_in_the_middle_of_an_r1_cycle_is_bit_exact(tmp_path):
    """Steps 0-4 are discriminator_r1, generator, discriminator, generator, discriminator_r1: a
    run stopped after step 2 resumes inside the R1 cycle and ends where the straight run does."""
    straight = _train(_tiny_config(num_steps=5, checkpoint_every=3), tmp_path / "straight")
    first = _tiny_config(num_steps=3, checkpoint_every=3)
    assert _train(first, tmp_path / "resumed").step == 3
    resumed = _train(_tiny_config(num_steps=5, checkpoint_every=3), tmp_path / "resumed")
    assert resumed.resumed_from == 3
    chex.assert_trees_all_equal(resumed.state, straight.state)


def test_the_report_draws_samples_and_the_noise_std_figure(tmp_path):
    task = gan.build(_tiny_config())
    state = task.init(jax.random.key(0), task.train_source(0, 1).batch(0))
    # The authors' RNI starts with noise strength 0: raise it so the noise shows.
    generator = dict(state.generator)
    for name in [n for n in generator if n.startswith("injection")]:
        generator[name] = {**generator[name], "strength": jnp.array(0.5)}
    state = state.replace(generator_ema=generator)
    results = task.report(state, str(tmp_path), step=3)
    out = tmp_path / "report" / "step_0000003"
    assert (out / "samples.png").stat().st_size > 0 and (out / "noise_std.png").stat().st_size > 0
    assert results["noise_pixel_std"] > 0


def test_bad_config_arguments_are_named():
    with pytest.raises(ValueError, match=r"'gaussian' is unknown; allowed: none, none_demo"):
        gan.variant_from_arg("gaussian")
    assert gan.variant_from_arg("riemannian_demo") == ("riemannian", True)
    assert dataclasses.is_dataclass(gan.GanModel)


def test_stylegan2_regularisers_are_lazy_and_its_state_starts_empty():
    task = gan.build(_tiny_stylegan2_config())
    assert [task.step_kind(step) for step in range(8)] == [
        "discriminator_r1",
        "generator_path_length",
        "discriminator",
        "generator",
        "discriminator_r1",
        "generator_path_length",
        "discriminator",
        "generator",
    ]
    state = task.init(jax.random.key(0), task.train_source(0, 1).batch(0))
    assert state.discriminator_stats == {}
    chex.assert_trees_all_equal(
        state.generator_stats, {"w_avg": np.zeros(8), "path_length_mean": np.zeros(())}
    )


def _check_stylegan2_statistics(task: gan.GanTask, config: dict, run, records) -> None:
    """After a D step and a path-length G step from ā = 0, w̄ = 0: ā = 0.01 · mean a (the logged
    ``path_length``) and w̄ = (1 − 0.995) · mean w of the G step's (unmixed) w."""
    path_length = records[-1]["path_length"]
    assert {"generator_loss", "path_length", "path_length_penalty"} <= set(records[-1])
    np.testing.assert_allclose(
        run.state.generator_stats["path_length_mean"], 0.01 * path_length, rtol=1e-6
    )
    source = task.train_source(0, 1)
    initial = task.init(jax.random.PRNGKey(config["train"]["seed"]), source.batch(0))
    keys = task._step_keys(initial.replace(step=jnp.array(1)), "generator_path_length")
    positions = jnp.asarray(source.batch(1)["position"])
    _, w = task.pair.mapped(
        initial.generator, task.latents(keys["latent"], positions), positions, keys["mixing"]
    )
    np.testing.assert_allclose(
        run.state.generator_stats["w_avg"], 0.005 * np.mean(w, axis=0), rtol=1e-5, atol=1e-7
    )


class _LinearSynthesis:
    """A stand-in StyleGAN2 pair whose synthesis is images = A · ws (ws: (B, L, D)), so that
    J_wᵀ y = Aᵀ y for every row: the path-length regulariser has a closed form."""

    def __init__(self, matrix: np.ndarray, ws: np.ndarray, side: int):
        self.matrix, self.ws, self.side = jnp.asarray(matrix), jnp.asarray(ws), side

    def mapped(self, params, z, positions, mixing_key):
        return self.ws[positions], None

    def synthesize(self, params, ws, positions, noise_key):
        images = jnp.einsum("pld,bld->bp", self.matrix, ws)
        return images.reshape(ws.shape[0], self.side, self.side, 3)


def test_path_length_penalty_is_the_norm_of_the_pulled_back_image_noise():
    """a_i = √(mean_layers Σ_w (Aᵀ y_i)²) with y_i ~ N(0, I)/√(H·W) per kept row (every
    ``path_length_batch_shrink``-th), ā' = ā + decay (mean a − ā), penalty = mean (a − ā')²."""
    config = _tiny_stylegan2_config()
    config["loss"].update(path_length_decay=0.25, path_length_batch_shrink=2)
    task = gan.build(config)
    side, layers, dim, rows = 4, 3, 5, 6
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(side * side * 3, layers, dim)).astype(np.float32)
    ws = rng.normal(size=(rows, layers, dim)).astype(np.float32)
    task.pair = _LinearSynthesis(matrix, ws, side)
    keys = {name: jax.random.key(i) for i, name in enumerate(("latent", "mixing", "noise"))}
    keys["path_length"] = jax.random.key(7)
    positions = jnp.arange(rows)
    stats = {"path_length_mean": jnp.array(0.5)}
    penalty, new_mean, mean_length = task._path_length_penalty(
        None, stats, positions, keys, ParallelContext()
    )
    kept = np.arange(0, rows, 2)
    directions = (
        np.asarray(
            jax.vmap(lambda k: jax.random.normal(k, (side, side, 3)))(
                jax.vmap(lambda p: jax.random.fold_in(keys["path_length"], p))(kept)
            )
        )
        / side
    )
    pulled_back = np.einsum("pld,bp->bld", matrix, directions.reshape(len(kept), -1))
    lengths = np.sqrt(np.mean(np.sum(pulled_back**2, axis=2), axis=1))
    expected_mean = 0.5 + 0.25 * (lengths.mean() - 0.5)
    np.testing.assert_allclose(mean_length, lengths.mean(), rtol=1e-5)
    np.testing.assert_allclose(new_mean, expected_mean, rtol=1e-5)
    np.testing.assert_allclose(penalty, np.mean((lengths - expected_mean) ** 2), rtol=1e-4)


def test_evaluators_follow_the_eval_settings_and_missing_weights_are_named(tmp_path):
    config = _tiny_config()
    assert gan.build(config).evaluators() == {}
    config["eval"].update(condition_pairs=8, ppl_pairs=8, metrics_batch_size=8)
    task = gan.build(config)
    assert set(task.evaluators()) == {"condition", "ppl"}
    noise = task.sample_noise(jax.random.key(0))
    assert {side: value.shape for side, value in noise.items()} == {
        side: shape[1:] for side, shape in task.pair.noise_shapes(1).items()
    }
    config["eval"]["inception_weights"] = str(tmp_path / "pt_inception.pth")
    config["eval"]["fid_batches"] = 1
    with pytest.raises(FileNotFoundError, match=r"eval\.inception_weights"):
        gan.build(config).evaluators()
    config["eval"].update(inception_weights=None, vgg16_weights=str(tmp_path / "vgg16.pth"))
    with pytest.raises(FileNotFoundError, match=r"eval\.vgg16_weights"):
        gan.build(config).evaluators()


@pytest.mark.parametrize("config_file", ["dcgan", "stylegan2"])
def test_every_config_file_variant_is_a_valid_config_of_its_architecture(config_file):
    module = importlib.import_module(f"configs.gan.{config_file}")
    for variant in (*gan.VARIANTS, ""):
        config = module.get_config(variant).to_dict()
        cs.validate(config, gan.config_rules(), num_devices=1)
        injection, demo = gan.variant_from_arg(
            variant, "euclidean" if config_file == "stylegan2" else "none"
        )
        assert config["model"]["architecture"] == config_file
        assert config["model"]["injection"] == injection
        assert (config["data"]["name"] == "shapes") == (demo or config_file == "dcgan")
    bad = module.get_config("none_demo").to_dict()
    bad["loss"]["path_length_batch_shrink"] = 3
    if config_file == "dcgan":  # no path-length regulariser: the shrink is not used
        cs.validate(bad, gan.config_rules(), num_devices=1)
        bad["loss"]["path_length_weight"] = 2.0  # and it is StyleGAN2's only
        with pytest.raises(cs.ConfigError, match=r"path_length_weight = 2.0: not allowed"):
            cs.validate(bad, gan.config_rules(), num_devices=1)
        return
    with pytest.raises(cs.ConfigError, match=r"path_length_batch_shrink = 3: not allowed"):
        cs.validate(bad, gan.config_rules(), num_devices=1)
