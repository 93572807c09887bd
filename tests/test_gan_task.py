"""The GAN task on the one loop: step kinds, losses, R1, EMA, backends, resume mid-R1 cycle."""

from __future__ import annotations

import copy
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    chex.assert_trees_all_close(after_g.generator_ema, expected_ema, rtol=1e-6)
    assert int(after_g.step) == 2


def test_eight_devices_give_the_one_device_run_under_jit_and_pmap(tmp_path):
    """BatchNorm statistics over the global batch and latents/noise keyed by position: a
    discriminator step and a generator step give the same run on 8 devices, under either backend,
    as on one. (R1 is off here to keep the test short: its penalty is a per-shard mean averaged
    like every other term; the one-device R1 step is covered by the resume test.)"""
    config = _tiny_config(num_steps=2, log_every=1)
    config["loss"]["r1_gamma"] = 0.0
    one = _train(copy.deepcopy(config), tmp_path / "one")
    one_records = read_metrics(str(tmp_path / "one"), split="train")
    for parallel in ("jit", "pmap"):
        many = _train(copy.deepcopy(config), tmp_path / parallel, 8, parallel)
        chex.assert_trees_all_close(many.state.generator, one.state.generator, atol=2e-4)
        chex.assert_trees_all_close(many.state.discriminator, one.state.discriminator, atol=2e-4)
        chex.assert_trees_all_close(
            many.state.discriminator_stats, one.state.discriminator_stats, rtol=1e-4, atol=1e-5
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
