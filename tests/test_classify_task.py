"""The classifier: every quantizer learns the embedded digits; eval padding; robustness mode;
the stability-training baseline."""

from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest

from configs.classify import cifar10_resnet18, digits
from noise_research import config_schema
from noise_research.tasks import classify
from noise_research.train.loop import LoopConfig, train


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
    # Chance is 10%; the eval covers all 297 test digits exactly once (the last batch is padded).
    assert result.eval_metrics["weight"] == 297.0
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


def test_robustness_mode_writes_table2_figure4_and_gallery(plain_run, tmp_path):
    _, config, result = plain_run
    config = {**config, "data": {**config["data"], "num_eval_batches": 1}}
    task = classify.build(config)
    row = task.run_mode("robustness", result.state, str(tmp_path), result.step)
    assert len(row) == 13 and all(0.0 <= v <= 100.0 for v in row.values())
    out = tmp_path / "robustness"
    for name in ("table2.csv", "table2.md", "figure4.png", "gallery.png", "robustness.json"):
        assert (out / name).stat().st_size > 0, name
    header = (out / "table2.md").read_text().splitlines()[0]
    assert header.startswith("| Models | Clean | ")
    # Stronger distortions hurt: on average over distortions, strength 4 is below clean.
    assert np.mean([v for k, v in row.items() if k != "table2/clean"]) <= row["table2/clean"]


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


def test_cifar10_config_trains_on_mocked_tfds_with_a_padded_eval(tmp_path):
    import tensorflow_datasets as tfds

    config = cifar10_resnet18.get_config("sf").to_dict()
    config["model"].update(depth=10, width=4)
    config["data"].update(batch_size=8, eval_batch_size=8)
    config["train"].update(
        num_steps=2, progress=False, async_checkpoints=False, final_report=False
    )  # fmt: skip
    with tfds.testing.mock_data(num_examples=12):
        _, result = train_classifier(config, str(tmp_path))
    assert np.isfinite(result.train_metrics["loss"])
    # 12 mock test images in two batches of 8: the padded four do not count.
    assert result.eval_metrics["weight"] == 12.0
