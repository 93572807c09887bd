"""Positive noise in the classification task: configs, place and kind rules, training steps of
every kind (ResNet) and one on a ViT, the global roll under jit and pmap, predict_fn, padding."""

from __future__ import annotations

import copy
import functools
import importlib
import json
import operator

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from noise_research import config_schema as cs
from noise_research.tasks import classify
from noise_research.train.loop import LoopConfig, train
from noise_research.train.metric_writer import read_metrics
from noise_research.train.parallel import SINGLE_DEVICE
from tests.test_resnet import _random_variables

CONFIG_FILES = ("digits", "cifar10", "imagenet2012")


def _config_module(name: str):
    return importlib.import_module(f"configs.positive_noise.{name}")


def tiny_config(arg: str = "linear", **noise) -> dict:
    """ResNet-10 of width 4 (or the tiny ViT) on 8² digits, batches of 8, two steps."""
    config = _config_module("digits").get_config(arg).to_dict()
    config["model"].update(depth=10, width=4)
    config["model"]["noise"].update(noise)
    config["data"].update(image_size=8, batch_size=8, eval_batch_size=27, num_eval_batches=1)
    config["optimizer"]["warmup_steps"] = 0
    config["train"].update(
        num_steps=2, log_every=1, eval_every=100, checkpoint_every=100,
        progress=False, async_checkpoints=False, final_report=False,
    )  # fmt: skip
    return config


def _validated_task(config: dict, num_devices: int = 1) -> classify.ClassifyTask:
    cs.validate(config, classify.config_rules(), num_devices=num_devices)
    return classify.build(config)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_variant_validates_with_the_papers_strength_and_place(name):
    module = _config_module(name)
    depth, vit_size = module.get_config().model.depth, module.get_config("vit_none").model.vit_size
    for arg in classify.NOISE_ARGS:
        task = _validated_task(module.get_config(arg).to_dict())
        architecture, kind = classify.noise_variant_from_arg(arg)
        model = task.model_config
        assert (model.architecture, model.noise.kind) == (architecture, kind)
        assert model.noise.strength == {"gaussian": 1.0, "linear": 0.4, "salt_pepper": 0.1}.get(
            kind
        )
        assert not model.noise.at_eval
        insertions = classify.noise_insertions(model, SINGLE_DEVICE, at_eval=False)
        if kind == "none":
            assert insertions == {}
        else:  # before the last block: stage 4's last block / the last encoder block
            last = {18: "stage4.block2", 50: "stage4.block3"}[depth]
            vit_last = {"tiny": "block4", "S": "block12", "B": "block12"}[vit_size]
            assert list(insertions) == [vit_last if architecture == "vit" else last]
    with pytest.raises(ValueError, match="config argument 'vitlinear' is unknown; allowed: none, "):
        module.get_config("vitlinear")
    assert set(module.SWEEP_GRIDS) == {"strength", "type_strength", "layer", "vit_layer", "at_eval"}


@pytest.mark.parametrize(
    ("arg", "key", "value", "allowed"),
    [
        ("linear", "model.noise.place", "stage5.block1", "'default' or one of the model's places: "
         "stem, stage1.block1, stage1.block1.last_subblock, stage1, .*, stage4.block1, "),
        ("vit_linear", "model.noise.place", "stage4.block1", "places: embedding, block1, .*block4"),
        ("linear", "model.noise.kind", "uniform", "one of 'none', 'gaussian', 'linear', "),
        ("linear", "model.noise.strength", 1.5, r"α in \[0, 1\] for 'linear'"),
        ("salt_pepper", "model.noise.strength", 1.0, r"α in \[0, 1\) for 'salt_pepper'"),
        ("gaussian", "model.noise.per_device", True, "True with model.noise.kind 'linear' or "),
        ("vit_none", "model.quantizer.kind", "pow", "'none' with model.architecture = 'vit'"),
        ("vit_none", "model.patch_size", 3, "with model.architecture = 'vit', divides data.image"),
        ("none", "model.architecture", "mlp", "one of 'resnet', 'vit'"),
    ],
)  # fmt: skip
def test_bad_noise_and_architecture_values_are_named(arg, key, value, allowed):
    config = tiny_config(arg)
    *sections, leaf = key.split(".")
    functools.reduce(operator.getitem, sections, config)[leaf] = value
    with pytest.raises(cs.ConfigError, match=rf"^config.{key} = {value!r}: not allowed.*{allowed}"):
        cs.validate(config, classify.config_rules(), num_devices=1)


def test_a_padded_evaluation_batch_is_refused_for_the_batch_mixing_kinds_at_eval():
    """The padding rule: 297 test digits in batches of 100 pad the third batch with 3 rows, which
    'linear' / 'optimal_q' at evaluation would mix into real rows."""
    for kind in ("linear", "optimal_q"):
        config = tiny_config(kind, at_eval=True)
        config["data"].update(eval_batch_size=100, num_eval_batches=0)
        with pytest.raises(
            cs.ConfigError,
            match=r"^config.data.eval_batch_size = 100: not allowed; with model.noise.kind = "
            rf"'{kind}' .* must divide the eval split's 297 examples, or data.num_eval_batches "
            r"must be at most 2 \(full batches only\)$",
        ):
            classify.build(config).eval_source(0, 1)
        config["data"]["num_eval_batches"] = 2  # the full batches only
        assert classify.build(config).num_eval_batches == 2
    # Unmixed evaluation counts the real rows by the mask: padding is harmless there.
    for kind, at_eval in (("linear", False), ("gaussian", True), ("none", True)):
        config = tiny_config(kind, at_eval=at_eval)
        config["data"].update(eval_batch_size=100, num_eval_batches=0)
        assert classify.build(config).num_eval_batches == 3


@pytest.fixture(scope="module")
def resnet_state():
    """The initial state of the tiny ResNet-10 (no noise layer has variables: one for all kinds),
    initialised under jit with the classic threefry, as the loop does (eager: 5× slower)."""
    task = classify.build(tiny_config("none"))
    batch = task.train_source(0, 1).batch(0)
    with jax.threefry_partitionable(False):
        return jax.jit(task.init)(jax.random.key(0), batch)


def _losses_of_steps(task, state, batches) -> list[float]:
    step = jax.jit(lambda s, b: task.train_step(s, b, SINGLE_DEVICE))
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == len(batches)
    return losses


def test_each_noise_kind_trains_on_digits_and_the_draws_follow_the_positions(resnet_state):
    """Two SGD steps of every kind from one initial state: all finite; the noise is in the
    training forward pass (the first loss differs from the noiseless training-mode loss); the
    Gaussian and salt-and-pepper draws are keyed by position, so a permuted batch gives the
    same loss (keyed by row index, it would not)."""
    plain = classify.build(tiny_config("none"))
    source = plain.train_source(0, 1)
    batches = [source.batch(0), source.batch(1)]
    # The noiseless training forward pass: BatchNorm with the batch's statistics, no noise.
    forward = plain.predict_fn(inject=True, batch_norm_batch_stats=True)
    logits = forward(resnet_state, batches[0]["image"], batches[0]["position"])
    plain_loss = float(
        jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batches[0]["label"]))
    )
    permutation = np.array([3, 0, 7, 1, 6, 2, 5, 4])
    for kind in ("gaussian", "linear", "optimal_q", "salt_pepper"):
        task = _validated_task(tiny_config(kind))
        losses = _losses_of_steps(task, resnet_state, batches)
        assert np.all(np.isfinite(losses)), (kind, losses)
        assert abs(losses[0] - plain_loss) > 1e-3, (kind, losses, plain_loss)
        if kind in classify.RANDOM_NOISE_KINDS:
            permuted = jax.tree.map(lambda rows: rows[permutation], batches[0])
            (permuted_loss,) = _losses_of_steps(task, resnet_state, [permuted])
            np.testing.assert_allclose(permuted_loss, losses[0], rtol=1e-5, err_msg=kind)


@pytest.mark.multidevice
def test_eight_devices_give_the_one_device_run_for_linear_noise_under_jit_and_pmap(tmp_path):
    """A tiny ViT with linear-transform noise in training and at evaluation: the noise rolls
    the global batch, so 8 devices of 2 rows each give the run of one device under either
    backend (with per-device rolls they would not)."""
    config = tiny_config("vit_linear", at_eval=True)
    config["data"].update(batch_size=16, eval_batch_size=16)
    # SGD: updates proportional to the gradients. (Adam's first update is ±lr for any gradient
    # ≫ ε, e.g. the attention key biases' ≈ 0 ones, made of reduction-order noise.)
    config["optimizer"].update(name="sgd", learning_rate=0.1, weight_decay=0.0)
    runs = {}
    for parallel, num_devices in (("jit", 1), ("jit", 8), ("pmap", 8)):
        run_config = copy.deepcopy(config)
        run_config["train"]["parallel"] = parallel
        workdir = tmp_path / f"{parallel}{num_devices}"
        task = _validated_task(run_config, num_devices)
        devices = jax.devices()[:num_devices]
        runs[parallel, num_devices] = (
            train(task, LoopConfig(**run_config["train"]), str(workdir), devices=devices),
            read_metrics(str(workdir), split="train"),
        )
    one, one_records = runs["jit", 1]
    assert one.step == 2 and one.eval_metrics["weight"] == 16.0
    assert one.state.model_state == {}  # a ViT has no BatchNorm statistics
    for key in (("jit", 8), ("pmap", 8)):
        many, many_records = runs[key]
        chex.assert_trees_all_close(many.state.params, one.state.params, atol=1e-6)
        for record, expected in zip(many_records, one_records, strict=True):
            np.testing.assert_allclose(record["loss"], expected["loss"], rtol=1e-5, err_msg=key)
        for name in ("accuracy", "cross_entropy"):
            np.testing.assert_allclose(
                many.eval_metrics[name], one.eval_metrics[name], rtol=1e-5, err_msg=str(key)
            )


def _neighbour_dependence(predict, state, images, positions) -> np.ndarray:
    """max |Δ logits| per row when row 1's image is replaced by row 5's."""
    changed = images.at[1].set(images[5])
    before, after = predict(state, images, positions), predict(state, changed, positions)
    chex.assert_shape(before, (images.shape[0], 10))
    assert before.dtype == jnp.float32
    return np.max(np.abs(np.asarray(after - before)), axis=1)


def test_predict_fn_mixes_neighbours_only_when_injecting(resnet_state):
    """Linear noise (shift Q): row i takes α of row i − 1, so with inject=True replacing row 1
    changes rows 1 and 2 only; with inject=False only row 1. BatchNorm with batch statistics
    (kind 'none') mixes every row."""
    task = classify.build(tiny_config("linear"))
    batch = task.eval_source(0, 1).batch(0)
    images, positions = jnp.asarray(batch["image"][:6]), jnp.asarray(batch["position"][:6])
    # Random weights: at init (zero-γ blocks, a narrow net) most of the logits are exactly 0.
    variables = _random_variables(classify.build_model(task.model_config), images.shape)
    state = resnet_state.replace(
        params=variables["params"], model_state={"batch_stats": variables["batch_stats"]}
    )
    injected = _neighbour_dependence(task.predict_fn(inject=True), state, images, positions)
    assert injected[1] > 0 and injected[2] > 1e-4, injected
    np.testing.assert_array_equal(injected[[0, 3, 4, 5]], 0.0)
    plain = _neighbour_dependence(task.predict_fn(inject=False), state, images, positions)
    assert plain[1] > 0
    np.testing.assert_array_equal(plain[[0, 2, 3, 4, 5]], 0.0)
    # The plain model is the training-only config's evaluation model.
    np.testing.assert_allclose(
        task.predict_fn(inject=False)(state, images, positions),
        jax.jit(task.logits)(state, images, positions),
        rtol=1e-6,
    )

    none_task = classify.build(tiny_config("none"))
    batch_stats = none_task.predict_fn(inject=True, batch_norm_batch_stats=True)
    mixed = _neighbour_dependence(batch_stats, state, images, positions)
    assert np.all(mixed > 1e-6), mixed
    with pytest.raises(ValueError, match="batch_norm_batch_stats=True needs inject=True"):
        none_task.predict_fn(inject=False, batch_norm_batch_stats=True)
    with pytest.raises(ValueError, match="'vit' has no BatchNorm"):
        classify.build(tiny_config("vit_none")).predict_fn(inject=True, batch_norm_batch_stats=True)


def test_leakage_audit_mode_audits_the_real_test_rows_of_a_checkpoint(resnet_state, tmp_path):
    """``mode='leakage_audit'`` on linear noise: every real test digit once (the padded third
    eval batch's 3 padding rows dropped); at batch 1 the roll of a row onto itself is the identity,
    so the accuracy equals the plain model's; the on-model's logits depend on the batch, the
    plain model's do not. A ViT without noise has nothing that mixes samples."""
    config = tiny_config("linear")
    config["data"].update(eval_batch_size=100, num_eval_batches=0)
    config["leakage"].update(batch_sizes=(1, 16, 64), independence_samples=8)
    task = _validated_task(config)
    image_shape = task.eval_source(0, 1).batch(0)["image"].shape
    variables = _random_variables(classify.build_model(task.model_config), image_shape)
    state = resnet_state.replace(
        params=variables["params"], model_state={"batch_stats": variables["batch_stats"]}
    )
    metrics = task.run_mode("leakage_audit", state, str(tmp_path), step=2)
    out = tmp_path / "leakage"
    audit = json.loads((out / "audit.json").read_text())
    assert audit["num_samples"] == 297
    assert {"off", "batch1", "batch16", "batch64_shuffled", "batch64_sorted"} <= set(audit)
    assert audit["batch1"] == audit["off"]
    assert audit["independence"]["on"]["max_abs_delta"] > 0
    assert audit["independence"]["off"]["max_abs_delta"] == 0
    assert metrics["leakage/batch64_sorted"] == audit["batch64_sorted"]
    assert (out / "audit.md").stat().st_size > 0 and (out / "audit.png").stat().st_size > 0

    vit = tiny_config("vit_none")
    with pytest.raises(cs.ConfigError, match="nothing in this model mixes samples"):
        classify.build(vit).run_mode("leakage_audit", state, str(tmp_path), step=2)
