"""The classifier: every quantizer learns the embedded digits; eval padding; robustness mode;
the stability-training baseline."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.classify import cifar10_resnet18, digits, imagenet_resnet50
from noise_research import config_schema
from noise_research.data import digits_split_indices
from noise_research.layers.quantization import DoReFaConv, QuantizedConv
from noise_research.tasks import classify
from noise_research.train.loop import LoopConfig, train
from noise_research.train.parallel import ParallelContext

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_digits_config(variant: str = "none", **train_overrides) -> dict:
    """ResNet-10 (half of ResNet-18's convs: half the compile time) on 16² digits."""
    config = digits.get_config(variant).to_dict()
    config["model"]["depth"] = 10
    config["train"].update(
        num_steps=120, eval_every=1000, log_every=50, checkpoint_every=1000,
        progress=False, async_checkpoints=False, final_report=False,
    )  # fmt: skip
    config["train"].update(train_overrides)
    return config


def train_classifier(config: dict, workdir: str):
    config_schema.validate(config, classify.config_rules(), num_devices=1)
    task = classify.build(config)
    return task, train(task, LoopConfig(**config["train"]), workdir, devices=jax.devices()[:1])


def assert_learns_digits(result) -> None:
    # Chance is 10%; the eval covers every test digit exactly once: the padding that fills the
    # last batch (the eval batch does not divide the test split) does not count.
    test_digits = len(digits_split_indices()[1])
    assert test_digits % digits.get_config().data.eval_batch_size != 0
    assert result.eval_metrics["weight"] == float(test_digits)
    assert result.eval_metrics["accuracy"] > 0.5, result.eval_metrics


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory):
    """One plain ResNet-10 digits run (with its config.json, as main writes it), trained once per
    test process and shared by the tests that start from a trained model."""
    workdir = tmp_path_factory.mktemp("plain_digits")
    config = tiny_digits_config(final_report=True)
    _, result = train_classifier(config, str(workdir))
    (workdir / "config.json").write_text(json.dumps(config))
    return workdir, config, result


def test_plain_resnet_learns_digits_and_reports_predictions(plain_run):
    workdir, _, result = plain_run
    assert_learns_digits(result)
    assert (workdir / "report" / "step_0000120" / "predictions.png").stat().st_size > 0


@pytest.mark.parametrize("quantizer", ["sf", "pow", "hpow", "sf_pow", "dorefa"])
def test_every_quantizer_learns_digits_well_above_chance(tmp_path, quantizer):
    _, result = train_classifier(tiny_digits_config(quantizer), str(tmp_path))
    assert_learns_digits(result)
    if quantizer in ("pow", "hpow", "sf_pow"):
        assert result.train_metrics["alpha_penalty"] > 0.0


def test_bad_classify_config_values_are_named():
    config = tiny_digits_config()
    config["model"]["quantizer"]["kind"] = "floor"
    with pytest.raises(config_schema.ConfigError, match=r"config.model.quantizer.kind = 'floor'"):
        config_schema.validate(config, classify.config_rules(), num_devices=1)
    with pytest.raises(ValueError, match="config argument 'powr' is unknown"):
        digits.get_config("powr")
    config = tiny_digits_config("stability")
    with pytest.raises(config_schema.ConfigError, match=r"finetune.trainable = 'classifier'"):
        config_schema.validate(config, classify.config_rules(), num_devices=1)


@pytest.mark.parametrize(
    ("variant", "key", "value", "allowed"),
    [
        ("sf", "model.quantizer.groups", 2, "1, or with model.quantizer.kind in 'pow'"),
        ("pow", "model.quantizer.groups", 3, "an integer that divides model.width"),
        ("none", "optimizer.momentum", 1.0, r"a number in \[0, 1\)"),
        ("none", "optimizer.warmup_steps", 120, r"below train.num_steps \(120\)"),
        ("none", "optimizer.step_factor", 0.0, r"a number in \(0, 1\]"),
        ("none", "optimizer.step_boundaries", ("half",), "an increasing tuple of fractions"),
        ("none", "optimizer.step_boundaries", (0.6, 0.3), "an increasing tuple of fractions"),
        # With 30 warm-up steps of 120, a drop at 10% of the run would fall inside the warm-up.
        ("step", "optimizer.step_boundaries", (0.1, 0.5), r"after the warm-up \(> .* = 0.25\)"),
    ],
)
def test_classify_config_rules_name_the_key_and_what_is_allowed(variant, key, value, allowed):
    config = tiny_digits_config("none" if variant == "step" else variant)
    if variant == "step":
        config["optimizer"]["schedule"] = "step"
    section, *inner, leaf = key.split(".")
    node = config[section]
    for part in inner:
        node = node[part]
    node[leaf] = value
    with pytest.raises(config_schema.ConfigError, match=rf"config.{key} = .*{allowed}"):
        config_schema.validate(config, classify.config_rules(), num_devices=1)


def test_values_only_the_data_can_check_are_named_before_training():
    config = tiny_digits_config()
    config["model"]["num_classes"] = 12
    with pytest.raises(
        config_schema.ConfigError, match=r"num_classes = 12.*'digits' has 10 classes"
    ):
        classify.build(config).train_source(0, 1)
    config = tiny_digits_config()
    config["data"]["num_eval_batches"] = 4  # 297 test digits in batches of 100: 3 batches
    with pytest.raises(config_schema.ConfigError, match=r"num_eval_batches = 4.*at most 3"):
        classify.build(config).eval_source(0, 1)


def test_stability_divergence_is_finite_where_a_clean_probability_underflows():
    clean = jnp.array([[0.0, -200.0, 5.0]])  # p(class 1) = e^-205 underflows to 0 in float32
    noisy = jnp.array([[0.0, -100.0, 4.0]])
    divergence, grads = jax.value_and_grad(
        lambda c, n: jnp.sum(classify.stability_divergence(c, n)), argnums=(0, 1)
    )(clean, noisy)
    assert np.isfinite(divergence) and divergence > 0
    assert all(np.isfinite(g).all() for g in grads), grads
    chex.assert_trees_all_close(
        classify.stability_divergence(clean, clean), jnp.zeros(1), atol=1e-6
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_weight_decay_shrinks_kernels_only(optimizer):
    config = tiny_digits_config("sf_pow")
    config["model"]["quantizer"]["learnable_floor_scale"] = True
    config["optimizer"].update(name=optimizer, weight_decay=0.1, warmup_steps=0)
    task = classify.build(config)
    state = task.init(jax.random.key(0), task.train_source(0, 1).batch(0))
    zero_grads = jax.tree.map(jnp.zeros_like, state.params)
    updates, _ = task.tx.update(zero_grads, task.tx.init(state.params), state.params)
    moved = {
        jax.tree_util.keystr(path): bool(np.any(update != 0))
        for path, update in jax.tree_util.tree_leaves_with_path(updates)
    }
    decayed = {path for path, is_moved in moved.items() if is_moved}
    assert decayed and all(path.endswith("['kernel']") for path in decayed), decayed
    spared = set(moved) - decayed
    for name in ("['alpha']", "['log_beta']", "['scale']", "['bias']"):
        assert any(path.endswith(name) for path in spared), (name, spared)
    assert not any(path.endswith("['kernel']") for path in spared), spared


def test_robustness_mode_writes_table2_figure4_and_gallery(plain_run, tmp_path):
    reference_workdir, config, result = plain_run
    config = {
        **config,
        "data": {**config["data"], "num_eval_batches": 1},
        "robustness": {**config["robustness"], "saliency_workdir": str(reference_workdir)},
    }
    task = classify.build(config)
    row = task.run_mode("robustness", result.state, str(tmp_path), result.step)
    assert len(row) == 13  # clean + the paper's 12 distortions
    out = tmp_path / "robustness"
    for name in ("table2.csv", "table2.md", "figure4.png", "gallery.png", "robustness.json"):
        assert (out / name).stat().st_size > 0, name
    # 10 classes: Table 2 reports top-1 (top-5 saturates), and says so.
    table = (out / "table2.md").read_text().splitlines()
    assert table[0].startswith("| Models (Top-1 %) | Clean | ")
    assert table[-1].startswith("Top-1 accuracy (%) averaged over the four strengths")
    assert str(reference_workdir.resolve()) in table[-1] and "true class" in table[-1]
    # Top-5 of 10 digit classes is near 100 for any model: judge the distortions by top-1, which
    # the blurs take from well above chance down towards it as their strength grows.
    result = json.loads((out / "robustness.json").read_text())["ResNet10"]
    assert result["table_metric"] == "top1"
    assert result["occlusion_reference"] == {
        "workdir": str(reference_workdir.resolve()),
        "step": 120,
        "model": "ResNet10",
        "saliency_class": "true",
    }
    clean = result["clean"]["top1"]
    assert clean > 50.0, result["clean"]
    for name in ("motion_blur", "defocus_blur"):
        top1 = [result["distortions"][name][str(s)]["top1"] for s in (1, 2, 3, 4)]
        assert top1[3] < clean - 20.0 and top1[3] < top1[0], (name, clean, top1)
    assert row["table2/clean"] == pytest.approx(result["clean"]["top1"])
    # A Table 2 cell is the mean over the four strengths of the top-1 accuracy here (top-5 on
    # ImageNet), top-1 for the targeted occlusion (section 3.2: it targets the ground truth).
    for name, per_strength in result["distortions"].items():
        expected = np.mean([per_strength[str(s)]["top1"] for s in (1, 2, 3, 4)])
        assert row[f"table2/{name}"] == pytest.approx(expected), name


def test_table2_metric_is_top1_on_ten_classes_and_top5_on_imagenet():
    assert classify.build(tiny_digits_config()).table_metric() == "top1"
    imagenet = imagenet_resnet50.get_config().to_dict()
    assert classify.build(imagenet).table_metric() == "top5"
    config = tiny_digits_config()
    config["robustness"]["table_metric"] = "top5"  # explicit
    assert classify.build(config).table_metric() == "top5"


def test_robustness_without_a_reference_model_stops_with_one_line_naming_the_key(plain_run):
    """The paper occludes every row with one reference model's saliency (a plain ResNet-18):
    without one, main stops with exit status 2 before evaluating anything."""
    workdir, _, _ = plain_run
    overrides = [
        "--config.model.depth=10", "--config.train.num_steps=120", "--config.mode=robustness",
        "--config.train.eval_every=1000", "--config.train.log_every=50",
        "--config.train.checkpoint_every=1000", "--config.train.async_checkpoints=False",
        "--config.train.final_report=True", "--config.train.progress=False",
    ]  # fmt: skip
    completed = subprocess.run(
        [sys.executable, "-m", "noise_research.main", "--config=configs/classify/digits.py",
         f"--workdir={workdir}", *overrides],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env=dict(
            os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1"
        ),
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: config.robustness.saliency_workdir = None: not allowed"
    ), completed.stderr
    assert not (workdir / "robustness").exists()


def test_stability_baseline_fine_tunes_only_the_classifier(plain_run, tmp_path):
    pretrained_workdir, _, pretrained = plain_run
    config = tiny_digits_config("stability", num_steps=20)
    config["finetune"]["init_workdir"] = str(pretrained_workdir)
    task, result = train_classifier(config, str(tmp_path))
    assert task.model_name() == "ResNet10+Stability"
    assert result.train_metrics["stability_kl"] > 0.0
    # The backbone and its BatchNorm statistics are the pretrained run's; the classifier moved.
    backbone = {k: v for k, v in result.state.params.items() if k != "classifier"}
    pretrained_backbone = {k: v for k, v in pretrained.state.params.items() if k != "classifier"}
    chex.assert_trees_all_equal(backbone, pretrained_backbone)
    chex.assert_trees_all_equal(result.state.model_state, pretrained.state.model_state)
    moved = jax.tree.map(
        lambda a, b: np.abs(a - b).max(),
        result.state.params["classifier"],
        pretrained.state.params["classifier"],
    )
    assert all(change > 0 for change in jax.tree.leaves(moved)), moved
    # Fine-tuning at a tenth of the learning rate keeps what the plain run learned.
    assert_learns_digits(result)


def test_fine_tuning_a_run_of_another_model_is_refused(plain_run, tmp_path):
    pretrained_workdir, _, _ = plain_run
    config = tiny_digits_config("stability", num_steps=20)
    config["finetune"]["init_workdir"] = str(pretrained_workdir)
    config["model"]["dtype"] = "bfloat16"  # the same param shapes, another model
    with pytest.raises(config_schema.ConfigError, match=r"model.dtype \('float32' there\)"):
        train_classifier(config, str(tmp_path))


def test_cifar10_config_trains_on_mocked_tfds_with_a_padded_eval(tmp_path):
    import tensorflow_datasets as tfds

    config = cifar10_resnet18.get_config("sf").to_dict()
    config["model"].update(depth=10, width=4)
    config["data"].update(batch_size=8, eval_batch_size=8)
    config["optimizer"]["warmup_steps"] = 1  # of the 2 steps
    config["train"].update(
        num_steps=2, progress=False, async_checkpoints=False, final_report=False
    )  # fmt: skip
    with tfds.testing.mock_data(num_examples=12):
        _, result = train_classifier(config, str(tmp_path))
    assert np.isfinite(result.train_metrics["loss"])
    # 12 mock test images in two batches of 8: the padded four do not count.
    assert result.eval_metrics["weight"] == 12.0


def _module_kinds(task: classify.ClassifyTask) -> dict[str, str]:
    """{module path: class name} of every conv and dense layer the task's model calls."""
    kinds = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(
            module, (nn.Conv, nn.Dense, DoReFaConv, QuantizedConv)
        ):
            kinds.setdefault("/".join(module.path), type(module).__name__)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(
            functools.partial(task.model.init, train=False),
            jax.random.key(0),
            jnp.zeros((1, 32, 32, 3)),
        )
    return kinds


@pytest.mark.parametrize("kind", ["dorefa", "pow"])
def test_dorefa_quantizes_every_conv_but_the_stem_and_the_paper_s_quantizers_follow_where(kind):
    """The paper restricts only its own quantizers to the 3×3 convs of ResNet-50 (section 3.2);
    DoReFa is used as in DoReFa-Net: every conv quantized but the first, the classifier plain."""
    config = tiny_digits_config(kind)
    config["model"].update(depth=50, width=4)
    config["model"]["quantizer"]["where"] = "3x3"
    kinds = _module_kinds(classify.build(config))
    stage_convs = {  # stage{s}_block{b}/conv{i} (not the plain conv inside a QuantizedConv)
        path: k for path, k in kinds.items() if path.startswith("stage") and path.count("/") == 1
    }
    quantizing = "DoReFaConv" if kind == "dorefa" else "QuantizedConv"
    three_by_three = {p: k for p, k in stage_convs.items() if p.endswith("conv2")}
    one_by_one = {p: k for p, k in stage_convs.items() if p not in three_by_three}
    assert len(three_by_three) == 16 and len(one_by_one) == 36  # ResNet-50's stage convs
    assert set(three_by_three.values()) == {quantizing}
    assert set(one_by_one.values()) == {"DoReFaConv" if kind == "dorefa" else "Conv"}
    assert kinds["stem_conv"] == "Conv" and kinds["classifier"] == "Dense"


def test_both_alpha_penalties_are_on_by_default_and_in_the_loss():
    """Section 2: "we employ ℓ2 and ℓ1 (lasso) regularized terms towards α"."""
    config = tiny_digits_config("pow")
    l1, l2 = config["loss"]["alpha_l1"], config["loss"]["alpha_l2"]
    assert l1 > 0 and l2 > 0
    task = classify.build(config)
    batch = task.train_source(0, 1).batch(0)
    state = task.init(jax.random.key(0), batch)
    exponents = {}

    def set_alpha(path, leaf):
        if jax.tree_util.keystr(path).endswith("['alpha']"):
            value = np.random.default_rng(len(exponents)).uniform(-0.05, 0.05, leaf.shape)
            exponents[jax.tree_util.keystr(path)] = value
            return jnp.asarray(value, leaf.dtype)
        return leaf

    state = state.replace(params=jax.tree_util.tree_map_with_path(set_alpha, state.params))
    assert len(exponents) == 11  # ResNet-10: 8 stage convs and 3 shortcut projections
    alphas = np.concatenate([a.ravel() for a in exponents.values()])
    step = jax.jit(functools.partial(task.train_step, parallel=ParallelContext()))
    _, metrics = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
    metrics = {name: float(value) for name, value in metrics.items()}
    expected = l1 * np.abs(alphas).sum() + l2 * np.square(alphas).sum()
    assert metrics["alpha_penalty"] == pytest.approx(expected, rel=1e-4)
    # Small exponents (|α| < 0.05, where the ℓ1 pull is the larger): ℓ1 is most of the penalty.
    assert l1 * np.abs(alphas).sum() > 0.5 * expected
    assert metrics["loss"] == pytest.approx(
        metrics["cross_entropy"] + metrics["alpha_penalty"], rel=1e-5
    )


def test_a_reference_run_saved_before_newer_keys_restores_with_their_defaults(plain_run, tmp_path):
    workdir, _, result = plain_run
    older = tmp_path / "older_run"
    shutil.copytree(workdir, older)
    config = json.loads((older / "config.json").read_text())
    del config["robustness"]["table_metric"], config["model"]["quantizer"]["compute_dtype"]
    (older / "config.json").write_text(json.dumps(config))
    task, state = classify.restore_run(str(older), key="robustness.saliency_workdir")
    assert task.config["robustness"]["table_metric"] == "auto"
    assert task.config["model"]["quantizer"]["compute_dtype"] == "float32"
    assert int(state.step) == result.step


@pytest.mark.parametrize(("compute_dtype", "floor_dtype"), [("float32", "f32"), ("model", "bf16")])
def test_a_bfloat16_model_floors_in_the_quantizer_compute_dtype(compute_dtype, floor_dtype):
    """model.quantizer.compute_dtype: SF's floor (and its conv) in float32 inside a bfloat16
    model, or in bfloat16 ('model', where ⌊100x⌋ is a no-op beyond x ≈ 1.28)."""
    config = tiny_digits_config("sf")
    config["model"]["dtype"] = "bfloat16"
    config["model"]["quantizer"]["compute_dtype"] = compute_dtype
    config_schema.validate(config, classify.config_rules(), num_devices=1)
    task = classify.build(config)
    state = jax.eval_shape(task.init, jax.random.key(0), {"image": jnp.zeros((1, 16, 16, 3))})
    jaxpr = str(jax.make_jaxpr(task.logits)(state, jnp.zeros((2, 16, 16, 3))))
    floors = re.findall(r"(\w+)\[[\d,]*\] = floor", jaxpr)
    assert len(floors) == 11 and set(floors) == {floor_dtype}, floors  # ResNet-10's stage convs
    convs = re.findall(r"(\w+)\[[\d,]*\] = conv_general_dilated", jaxpr)
    assert convs.count("f32") == (11 if compute_dtype == "float32" else 0), convs
