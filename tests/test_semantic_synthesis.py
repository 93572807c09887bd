"""Semantic synthesis (NIB paper, section 4.1): label maps, generators, losses, backends, resume."""

from __future__ import annotations

import copy
import functools
import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research import config_schema as cs
from noise_research.data import label_maps
from noise_research.models import semantic_synthesis as models
from noise_research.tasks import semantic_synthesis as synthesis
from noise_research.train.loop import LoopConfig, train


def test_label_maps_are_flat_segments_and_photographs_vary_inside_them():
    size = (32, 32)
    for index in range(6):
        labels, image = label_maps.label_map_pair(3, index, size)
        again_labels, again_image = label_maps.label_map_pair(3, index, size)
        np.testing.assert_array_equal(labels, again_labels)
        np.testing.assert_array_equal(image, again_image)
        assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 6
        assert image.shape == (32, 32, 3) and np.abs(image).max() <= 1.0
        # Flat segments: a pixel shares its right and lower neighbours' class almost everywhere
        # (only segment borders differ), unlike a textured or noisy map.
        same = np.mean(labels[:, 1:] == labels[:, :-1]) + np.mean(labels[1:] == labels[:-1])
        assert same / 2 > 0.85
        # Texture: inside each sizeable segment but the sky (a gradient), the photograph varies.
        for label in range(1, 6):
            inside = labels == label
            if inside.sum() >= 20:
                assert image[inside].std(axis=0).max() > 0.03, (index, label)
    _, other_image = label_maps.label_map_pair(3, 6, size)
    assert not np.array_equal(other_image, image)
    assert not np.array_equal(label_maps.label_map_pair(4, 5, size)[1], image)


def test_batches_split_by_position_and_carry_the_factors():
    whole = label_maps.LabelMapBatches(4, (16, 16), 1, 0, 1).batch(2)
    halves = [label_maps.LabelMapBatches(4, (16, 16), 1, p, 2).batch(2) for p in range(2)]
    for key in ("label", "image", "position"):
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
    np.testing.assert_array_equal(whole["position"], [8, 9, 10, 11])
    expected = np.stack([label_maps.label_map_factors(1, p) for p in range(8, 12)])
    np.testing.assert_array_equal(whole["factors"], expected)
    assert expected.shape == (4, len(label_maps.FACTOR_CLASSES))


def _param_paths(params) -> list[str]:
    return [
        "/".join(str(k.key) for k in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
    ]


@pytest.mark.parametrize("architecture", ["pix2pix", "spade"])
def test_generator_shapes_and_every_layer_reading_the_label_map_is_the_nib(architecture):
    labels = jax.nn.one_hot(jnp.zeros((2, 16, 16), jnp.int32), 6)
    nib = dict(models.REGISTERED_NIB, stationary=False)
    paths, tops = {}, {}
    for first_layer in ("conv", "nib"):
        generator = models.build_generator(
            architecture,
            width=4,
            levels=2,
            first_layer=first_layer,
            nib=nib if first_layer == "nib" else None,
        )
        rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
        variables = jax.eval_shape(generator.init, rngs, labels)  # traced, not compiled
        images = jax.eval_shape(
            functools.partial(generator.apply, rngs={"noise": jax.random.key(2)}),
            variables,
            labels,
            jnp.arange(2),
        )
        chex.assert_shape(images, (2, 16, 16, 3))
        tops[first_layer] = set(variables["params"])
        paths[first_layer] = _param_paths(variables["params"])
    plain = [p for p in paths["conv"] if "first_conv" in p]
    nibs = [p for p in paths["nib"] if "/nib/" in p or p.startswith("nib/")]
    assert not [p for p in paths["nib"] if "first_conv" in p]
    # The NIB's fused f1/f2 kernel replaces each plain first convolution, one for one.
    assert sorted(p.replace("first_conv", "nib/fused_conv") for p in plain) == sorted(nibs)
    expected = 1 if architecture == "pix2pix" else 1 + 2 * 3 + 2  # fc, 3 blocks, 2 shortcuts
    assert len([p for p in nibs if p.endswith("kernel")]) == expected
    if architecture == "pix2pix":  # the U-Net's first layer, at the top of the tree
        assert tops["nib"] - tops["conv"] == {"nib"} and tops["conv"] - tops["nib"] == {
            "first_conv"
        }


def test_the_patch_discriminator_returns_logits_and_features_per_scale():
    discriminator = models.PatchDiscriminator(width=4, num_layers=2, num_scales=2)
    inputs = jnp.zeros((3, 32, 32, 9))
    variables = jax.eval_shape(discriminator.init, jax.random.key(0), inputs)
    logits, features = jax.eval_shape(discriminator.apply, variables, inputs)
    assert [x.shape for x in logits] == [(3, 8, 8, 1), (3, 4, 4, 1)]
    assert [[f.shape[-1] for f in scale] for scale in features] == [[4, 8, 16]] * 2


def test_adversarial_and_feature_matching_losses():
    logits = jnp.array([-2.0, 0.5, 3.0])
    loss = synthesis.adversarial_loss
    np.testing.assert_allclose(loss("hinge", logits, True, True), np.mean([3.0, 0.5, 0.0]))
    np.testing.assert_allclose(loss("hinge", logits, False, True), np.mean([0.0, 1.5, 4.0]))
    np.testing.assert_allclose(loss("hinge", logits, True, False), -0.5)
    np.testing.assert_allclose(
        loss("non_saturating", logits, False, True),
        np.mean(np.log1p(np.exp(logits))),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        loss("non_saturating", logits, True, False),
        np.mean(np.log1p(np.exp(-logits))),
        rtol=1e-6,
    )
    np.testing.assert_allclose(loss("lsgan", logits, False, True), np.mean(logits**2))
    fake = ((jnp.ones((1, 2, 2, 1)), jnp.zeros((1, 1, 1, 2))),)
    real = ((jnp.zeros((1, 2, 2, 1)), jnp.full((1, 1, 1, 2), 3.0)),)
    np.testing.assert_allclose(synthesis.feature_matching_loss(fake, real), (1.0 + 3.0) / 2)


def _tiny_config(architecture: str, **train_overrides) -> dict:
    """8² label maps, width 2, batch 8, NIB F-D-N (dynamic noise keyed by position); Pix2Pix
    with 2 levels and dropout 0.5 (per-row masks keyed by position, in every decoder level but
    the outermost, so it needs 2), SPADE with 1 level and feature matching
    (one discriminator scale: the multi-scale shapes have their own test). Adam's ε = 1, as in
    the GAN tests: a parameter whose gradient vanishes analytically (a bias before an instance
    norm) gets reduction-order noise, which Adam's first step turns into ±lr; with ε = 1 the
    update is ≈ lr·g, so backends compare."""
    config = synthesis.experiment_config(architecture=architecture, demo=True).to_dict()
    config["data"].update(resolution=8, batch_size=8)
    config["model"].update(
        width=2,
        levels=2 if architecture == "pix2pix" else 1,
        discriminator_width=2,
        discriminator_layers=1,
        discriminator_scales=1,
        dropout=0.5 if architecture == "pix2pix" else 0.0,
    )
    config["optimizer"]["eps"] = 1.0
    config["eval"].update(batch_size=8, num_batches=1, fid_batches=0)
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
    cs.validate(config, synthesis.config_rules(), num_devices=8)
    return config


def _train(config: dict, workdir, num_devices: int = 1, parallel: str = "jit", evaluate=True):
    """The loop on ``config``; ``evaluate=False`` skips the final evaluation (an empty eval set:
    one compile less where only the training steps are compared)."""
    config = copy.deepcopy(config)
    config["train"]["parallel"] = parallel
    task = synthesis.build(config)
    if not evaluate:
        task.num_eval_batches = 0
    devices = jax.devices()[:num_devices]
    return train(task, LoopConfig(**config["train"]), str(workdir), devices=devices)


def _assert_same_run(many, one, atol: float) -> None:
    for player in ("generator", "generator_ema", "discriminator"):
        chex.assert_trees_all_close(
            getattr(many.state, player), getattr(one.state, player), atol=atol
        )
    for name, value in one.train_metrics.items():
        if name not in ("steps_per_second", "window_steps"):
            np.testing.assert_allclose(many.train_metrics[name], value, rtol=1e-4, err_msg=name)


def test_pix2pix_on_eight_devices_under_jit_and_pmap_is_the_one_device_run_and_resumes(tmp_path):
    """D, G, D steps with dropout and dynamic NIB noise keyed by position: 8 devices under jit
    and under pmap give the one-device run; a run stopped after 2 steps resumes to the straight
    run's state bit for bit."""
    config = _tiny_config("pix2pix")
    one = _train(config, tmp_path / "one")
    assert [synthesis.build(config).step_kind(s) for s in range(3)] == [
        "discriminator",
        "generator",
        "discriminator",
    ]
    assert {"l1", "psnr"} <= set(one.eval_metrics)
    assert "discriminator_loss" in one.train_metrics  # the last logged step is a D step
    for parallel in ("jit", "pmap"):
        many = _train(config, tmp_path / parallel, 8, parallel, evaluate=False)
        _assert_same_run(many, one, atol=1e-5)
    first = copy.deepcopy(config)
    first["train"]["num_steps"] = 2
    assert _train(first, tmp_path / "resumed").step == 2
    resumed = _train(config, tmp_path / "resumed")
    assert resumed.resumed_from == 2
    chex.assert_trees_all_equal(resumed.state, one.state)


def test_spade_on_eight_devices_under_jit_and_pmap_is_the_one_device_run(tmp_path):
    """SPADE with feature matching and dynamic NIB noise keyed by position (under pmap each
    device sees only its rows): a D and a G step on 8 devices under jit and under pmap give the
    one-device run."""
    config = _tiny_config("spade", num_steps=2)
    one = _train(config, tmp_path / "one", evaluate=False)
    assert {"feature_matching_loss", "generator_adversarial_loss"} <= set(one.train_metrics)
    for parallel in ("jit", "pmap"):
        many = _train(config, tmp_path / parallel, 8, parallel, evaluate=False)
        _assert_same_run(many, one, atol=1e-5)


@pytest.mark.parametrize("architecture", ["pix2pix", "spade"])
def test_every_config_variant_validates_and_bad_names_are_rejected(architecture):
    module = importlib.import_module(f"configs.semantic_synthesis.{architecture}")
    for variant in (*synthesis.VARIANTS, None):
        config = module.get_config(variant).to_dict()
        cs.validate(config, synthesis.config_rules(), num_devices=1)
        first_layer, demo = synthesis.variant_from_arg(variant)
        assert config["model"]["architecture"] == architecture
        assert config["model"]["first_layer"] == first_layer
        assert (config["data"]["resolution"] == 32) == demo
    with pytest.raises(ValueError, match=r"'nib_tiny' is unknown; allowed: plain, nib, plain_demo"):
        module.get_config("nib_tiny")
    bad = module.get_config("nib_demo").to_dict()
    bad["model"]["dropout"] = 0.5
    if architecture == "spade":
        with pytest.raises(cs.ConfigError, match=r"model.dropout = 0.5: not allowed"):
            cs.validate(bad, synthesis.config_rules(), num_devices=1)
    bad["data"]["resolution"] = 36
    with pytest.raises(cs.ConfigError, match=r"data.resolution = 36: not allowed.*2\*\*model"):
        cs.validate(bad, synthesis.config_rules(), num_devices=1)
