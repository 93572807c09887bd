"""The command line: bad configs stop before compiling; a run writes everything; SIGTERM; resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from noise_research.main import DIVERGED_EXIT_CODE, PREEMPTED_EXIT_CODE
from noise_research.train.metric_writer import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.train.num_steps=4",
    "--config.train.log_every=2",
    "--config.train.checkpoint_every=2",
    "--config.data.crop_size=32",
    "--config.model.width=4",
    "--config.eval.image_size=32",
    "--config.eval.num_batches=1",
    "--config.eval.report_image_size=32",
]


def _main(
    workdir, *args, env_devices: int = 1, config="configs/halftone/demo.py", space=False, **popen
):
    """``python -m noise_research.main --config=CONFIG --workdir=WORKDIR ARGS`` (with ``space``:
    ``--config CONFIG``, the README's form)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={env_devices}"
    command = [
        sys.executable,
        "-m",
        "noise_research.main",
        *(["--config", config] if space else [f"--config={config}"]),
        f"--workdir={workdir}",
        *args,
    ]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.mark.parametrize(
    ("args", "env_devices", "expected"),
    [
        (
            ["--config.model.widht=8"],
            1,
            "error: config.model.widht = '8': unknown key; did you mean config.model.width?",
        ),
        (
            ["--config.no_such_key=1"],
            1,
            "error: config.no_such_key = '1': unknown key; the config has: data, eval, loss, "
            "model, optimizer, task, train",
        ),
        (
            ["--config.optimizer.learning_rate=inf"],
            1,
            "error: config.optimizer.learning_rate = inf: not allowed; it must be a finite "
            "number > 0",
        ),
        (
            ["--config.model.nib.noise_scale=-0.3"],
            1,
            "error: config.model.nib.noise_scale = -0.3: not allowed; it must be a number >= 0 "
            "(a probability in [0, 1] for the 'bernoulli' distribution)",
        ),
        (
            ["--config.data.batch_size=4"],
            8,
            "error: config.data.batch_size = 4: not allowed; it must be a positive integer "
            "divisible by the device count (8)",
        ),
    ],
)
def test_bad_config_stops_with_one_clear_line(tmp_path, args, env_devices, expected):
    process = _main(tmp_path / "run", *args, env_devices=env_devices, space=True)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [expected]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("config", "workdir", "expected"),
    [
        (
            "configs/halftone/no_such.py",
            "run",
            "error: --config configs/halftone/no_such.py: no such config file "
            f"'{ROOT}/configs/halftone/no_such.py'",
        ),
        (
            "configs/halftone/demo.py:fast",
            "run",
            "error: --config configs/halftone/demo.py:fast: configs/halftone/demo.py takes no "
            "':ARGUMENT' (no variants)",
        ),
        (
            "configs/classify/digits.py:powr",
            "run",
            "error: --config configs/classify/digits.py:powr: the config file failed to load: "
            "config argument 'powr' is unknown; allowed: none, sf, pow, hpow, sf_pow, dorefa, "
            "stability",
        ),
        ("configs/halftone/demo.py", "a_file/run", "error: --workdir={tmp}/a_file/run: cannot "),
    ],
)
def test_a_bad_file_or_workdir_stops_with_one_clear_line(tmp_path, config, workdir, expected):
    (tmp_path / "a_file").write_text("a regular file: no workdir can be made under it")
    workdir = tmp_path / workdir if workdir else ""
    process = _main(workdir, config=config, space=True)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    (line,) = [line for line in stderr.splitlines() if line.strip()]
    assert line.startswith(expected.format(tmp=tmp_path))
    assert not (tmp_path / "run").exists()


def test_values_only_the_data_can_check_stop_with_one_clear_line(tmp_path):
    process = _main(
        tmp_path / "run", "--config.model.num_classes=7", config="configs/classify/digits.py"
    )
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [
        "error: config.model.num_classes = 7: not allowed; data set 'digits' has 10 classes"
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "config.json").exists()  # the next run must not warn


def test_an_evaluation_mode_needs_a_checkpoint_and_keeps_the_runs_config(tmp_path):
    workdir = tmp_path / "run"
    process = _main(workdir, "--config.mode=robustness", config="configs/classify/digits.py")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    assert "config.mode = 'robustness' evaluates the latest checkpoint" in stderr
    assert not (workdir / "config.json").exists()


def test_run_writes_outputs_and_rerun_resumes(tmp_path):
    workdir = tmp_path / "run"
    process = _main(workdir, *TINY)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert json.loads(stdout[: stdout.rindex("}") + 1])["step"] == 4
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    assert (workdir / "metrics.jsonl").exists() and (workdir / "config.json").exists()
    assert any(name.startswith("events.out") for name in os.listdir(workdir / "tensorboard"))
    pictures = os.listdir(workdir / "report" / "step_0000004")
    assert {"samples.png", "gray_ramps.png", "spectra.png", "comparison.md"} <= set(pictures)

    process = _main(workdir, *TINY, "--config.train.num_steps=6")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "train.num_steps: 4 -> 6" in stderr  # a constant rate: training longer is allowed
    assert [r["step"] for r in read_metrics(str(workdir), split="train")] == [2, 4, 6]
    files = {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file()}

    process = _main(workdir, *TINY, "--config.train.num_steps=6", "--config.model.width=8")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, stderr
    (line,) = [line for line in stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: {workdir} holds a run (step 6) whose config differs: ")
    assert "model.width: 4 -> 8;" in line and "--on_config_change=restart" in line

    process = _main(workdir, *TINY, "--config.train.num_steps=6")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert f"the run in {workdir} is finished at step 6; nothing to do" in stdout
    assert {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file()} == files


def test_a_diverging_run_exits_non_zero_naming_the_step_and_the_last_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    process = _main(workdir, *TINY, "--config.optimizer.learning_rate=1e6")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == DIVERGED_EXIT_CODE, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: step 2: the train loss (") and "is not finite" in line
    assert "no checkpoint was saved" in line
    assert not os.listdir(workdir / "checkpoints")


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    workdir = tmp_path / "run"
    process = _main(workdir, *TINY, "--config.train.num_steps=100000")
    deadline = time.time() + 240
    metrics = workdir / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        assert process.poll() is None, process.communicate()
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr  # not 0: a scheduler requeues it
    assert "stopped at step" in stdout
    stopped_step = int(stdout.split("stopped at step ")[1].split(";")[0])
    assert str(stopped_step) in os.listdir(workdir / "checkpoints")


def test_describe_lists_every_key_with_its_value_and_meaning_from_any_directory(tmp_path):
    """--describe needs no workdir; config files load from any working directory."""
    # One device, as in _main: the digits eval batch (100) is not divisible by the 8 test devices.
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1"
    )
    command = [
        sys.executable,
        "-m",
        "noise_research.main",
        f"--config={os.path.join(ROOT, 'configs/classify/digits.py')}:pow",
        "--describe",
        "--config.optimizer.learning_rate=0.05",
    ]
    completed = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    from configs.classify import digits
    from noise_research import config_schema
    from noise_research.tasks import classify

    printed = {}
    for line in completed.stdout.splitlines():
        key, value_and_meaning = line.split(" = ", 1)
        printed[key.strip()] = value_and_meaning
    assert set(printed) == set(classify.config_rules())
    # Every key shows the value of the chosen config file after the override ...
    expected = config_schema.flatten(digits.get_config("pow").to_dict())
    assert expected["model.quantizer.kind"] == "pow" and expected["optimizer.learning_rate"] != 0.05
    expected["optimizer.learning_rate"] = 0.05
    # ... and the meaning declared beside its default, for the nested sections too.
    meanings = {}
    for name, section in classify.SECTIONS.items():
        meanings.update(config_schema.describe_keys(name, section))
    assert "model.quantizer.kind" in meanings
    for key, value_and_meaning in printed.items():
        assert value_and_meaning.startswith(repr(expected[key])), (key, value_and_meaning)
        assert value_and_meaning.rstrip().endswith(meanings.get(key, "")), (key, value_and_meaning)
        if key in meanings:
            assert meanings[key] and meanings[key] not in repr(expected[key]), key
