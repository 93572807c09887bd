"""Real multi-process runs: 2 processes on localhost joined by jax.distributed (gloo collectives),
started by ``NUM_PROCESSES=2 launch/local.sh``, train the same run as 1 process, and resume after
both stop at a fixed step.

The classifier (BatchNorm over the global batch) runs under jit, the halftoner with a dynamic-noise
NIB under pmap: each process loads only its half of every batch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from noise_research.train.metric_writer import read_metrics
from tests.test_main_cli import ROOT

TIMEOUT_SECONDS = 240  # per launch: a hang fails the test instead of CI

CLASSIFIER = (
    "configs/classify/digits.py",
    [
        "--config.model.depth=10",
        "--config.model.width=4",
        "--config.data.batch_size=16",
        "--config.data.eval_batch_size=100",
        "--config.data.num_eval_batches=1",
        # Stopping at a fixed step is a shorter run: a schedule that does not depend on its length.
        "--config.optimizer.schedule=constant",
        "--config.optimizer.warmup_steps=0",
        "--config.train.parallel=jit",
    ],
)
HALFTONER = (
    "configs/halftone/demo.py",
    [
        "--config.model.width=4",
        "--config.model.nib.stationary=False",
        "--config.data.crop_size=16",
        "--config.data.batch_size=2",
        "--config.data.constant_batch_size=2",
        "--config.eval.image_size=16",
        "--config.eval.batch_size=2",
        "--config.eval.num_batches=1",
        "--config.train.parallel=pmap",
    ],
)
COMMON = [
    "--config.train.log_every=1",
    "--config.train.eval_every=1000",
    "--config.train.checkpoint_every=1000",
    "--config.train.final_report=False",
    "--config.train.progress=False",
    "--config.train.async_checkpoints=False",
]


def _launch(
    config: str,
    workdir: str,
    overrides: list[str],
    num_steps: int,
    processes: int,
    expected_status: int = 0,
) -> str:
    """Runs ``launch/local.sh``; asserts its exit status; returns its stderr and the logs."""
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        NUM_CPU_DEVICES="1",
        KILL_GRACE_SECONDS="5",
        # The resumed launch compiles what the first one did: take it from the disk cache.
        JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.dirname(workdir), "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    if processes > 1:
        env["NUM_PROCESSES"] = str(processes)
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    command = [
        "bash",
        "launch/local.sh",
        config,
        workdir,
        *overrides,
        *COMMON,
        f"--config.train.num_steps={num_steps}",
    ]
    completed = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
    )
    logs = completed.stderr[-3000:]
    for log in sorted(os.listdir(os.path.join(workdir, "logs"))) if processes > 1 else []:
        with open(os.path.join(workdir, "logs", log)) as f:
            logs += f"\n--- {log}\n" + f.read()[-2000:]
    assert completed.returncode == expected_status, logs
    return logs


def _losses(workdir: str, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(workdir, split="train")}


@pytest.mark.parametrize(
    ("experiment", "loss_key"),
    [(CLASSIFIER, "cross_entropy"), (HALFTONER, "loss")],
    ids=["classifier-batchnorm-jit", "halftoner-dynamic-nib-pmap"],
)
def test_two_processes_train_and_resume_the_one_process_run(tmp_path, experiment, loss_key):
    config, overrides = experiment
    one, two = str(tmp_path / "one_process"), str(tmp_path / "two_processes")
    _launch(config, one, overrides, num_steps=4, processes=1)
    _launch(config, two, overrides, num_steps=2, processes=2)  # both stop at step 2
    assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["2"]
    _launch(config, two, overrides, num_steps=4, processes=2)  # and resume from it
    reference, resumed = _losses(one, loss_key), _losses(two, loss_key)
    assert sorted(resumed) == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [resumed[s] for s in range(1, 5)], [reference[s] for s in range(1, 5)], rtol=1e-5
    )
    eval_one = read_metrics(one, split="eval")[-1]
    eval_two = read_metrics(two, split="eval")[-1]
    metric_keys = set(eval_one) - {"step", "split"}
    assert metric_keys and metric_keys == set(eval_two) - {"step", "split"}
    for key in metric_keys:
        np.testing.assert_allclose(eval_two[key], eval_one[key], rtol=1e-5, err_msg=key)


def test_a_failure_on_process_0_alone_stops_every_process(tmp_path):
    """Only process 0 reads metrics.jsonl: a damaged one must stop the other process too, not
    leave it waiting for process 0 in the first train step's collective (a hang before)."""
    config, overrides = CLASSIFIER
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text('garbage\n{"step": 1, "split": "train"}\n')
    logs = _launch(config, str(workdir), overrides, num_steps=2, processes=2, expected_status=2)
    assert "metrics.jsonl, line 1: not a metrics record" in logs
    assert "process 0 could not open the workdir's metrics" in logs  # process 1's line
