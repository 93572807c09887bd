"""The task-agnostic train loop: exact resume, preemption, backend equivalence, bad checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os

import chex
import jax
import numpy as np
import pytest

from noise_research.train.loop import LoopConfig, average_metrics, train
from noise_research.train.metric_writer import read_metrics
from tests.toy_task import EVAL_EXAMPLES, FEATURES, ToyTask, TwoPlayerTask


def _config(**overrides) -> LoopConfig:
    settings = dict(
        num_steps=8,
        log_every=2,
        eval_every=4,
        checkpoint_every=2,
        keep_checkpoints=3,
        progress=False,
        async_checkpoints=False,
    )
    settings.update(overrides)
    return LoopConfig(**settings)


def _cpu(n: int) -> list[jax.Device]:
    return jax.devices()[:n]


def test_train_writes_metrics_checkpoints_and_report(tmp_path):
    task = ToyTask()
    result = train(task, _config(), str(tmp_path), devices=_cpu(1))
    assert result.step == 8 and not result.preempted
    records = read_metrics(str(tmp_path))
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [2, 4, 6, 8]
    assert {r["step"] for r in records if r["split"] == "eval"} == {4, 8}
    assert task.reports == [8]
    assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints")) == [4, 6, 8]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    first, last = records[0]["loss"], [r for r in records if r["split"] == "train"][-1]["loss"]
    assert last < first


@pytest.mark.parametrize("parallel", ["jit", "pmap"])
def test_resume_continues_bit_for_bit(tmp_path, parallel):
    devices = _cpu(2)
    uninterrupted = train(
        ToyTask(dynamic_noise=0.1), _config(parallel=parallel), str(tmp_path / "a"), devices=devices
    )
    first_leg = train(
        ToyTask(dynamic_noise=0.1),
        _config(num_steps=5, parallel=parallel),
        str(tmp_path / "b"),
        devices=devices,
    )
    assert first_leg.step == 5
    resumed = train(
        ToyTask(dynamic_noise=0.1), _config(parallel=parallel), str(tmp_path / "b"), devices=devices
    )
    assert resumed.resumed_from == 5
    chex.assert_trees_all_equal(resumed.state.params, uninterrupted.state.params)
    chex.assert_trees_all_equal(resumed.state.opt_state, uninterrupted.state.opt_state)
    chex.assert_trees_all_equal(resumed.state.model_state, uninterrupted.state.model_state)
    chex.assert_trees_all_equal(resumed.state.rng, uninterrupted.state.rng)
    assert resumed.eval_metrics == uninterrupted.eval_metrics
    # metrics.jsonl reads as one run: the first leg logged its last step (5), nothing twice.
    records = read_metrics(str(tmp_path / "b"), split="train")
    assert [r["step"] for r in records] == [2, 4, 5, 6, 8]


def test_sigterm_saves_and_stops_then_resume_matches(tmp_path):
    uninterrupted = train(ToyTask(), _config(), str(tmp_path / "a"), devices=_cpu(1))
    # The data source raises SIGTERM while the loop is fetching the batch of step 3.
    stopped = train(ToyTask(sigterm_at_step=3), _config(), str(tmp_path / "b"), devices=_cpu(1))
    assert stopped.preempted and stopped.step < 8
    assert stopped.step in [int(p) for p in os.listdir(tmp_path / "b" / "checkpoints")]
    resumed = train(ToyTask(), _config(), str(tmp_path / "b"), devices=_cpu(1))
    assert resumed.resumed_from == stopped.step and resumed.step == 8
    chex.assert_trees_all_equal(resumed.state.params, uninterrupted.state.params)


def _run_on_layouts(tmp_path, task_factory, **overrides):
    """The same run on one device, jit over 8 devices and pmap over 8 devices."""
    assert jax.device_count() >= 8, "tests/conftest.py sets 8 fake CPU devices"
    return {
        name: train(
            task_factory(),
            _config(parallel=parallel, **overrides),
            str(tmp_path / name),
            devices=devices,
        )
        for name, parallel, devices in [
            ("single", "jit", _cpu(1)),
            ("jit8", "jit", _cpu(8)),
            ("pmap8", "pmap", _cpu(8)),
        ]
    }


def _assert_same_run(result, reference):
    chex.assert_trees_all_close(result.state.params, reference.state.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
        result.state.model_state, reference.state.model_state, rtol=1e-5, atol=1e-6
    )
    for key, value in reference.train_metrics.items():
        if key != "steps_per_second":
            np.testing.assert_allclose(result.train_metrics[key], value, rtol=1e-5)


def test_dynamic_noise_and_batch_mixing_give_one_run_on_any_layout(tmp_path):
    """Per-example noise keyed by global position, a roll over the global batch and BatchNorm:
    jit over 8 devices, pmap over 8 devices and one device train the same model."""
    task = lambda: ToyTask(dynamic_noise=0.3, mix_batch=True)
    results = _run_on_layouts(tmp_path, task)
    for name in ("jit8", "pmap8"):
        _assert_same_run(results[name], results["single"])
    # The noise and the mixing matter: without them the run differs.
    plain = train(ToyTask(), _config(), str(tmp_path / "plain"), devices=_cpu(1))
    assert not np.allclose(plain.train_metrics["loss"], results["single"].train_metrics["loss"])


@pytest.mark.parametrize(("first", "then"), [("jit", "pmap"), ("pmap", "jit")])
def test_resume_under_the_other_backend_continues_the_same_run(tmp_path, first, then):
    task = lambda: ToyTask(dynamic_noise=0.3, mix_batch=True)
    uninterrupted = train(task(), _config(), str(tmp_path / "a"), devices=_cpu(8))
    train(task(), _config(num_steps=3, parallel=first), str(tmp_path / "b"), devices=_cpu(8))
    resumed = train(task(), _config(parallel=then), str(tmp_path / "b"), devices=_cpu(4))
    assert resumed.resumed_from == 3
    _assert_same_run(resumed, uninterrupted)


def test_step_kinds_compile_once_and_resume_mid_cycle_is_bit_exact(tmp_path):
    """Three step kinds (critic, critic with a lazy regularizer every 4 steps, generator) and two
    optimizers; a run stopped at step 5, in the middle of a regularizer cycle, resumes exactly."""
    config = _config(num_steps=12, log_every=4, eval_every=100, checkpoint_every=4)
    task = TwoPlayerTask()
    uninterrupted = train(task, config, str(tmp_path / "a"), devices=_cpu(2))
    assert task.traces == {"critic_regularized": 1, "critic": 1, "generator": 1}
    first_leg = train(
        TwoPlayerTask(),
        dataclasses.replace(config, num_steps=5),
        str(tmp_path / "b"),
        devices=_cpu(2),
    )
    assert first_leg.step == 5
    resumed = train(TwoPlayerTask(), config, str(tmp_path / "b"), devices=_cpu(2))
    assert resumed.resumed_from == 5
    chex.assert_trees_all_equal(resumed.state, uninterrupted.state)
    # Each log window of 4 steps holds one regularized critic step: its penalty is averaged over
    # the steps that returned it, the critic loss over the two critic steps.
    records = read_metrics(str(tmp_path / "a"), split="train")
    assert [r["step"] for r in records] == [4, 8, 12]
    assert all({"critic_loss", "generator_loss", "regularizer_penalty"} <= set(r) for r in records)
    kinds = {0: "critic_regularized", 1: "generator", 2: "critic", 3: "generator"}
    assert [task.step_kind(s) for s in range(4)] == list(kinds.values())


def test_a_step_kind_the_task_does_not_have_is_named(tmp_path):
    task = TwoPlayerTask()
    task.step_kind = lambda step: "discriminator"
    with pytest.raises(ValueError, match=r"step_kind\(0\) = 'discriminator'.*critic, "):
        train(task, _config(), str(tmp_path), devices=_cpu(1))


@pytest.mark.parametrize(("parallel", "num_devices"), [("jit", 1), ("jit", 8), ("pmap", 8)])
def test_evaluator_equals_the_statistic_of_the_whole_eval_set(tmp_path, parallel, num_devices):
    """Mean and covariance accumulated over three padded batches on device, finalized on the
    host, equal the same statistic of the 20 eval examples computed at once."""
    task = TwoPlayerTask()
    result = train(
        task, _config(num_steps=8, parallel=parallel), str(tmp_path), devices=_cpu(num_devices)
    )
    moments = result.evaluations["feature_moments"]
    evaluator = task.evaluators()["feature_moments"]
    examples = np.concatenate([evaluator.source(0, 1).batch(i)["x"] for i in range(3)])[
        :EVAL_EXAMPLES
    ]
    features = np.asarray(task.features(result.state, examples))
    assert moments["count"] == EVAL_EXAMPLES
    np.testing.assert_allclose(
        [moments[f"mean_{i}"] for i in range(FEATURES)], features.mean(axis=0), rtol=1e-5, atol=1e-6
    )
    covariance = np.cov(features, rowvar=False)
    np.testing.assert_allclose(
        [[moments[f"cov_{i}_{j}"] for j in range(3)] for i in range(3)],
        covariance[:3, :3],
        rtol=1e-4,
        atol=1e-6,
    )
    # Its own cadence (every 4 steps) and once at the end, each under its own name.
    steps = [r["step"] for r in read_metrics(str(tmp_path), split="feature_moments")]
    assert steps == [4, 8]


def test_checkpoints_carry_the_experiment_config(tmp_path):
    task = ToyTask()
    task.config = {"task": "toy", "model": {"widths": (16, 1)}}
    train(task, _config(num_steps=2), str(tmp_path), devices=_cpu(1))
    meta = json.loads((tmp_path / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert meta["config"] == {"task": "toy", "model": {"widths": [16, 1]}}


def test_partial_checkpoint_is_ignored_and_later_metrics_are_dropped(tmp_path):
    """A save cut off mid-write (orbax's temporary folder) and a hard kill after logging."""
    train(ToyTask(), _config(num_steps=6), str(tmp_path), devices=_cpu(1))
    partial = tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1234567"
    partial.mkdir()
    (partial / "state").write_bytes(b"half written")
    # As if the process was killed after logging step 8 but before checkpoint 8 finished.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "split": "train", "loss": 123.0}\n')
    resumed = train(ToyTask(), _config(num_steps=8), str(tmp_path), devices=_cpu(1))
    assert resumed.resumed_from == 6 and resumed.step == 8
    losses_at_8 = [r["loss"] for r in read_metrics(str(tmp_path), "train") if r["step"] == 8]
    assert len(losses_at_8) == 1 and losses_at_8[0] != 123.0


def test_eval_batches_are_weighted_by_their_real_examples():
    batches = [{"accuracy": 1.0, "weight": 8.0}, {"accuracy": 0.0, "weight": 2.0}]
    assert average_metrics(batches) == {"accuracy": 0.8, "weight": 10.0}
    assert average_metrics([{"loss": 1.0}, {"loss": 3.0}]) == {"loss": 2.0}


def test_a_metric_only_some_steps_return_is_averaged_over_those_steps():
    history = [{"loss": 1.0, "r1": 10.0}, {"loss": 3.0}, {"loss": 5.0, "r1": 20.0}, {"g": 7.0}]
    assert average_metrics(history) == {"loss": 3.0, "r1": 15.0, "g": 7.0}
