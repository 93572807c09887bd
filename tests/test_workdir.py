"""Nothing lost, nothing silently wrong: damaged checkpoints, changed configs, NaN, the workdir
lock, finished runs, damaged metric files. Fault injection on the toy task of the loop tests."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import optax
import pytest

from noise_research.config_schema import ConfigError
from noise_research.train.loop import TrainingDiverged, json_config, train
from noise_research.train.metric_writer import read_metrics
from noise_research.train.optim import OptimizerConfig
from noise_research.train.workdir import (
    check_writable,
    config_change,
    process_identity,
)
from tests.test_train_loop import _config, _cpu
from tests.toy_task import ToyTask


def _steps(workdir) -> list[int]:
    return sorted(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())


def _garble(folder) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")


def _changes(workdir) -> list[dict]:
    return [
        json.loads(line) for line in (workdir / "config_changes.jsonl").read_text().splitlines()
    ]


def _set_aside(workdir) -> list[str]:
    return sorted(os.listdir(workdir / "set_aside")) if (workdir / "set_aside").exists() else []


# ------------------------------------------------------------------------ damaged checkpoints


def test_a_damaged_checkpoint_is_set_aside_and_the_retrained_steps_are_saved(tmp_path, caplog):
    train(ToyTask(), _config(num_steps=6), str(tmp_path), devices=_cpu(1))
    _garble(tmp_path / "checkpoints" / "6")
    with caplog.at_level(logging.WARNING):
        rerun = train(ToyTask(), _config(num_steps=6), str(tmp_path), devices=_cpu(1))
    assert rerun.resumed_from == 4 and rerun.step == 6
    assert "step 6" in caplog.text and "could not be restored" in caplog.text
    (aside,) = _set_aside(tmp_path)
    assert aside.startswith("damaged-step6-")
    kept = tmp_path / "set_aside" / aside / "6"
    assert kept.is_dir()  # kept for inspection, its damaged files as they were
    assert {path.read_bytes() for path in kept.rglob("*") if path.is_file()} == {b"garbage"}
    assert _steps(tmp_path) == [2, 4, 6]  # step 6 retrained and saved again
    third = train(ToyTask(), _config(num_steps=6), str(tmp_path), devices=_cpu(1))
    assert third.already_finished and third.resumed_from == 6  # not retrained a second time


def test_all_checkpoints_damaged_starts_afresh_saying_so_and_saves(tmp_path, caplog):
    train(ToyTask(), _config(num_steps=4), str(tmp_path), devices=_cpu(1))
    for step in _steps(tmp_path):
        _garble(tmp_path / "checkpoints" / str(step))
    with caplog.at_level(logging.WARNING):
        rerun = train(ToyTask(), _config(num_steps=4), str(tmp_path), devices=_cpu(1))
    assert rerun.resumed_from is None and rerun.step == 4
    assert "no checkpoint in" in caplog.text and "starting afresh at step 0" in caplog.text
    assert [name.split("-")[1] for name in _set_aside(tmp_path)] == ["step2", "step4"]
    assert _steps(tmp_path) == [2, 4]


# ------------------------------------------------------------------------ changed configs


def _configured(width: int, **train_settings) -> ToyTask:
    task = ToyTask(width=width)
    task.config = {"model": {"width": width}, "train": {"log_every": 2, **train_settings}}
    return task


def test_a_changed_config_is_refused_naming_the_keys_and_nothing_is_touched(tmp_path):
    train(_configured(16), _config(num_steps=4), str(tmp_path), devices=_cpu(1))
    before = sorted(os.listdir(tmp_path)), (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError) as refused:
        train(_configured(8), _config(num_steps=6), str(tmp_path), devices=_cpu(1))
    message = str(refused.value)
    assert "model.width: 16 -> 8" in message and "\n" not in message
    assert "--workdir" in message and "--on_config_change=restart" in message
    assert (sorted(os.listdir(tmp_path)), (tmp_path / "metrics.jsonl").read_text()) == before
    assert _steps(tmp_path) == [2, 4]
    assert json.loads((tmp_path / "config.json").read_text())["model"]["width"] == 16


def test_cadences_may_change_on_resume_and_the_change_is_recorded(tmp_path):
    train(_configured(16), _config(num_steps=4), str(tmp_path), devices=_cpu(1))
    task = _configured(16, log_every=1)
    task.sections = {"train": type(_config())}  # LoopConfig: log_every is declared resumable
    resumed = train(task, _config(num_steps=6, log_every=1), str(tmp_path), devices=_cpu(1))
    assert resumed.resumed_from == 4
    (change,) = _changes(tmp_path)
    assert change["step"] == 4 and change["changes"] == {"train.log_every": [2, 1]}


def _seeded(width: int, data_seed: int) -> ToyTask:
    task = _configured(width)
    task.config = {**task.config, "data": {"seed": data_seed}}
    return task


def test_on_config_change_resume_continues_and_restart_sets_the_old_run_aside(tmp_path):
    train(_seeded(16, 0), _config(num_steps=4), str(tmp_path), devices=_cpu(1))
    with pytest.raises(ConfigError, match=r"data.seed: 0 -> 1;"):
        train(_seeded(16, 1), _config(num_steps=6), str(tmp_path), devices=_cpu(1))
    resumed = train(
        _seeded(16, 1),
        _config(num_steps=6),
        str(tmp_path),
        devices=_cpu(1),
        on_config_change="resume",
    )
    assert resumed.resumed_from == 4 and resumed.step == 6
    (change,) = _changes(tmp_path)
    assert change["changes"] == {"data.seed": [0, 1]}

    restarted = train(
        _configured(4),
        _config(num_steps=2),
        str(tmp_path),
        devices=_cpu(1),
        on_config_change="restart",
    )
    assert restarted.resumed_from is None and _steps(tmp_path) == [2]
    (aside,) = _set_aside(tmp_path)
    old_run = tmp_path / "set_aside" / aside
    assert aside.startswith("replaced-run-")
    assert sorted(int(s) for s in os.listdir(old_run / "checkpoints")) == [2, 4, 6]
    assert [r["step"] for r in read_metrics(str(old_run), "train")] == [2, 4, 6]
    assert [r["step"] for r in read_metrics(str(tmp_path), "train")] == [2]

    again = train(  # the same command, e.g. a requeued job: it resumes the run it started
        _configured(4),
        _config(num_steps=4),
        str(tmp_path),
        devices=_cpu(1),
        on_config_change="restart",
    )
    assert again.resumed_from == 2 and len(_set_aside(tmp_path)) == 1


@pytest.mark.parametrize(("schedule", "free"), [("constant", True), ("cosine", False)])
def test_num_steps_may_change_only_when_no_schedule_depends_on_it(schedule, free):
    task = ToyTask()
    task.sections = {"optimizer": OptimizerConfig}
    task.config = {"optimizer": {**vars(OptimizerConfig()), "schedule": schedule}}
    assert ("train.num_steps" in task.keys_free_on_resume()) == free
    assert "model.width" not in task.keys_free_on_resume()


def test_a_resumed_change_the_checkpoint_cannot_take_is_refused_and_nothing_set_aside(tmp_path):
    """A model of another shape is not a damaged checkpoint: nothing moves, nothing restarts."""
    train(_configured(16), _config(num_steps=4), str(tmp_path), devices=_cpu(1))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "LOCK"}
    with pytest.raises(ConfigError) as refused:
        train(
            _configured(8),
            _config(num_steps=6),
            str(tmp_path),
            devices=_cpu(1),
            on_config_change="resume",
        )
    message = str(refused.value)
    assert "the checkpoint at step 4" in message and "does not restore into this model" in message
    assert "model.width: 16 -> 8" in message and "--on_config_change=restart" in message
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_key_newer_than_the_checkpoint_may_resume_at_its_default_only():
    defaults = {"model.width": 16, "model.new_option": "off"}

    def change(now: dict) -> list:
        return config_change(
            {"model": {"width": 16}},
            {"model": {"width": 16, **now}},
            set(),
            defaults,
            workdir="w",
            step=4,
            on_config_change="refuse",
        )

    assert change({"new_option": "off"}) == [("model.new_option", None, "off")]
    with pytest.raises(ConfigError, match=r"model.new_option: None -> 'on'"):
        change({"new_option": "on"})


def test_the_saved_config_of_a_config_dict_is_plain_json():
    import ml_collections

    config = ml_collections.ConfigDict({"train": {"log_every": 2}, "model": {"widths": (16, 1)}})
    assert json_config(config) == {"train": {"log_every": 2}, "model": {"widths": [16, 1]}}


# ------------------------------------------------------------------------ NaN


def _exploding_after(step: int) -> optax.Schedule:
    return optax.piecewise_constant_schedule(0.05, {step: 1e30})


def test_a_non_finite_loss_stops_without_saving_and_names_the_last_good_checkpoint(tmp_path):
    """The loss at step 6's log line is checked before the state (saved at 8) is."""
    task = ToyTask(learning_rate=_exploding_after(4))
    with pytest.raises(TrainingDiverged) as stopped:
        train(task, _config(num_steps=20, checkpoint_every=4), str(tmp_path), devices=_cpu(1))
    message = str(stopped.value)
    assert message.startswith("step 6: the train loss (")
    assert "is not finite" in message and "the last good checkpoint is step 4" in message
    assert _steps(tmp_path) == [4]
    assert [r["step"] for r in read_metrics(str(tmp_path), "train")] == [2, 4, 6]


def test_a_non_finite_state_is_never_saved(tmp_path):
    """No log step before the save: the check of the state itself stops the run."""
    task = ToyTask(learning_rate=_exploding_after(4))
    config = _config(num_steps=20, log_every=100, checkpoint_every=4)
    with pytest.raises(TrainingDiverged, match=r"the model state is not finite.*step 4 in"):
        train(task, config, str(tmp_path), devices=_cpu(1))
    assert _steps(tmp_path) == [4]


# ------------------------------------------------------------------------ the workdir lock


@pytest.fixture
def other_live_process():
    """A process of this host that is alive for the test's duration."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def _write_lock(workdir, **holder) -> None:
    (workdir / "LOCK").write_text(json.dumps({"started": "earlier", **holder}))


def test_a_second_run_in_a_workdir_in_use_is_refused(tmp_path, other_live_process):
    _write_lock(tmp_path, host=socket.gethostname(), pid=other_live_process.pid)
    lock = (tmp_path / "LOCK").read_text()
    with pytest.raises(ConfigError, match=rf"in use by another run \(pid {other_live_process.pid}"):
        train(ToyTask(), _config(num_steps=2), str(tmp_path), devices=_cpu(1))
    assert not (tmp_path / "checkpoints").exists()
    assert (tmp_path / "LOCK").read_text() == lock  # still the other run's


def test_a_lock_left_by_this_pid_or_this_slurm_job_is_taken_over(tmp_path, monkeypatch):
    """A restarted container reuses pids (ours too); a requeued SLURM job may start elsewhere."""
    _write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid())
    assert train(ToyTask(), _config(num_steps=2), str(tmp_path), devices=_cpu(1)).step == 2
    monkeypatch.setenv("SLURM_JOB_ID", "417")
    _write_lock(tmp_path, host="another-node", pid=1, slurm_job="417")
    assert train(ToyTask(), _config(num_steps=4), str(tmp_path), devices=_cpu(1)).step == 4


def test_a_lock_whose_pid_now_belongs_to_another_process_is_taken_over(
    tmp_path, other_live_process
):
    identity = process_identity(other_live_process.pid)
    if identity is None:
        pytest.skip("no /proc: a reused pid cannot be told from its holder here")
    _write_lock(tmp_path, host=socket.gethostname(), pid=other_live_process.pid, process="x/1")
    assert train(ToyTask(), _config(num_steps=2), str(tmp_path), devices=_cpu(1)).step == 2
    _write_lock(tmp_path, host=socket.gethostname(), pid=other_live_process.pid, process=identity)
    with pytest.raises(ConfigError, match="in use by another run"):
        train(ToyTask(), _config(num_steps=4), str(tmp_path), devices=_cpu(1))


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    lock = {"host": socket.gethostname(), "pid": int(gone.stdout), "started": "earlier"}
    (tmp_path / "LOCK").write_text(json.dumps(lock))
    with caplog.at_level(logging.WARNING):
        result = train(ToyTask(), _config(num_steps=2), str(tmp_path), devices=_cpu(1))
    assert result.step == 2 and "taking over the lock of a run that is gone" in caplog.text
    assert not (tmp_path / "LOCK").exists()  # released at the end


def test_a_lock_held_from_another_host_is_respected(tmp_path):
    lock = {"host": "another-host", "pid": 1, "started": "earlier"}
    (tmp_path / "LOCK").write_text(json.dumps(lock))
    with pytest.raises(ConfigError, match="pid 1 on another-host"):
        train(ToyTask(), _config(num_steps=2), str(tmp_path), devices=_cpu(1))


# ------------------------------------------------------------------------ explicit, not silent


def test_a_finished_run_says_so_and_writes_nothing(tmp_path):
    train(ToyTask(), _config(num_steps=4), str(tmp_path), devices=_cpu(1))
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    rerun = train(ToyTask(), _config(num_steps=4), str(tmp_path), devices=_cpu(1))
    assert rerun.already_finished and rerun.step == 4
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_num_steps_below_the_workdirs_step_is_a_finished_run(tmp_path):
    train(ToyTask(), _config(num_steps=4), str(tmp_path), devices=_cpu(1))
    rerun = train(ToyTask(), _config(num_steps=2), str(tmp_path), devices=_cpu(1))
    assert rerun.already_finished and rerun.step == 4


def test_each_train_record_says_how_many_steps_it_averages(tmp_path):
    train(ToyTask(), _config(num_steps=5, checkpoint_every=5), str(tmp_path), devices=_cpu(1))
    train(ToyTask(), _config(num_steps=8), str(tmp_path), devices=_cpu(1))
    windows = {r["step"]: r["window_steps"] for r in read_metrics(str(tmp_path), "train")}
    assert windows == {2: 2, 4: 2, 5: 1, 6: 1, 8: 2}  # 6: resumed at 5, one step of the window


def test_a_metrics_file_cut_off_mid_line_resumes_and_garbage_is_named(tmp_path):
    train(ToyTask(), _config(num_steps=4), str(tmp_path), devices=_cpu(1))
    metrics = tmp_path / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - 10])  # killed in the middle of its last line
    (tmp_path / "config.json").write_text('{"trai')  # and in the middle of config.json
    resumed = train(ToyTask(), _config(num_steps=6), str(tmp_path), devices=_cpu(1))
    assert resumed.resumed_from == 4
    assert [r["step"] for r in read_metrics(str(tmp_path), "train")] == [2, 4, 6]
    assert json.loads((tmp_path / "config.json").read_text()) == {}

    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(ConfigError, match=r"metrics.jsonl, line 2: not a metrics record"):
        train(ToyTask(), _config(num_steps=8), str(tmp_path), devices=_cpu(1))


@pytest.mark.parametrize("make", ["under_a_file", "a_file", "empty"])
def test_a_workdir_that_cannot_hold_a_run_is_named(tmp_path, make):
    (tmp_path / "file").write_text("x")
    workdir = {"under_a_file": tmp_path / "file" / "run", "a_file": tmp_path / "file", "empty": ""}
    with pytest.raises(ConfigError, match="--workdir"):
        check_writable(str(workdir[make]))
