"""The task-agnostic train loop: exact resume, preemption, backend equivalence, bad checkpoints."""

from __future__ import annotations

import logging
import os

import chex
import jax
import numpy as np
import pytest

from noise_research.train.loop import LoopConfig, average_metrics, train
from noise_research.train.metric_writer import read_metrics
from tests.toy_task import ToyTask


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


def test_parallel_backends_match_one_device(tmp_path):
    """jit over 8 devices, pmap over 8 devices and one device give the same run (BatchNorm too)."""
    assert jax.device_count() >= 8, "tests/conftest.py sets 8 fake CPU devices"
    results = {
        name: train(ToyTask(), _config(parallel=parallel), str(tmp_path / name), devices=devices)
        for name, parallel, devices in [
            ("single", "jit", _cpu(1)),
            ("jit8", "jit", _cpu(8)),
            ("pmap8", "pmap", _cpu(8)),
        ]
    }
    reference = results["single"]
    for name in ("jit8", "pmap8"):
        chex.assert_trees_all_close(
            results[name].state.params, reference.state.params, rtol=1e-5, atol=1e-6
        )
        chex.assert_trees_all_close(
            results[name].state.model_state, reference.state.model_state, rtol=1e-5, atol=1e-6
        )
        for key, value in reference.train_metrics.items():
            if key != "steps_per_second":
                np.testing.assert_allclose(results[name].train_metrics[key], value, rtol=1e-5)


def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    train(ToyTask(), _config(num_steps=6), str(tmp_path), devices=_cpu(1))
    latest = tmp_path / "checkpoints" / "6"
    for root, _, files in os.walk(latest):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    with caplog.at_level(logging.WARNING):
        resumed = train(ToyTask(), _config(num_steps=6), str(tmp_path), devices=_cpu(1))
    assert resumed.resumed_from == 4
    assert "step 6" in caplog.text and "could not be restored" in caplog.text


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
