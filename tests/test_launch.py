"""The launchers against fake schedulers and a fake python: the exact command each worker receives.

Fake ``python``, ``srun``, ``sbatch``, ``gcloud`` and ``nvidia-smi`` lie first on PATH. Each records
its argv and the launch environment to a JSON file, then exits 0, or fails, sleeps or handles
SIGTERM as the test asks. Nothing trains; every subprocess has a timeout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from noise_research.main import BAD_INPUT_EXIT_CODE, DIVERGED_EXIT_CODE, PREEMPTED_EXIT_CODE

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"
TIMEOUT = 60
FAKES = ("python", "srun", "sbatch", "scontrol", "gcloud", "nvidia-smi")
RECORDED_ENV = (
    "JAX_PROCESS_ID",
    "JAX_NUM_PROCESSES",
    "JAX_COORDINATOR_ADDRESS",
    "JAX_PLATFORMS",
    "XLA_FLAGS",
    "CUDA_VISIBLE_DEVICES",
)
# Variables of the test's own environment that would change what the launchers do.
CLEARED_ENV = (*RECORDED_ENV, "NUM_PROCESSES", "NUM_CPU_DEVICES", "PYTHON", "KILL_GRACE_SECONDS")

FAKE_PROGRAM = '''
"""One fake executable (its name is argv[1]). Behaviour from FAKE_* environment variables."""
import json, os, signal, sys, time

name, argv = sys.argv[1], sys.argv[2:]
env = os.environ
if name == "python" and argv[:1] == ["-c"]:  # a real one-liner (local.sh picks a port with one)
    os.execv(sys.executable, [sys.executable, *argv])
if name == "nvidia-smi":
    gpus = int(env.get("FAKE_GPUS", "0"))
    if not gpus:
        print("No devices were found")
        sys.exit(6)
    for index in range(gpus):
        print(f"GPU {index}: Fake GPU (UUID: GPU-{index})")
    sys.exit(0)

record = {
    "argv": argv,
    "env": {key: env.get(key) for key in RECORDED_ENV},
    "cwd": os.getcwd(),
    "start": time.time(),
}
if name == "sbatch":
    with open(argv[-1]) as f:
        record["script"] = f.read()
path = os.path.join(env["FAKE_RECORDS"], f"{name}-{os.getpid()}.json")


def save():
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)


def on_term(signum, frame):
    record["signal"] = "TERM"
    record["end"] = time.time()
    save()
    sys.exit(0)


signal.signal(signal.SIGTERM, signal.SIG_IGN if env.get("FAKE_IGNORE_TERM") else on_term)
save()
print(f"fake {name} {env.get('JAX_PROCESS_ID')}: {' '.join(argv)}", flush=True)
failing_process = env.get("FAKE_FAIL_PROCESS")
if env.get("FAKE_FAIL_ARG") in argv or (
    failing_process is not None and failing_process == env.get("JAX_PROCESS_ID")
):
    sys.exit(int(env.get("FAKE_FAIL_STATUS", "3")))
time.sleep(float(env.get("FAKE_SLEEP", "0")))
record["end"] = time.time()
save()
'''


class Fakes:
    """The fake executables of one test: where they are, the environment to run with, records."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.records_dir = tmp_path / "records"
        self.bin.mkdir()
        self.records_dir.mkdir()
        program = tmp_path / "fake_program.py"
        program.write_text(FAKE_PROGRAM.replace("RECORDED_ENV", repr(RECORDED_ENV)))
        for name in FAKES:
            shim = self.bin / name
            shim.write_text(
                "#!/usr/bin/env bash\n"
                f'exec {shlex.quote(sys.executable)} {shlex.quote(str(program))} {name} "$@"\n'
            )
            shim.chmod(0o755)

    def env(self, **overrides: str) -> dict[str, str]:
        """The test's environment without launcher settings, the fakes first on PATH."""
        env = {key: value for key, value in os.environ.items() if key not in CLEARED_ENV}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["FAKE_RECORDS"] = str(self.records_dir)
        env.update(overrides)
        return env

    def records(self, name: str) -> list[dict]:
        """What every call of the fake ``name`` recorded, in the order they started."""
        records = [json.loads(path.read_text()) for path in self.records_dir.glob(f"{name}-*.json")]
        return sorted(records, key=lambda record: record["start"])


@pytest.fixture
def fakes(tmp_path: Path) -> Fakes:
    return Fakes(tmp_path)


def _run(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def _wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _max_overlap(records: list[dict]) -> int:
    """The most calls that ran at the same time."""
    return max(
        sum(other["start"] <= record["start"] < other["end"] for other in records)
        for record in records
    )


MAIN = ["-m", "noise_research.main"]
SPACED = "--config.data.name=voc 2012"  # an override whose value holds a space


# ----------------------------------------------------------------------------- tpu_pod.sh


def test_tpu_pod_runs_the_quoted_command_on_every_worker(fakes: Fakes, tmp_path: Path) -> None:
    tricky = '--config.note=it\'s $HOME; `x` "y"'
    args = ["configs/halftone/nib_unet.py", "gs://bucket/run", SPACED, tricky]
    result = _run([str(LAUNCH / "tpu_pod.sh"), "my-tpu", "us-central2-b", *args], fakes.env())
    assert result.returncode == 0, result.stderr
    (call,) = fakes.records("gcloud")
    *head, remote = call["argv"]
    assert head == [
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "my-tpu",
        "--zone",
        "us-central2-b",
        "--worker=all",
        "--command",
    ]
    assert remote.startswith(
        "cd ~/noise_research && python -m noise_research.main --multihost "
        "--config configs/halftone/nib_unet.py --workdir gs://bucket/run "
        "--config.data.name=voc\\ 2012 "
    )
    # What each worker's shell makes of the command: exactly the arguments given here.
    (tmp_path / "home" / "noise_research").mkdir(parents=True)
    worker = _run(["bash", "-c", remote], fakes.env(HOME=str(tmp_path / "home")))
    assert worker.returncode == 0, worker.stderr
    (python,) = fakes.records("python")
    assert python["argv"] == [
        *MAIN,
        "--multihost",
        "--config",
        "configs/halftone/nib_unet.py",
        "--workdir",
        "gs://bucket/run",
        SPACED,
        tricky,
    ]
    assert python["cwd"] == str(tmp_path / "home" / "noise_research")


def test_tpu_pod_without_enough_arguments_prints_its_usage(fakes: Fakes) -> None:
    result = _run([str(LAUNCH / "tpu_pod.sh"), "my-tpu", "zone", "config.py"], fakes.env())
    assert result.returncode == 2
    assert "usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR" in result.stderr
    assert not fakes.records("gcloud")


# ----------------------------------------------------------------------------- slurm.sbatch


def test_slurm_sbatch_runs_one_multihost_process_per_node_through_srun(fakes: Fakes) -> None:
    script = LAUNCH / "slurm.sbatch"
    header = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --ntasks-per-node=1" in header
    args = ["configs/halftone/nib_unet.py", "/shared/runs/nib_unet", SPACED]
    result = _run(["bash", str(script), *args], fakes.env())
    assert result.returncode == 0, result.stderr
    (call,) = fakes.records("srun")
    assert call["argv"] == [
        "--kill-on-bad-exit=1",
        "python",
        *MAIN,
        "--multihost",
        "--config",
        "configs/halftone/nib_unet.py",
        "--workdir",
        "/shared/runs/nib_unet",
        SPACED,
    ]


@pytest.mark.parametrize(
    ("status", "requeued"),
    [(PREEMPTED_EXIT_CODE, True), (DIVERGED_EXIT_CODE, False), (BAD_INPUT_EXIT_CODE, False)],
)
def test_slurm_sbatch_requeues_a_preempted_run_and_only_that(
    fakes: Fakes, status: int, requeued: bool
) -> None:
    """Preempted (checkpoint saved on SIGTERM) requeues the job to resume; other failures end it."""
    env = fakes.env(FAKE_FAIL_ARG="--multihost", FAKE_FAIL_STATUS=str(status), SLURM_JOB_ID="417")
    result = _run(["bash", str(LAUNCH / "slurm.sbatch"), "config.py", "/shared/run"], env)
    assert result.returncode == status
    requeues = [call["argv"] for call in fakes.records("scontrol")]
    assert requeues == ([["requeue", "417"]] if requeued else [])


def test_slurm_sbatch_without_a_workdir_prints_its_usage(fakes: Fakes) -> None:
    result = _run(["bash", str(LAUNCH / "slurm.sbatch"), "config.py"], fakes.env())
    assert result.returncode != 0
    assert "usage: sbatch" in result.stderr
    assert not fakes.records("srun")


# ----------------------------------------------------------------------------- sweep.py

CONFIG = "configs/halftone/nib_resnet.py:demo"
GRID = ["--grid", "model.width=8,16", "--grid", "data.note=x y,z"]
# (name, overrides) of the grid above, the last axis varying fastest.
POINTS = [
    ("width=8_note=x y", ["--config.model.width=8", "--config.data.note=x y"]),
    ("width=8_note=z", ["--config.model.width=8", "--config.data.note=z"]),
    ("width=16_note=x y", ["--config.model.width=16", "--config.data.note=x y"]),
    ("width=16_note=z", ["--config.model.width=16", "--config.data.note=z"]),
]


def _point_argv(root: Path | str, name: str, overrides: list[str]) -> list[str]:
    return [*MAIN, f"--config={CONFIG}", f"--workdir={os.path.join(root, name)}", *overrides]


def _sweep(fakes: Fakes, root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env.setdefault("PYTHON", "python")  # the fake
    command = [sys.executable, str(LAUNCH / "sweep.py"), CONFIG, str(root), *GRID, *args]
    return _run(command, fakes.env(**env))


def test_sweep_print_only_prints_every_points_command(fakes: Fakes, tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    result = _sweep(fakes, root, "--print")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert commands == [["python", *_point_argv(root, *point)] for point in POINTS]
    assert not fakes.records("python")
    assert not root.exists()


def test_sweep_takes_named_grids_from_the_config_files_sweep_grids(
    fakes: Fakes, tmp_path: Path
) -> None:
    """--grids-from reads the config module's SWEEP_GRIDS: its axes first, then --grid's."""
    root, config = tmp_path / "sweep", "configs/positive_noise/digits.py:linear"
    command = [sys.executable, str(LAUNCH / "sweep.py"), config, str(root), "--print"]
    named = ["--grids-from", "type_strength", "--grid", "train.num_steps=5,9"]
    result = _run([*command, *named], fakes.env(PYTHON="python"))
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert len(commands) == 3 * 4 * 2
    assert commands[0] == [
        "python",
        *MAIN,
        f"--config={config}",
        f"--workdir={root / 'kind=gaussian_strength=0.1_num_steps=5'}",
        "--config.model.noise.kind=gaussian",
        "--config.model.noise.strength=0.1",
        "--config.train.num_steps=5",
    ]
    assert commands[-1][-3:] == [
        "--config.model.noise.kind=salt_pepper",
        "--config.model.noise.strength=0.4",
        "--config.train.num_steps=9",
    ]
    layers = _run([*command, "--grids-from", "layer"], fakes.env(PYTHON="python"))
    assert [line.rsplit(" ", 1)[1] for line in layers.stdout.splitlines()] == [
        f"--config.model.noise.place=stage{stage}.block2" for stage in range(1, 5)
    ]
    assert not fakes.records("python") and not root.exists()
    unknown = _run([*command, "--grids-from", "depth"], fakes.env(PYTHON="python"))
    assert unknown.returncode == 2
    assert "SWEEP_GRIDS has no grid 'depth'; it has: strength, type_strength, layer" in (
        unknown.stderr
    )
    missing = _run([*command[:2], CONFIG, str(root), "--grids-from", "layer"], fakes.env())
    assert missing.returncode == 2 and "nib_resnet.py defines no SWEEP_GRIDS" in missing.stderr


def test_sweep_slurm_submits_a_job_array_whose_tasks_run_their_points(
    fakes: Fakes, tmp_path: Path
) -> None:
    root = tmp_path / "sweep"
    options = ["--slurm-option=--partition=gpu", "--slurm-option=--gpus=1"]
    result = _sweep(fakes, root, "--slurm", *options, "--parallel", "3")
    assert result.returncode == 0, result.stderr
    (submission,) = fakes.records("sbatch")
    script = root / "sweep.sbatch"
    assert submission["argv"] == [str(script)]
    assert submission["script"] == script.read_text()
    header = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    for line in ["--array=0-3%3", "--partition=gpu", "--gpus=1", f"--chdir={ROOT}"]:
        assert f"#SBATCH {line}" in header
    assert not fakes.records("python")  # nothing ran here

    for task, point in enumerate(POINTS):
        run = _run(["bash", str(script)], fakes.env(SLURM_ARRAY_TASK_ID=str(task)))
        assert run.returncode == 0, run.stderr
        assert f"grid point {task}: {point[0]}" in run.stdout
        calls = fakes.records("srun")
        assert len(calls) == task + 1
        assert calls[-1]["argv"] == ["python", *_point_argv(root, *point)]
    listed = (root / "points.txt").read_text().splitlines()
    assert [line.split("\t")[:2] for line in listed] == [
        [str(task), name] for task, (name, _) in enumerate(POINTS)
    ]

    beyond = _run(["bash", str(script)], fakes.env(SLURM_ARRAY_TASK_ID="4"))
    assert beyond.returncode != 0
    assert "no grid point 4" in beyond.stderr
    assert len(fakes.records("srun")) == len(POINTS)


def test_sweep_slurm_without_sbatch_prints_the_submit_command(fakes: Fakes, tmp_path: Path) -> None:
    (fakes.bin / "sbatch").unlink()
    root = tmp_path / "sweep"
    env = {"PATH": str(fakes.bin)}  # only the fakes: no real sbatch either
    result = _sweep(fakes, root, "--slurm", **env)
    assert result.returncode == 0, result.stderr
    assert f"submit with: sbatch {root / 'sweep.sbatch'}" in result.stdout
    assert "#SBATCH --array=0-3\n" in (root / "sweep.sbatch").read_text()


def test_sweep_parallel_runs_every_point_side_by_side(fakes: Fakes, tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    result = _sweep(fakes, root, "--parallel", "2", FAKE_SLEEP="0.5")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = fakes.records("python")
    assert sorted(call["argv"] for call in calls) == sorted(
        _point_argv(root, *point) for point in POINTS
    )
    assert _max_overlap(calls) == 2
    assert all(call["env"]["CUDA_VISIBLE_DEVICES"] is None for call in calls)  # no GPU here
    for name, overrides in POINTS:
        log = (root / name / "sweep.log").read_text()
        assert " ".join(_point_argv(root, name, overrides)) in log  # the fake's one line
        assert re.search(rf"ok {re.escape(name)} in \d+\.\ds", result.stdout)
    assert "sweep: all 4 points finished" in result.stdout


def test_sweep_without_gpus_runs_one_point_at_a_time(fakes: Fakes, tmp_path: Path) -> None:
    result = _sweep(fakes, tmp_path / "sweep", FAKE_SLEEP="0.2")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = fakes.records("python")
    assert len(calls) == len(POINTS)
    assert _max_overlap(calls) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [([], {"0", "1", "2", "3"}), (["--parallel", "2"], {"0,1", "2,3"})],
    ids=["one-per-gpu", "two-gpus-each"],
)
def test_sweep_gives_each_running_point_its_own_gpus(
    fakes: Fakes, tmp_path: Path, args: list[str], expected: set[str]
) -> None:
    result = _sweep(fakes, tmp_path / "sweep", *args, FAKE_GPUS="4", FAKE_SLEEP="1")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = fakes.records("python")
    assert len(calls) == len(POINTS)
    assert {call["env"]["CUDA_VISIBLE_DEVICES"] for call in calls} == expected
    assert _max_overlap(calls) == len(expected)
    for call in calls:  # no two points that ran at the same time shared a GPU
        for other in calls:
            if other is not call and other["start"] <= call["start"] < other["end"]:
                assert other["env"]["CUDA_VISIBLE_DEVICES"] != call["env"]["CUDA_VISIBLE_DEVICES"]


def test_sweep_refuses_more_parallel_points_than_gpus(fakes: Fakes, tmp_path: Path) -> None:
    result = _sweep(fakes, tmp_path / "sweep", "--parallel", "5", FAKE_GPUS="4")
    assert result.returncode == 2
    assert "more than the 4 GPUs" in result.stderr
    assert not fakes.records("python")


def test_a_failing_point_fails_the_sweep_but_not_the_other_points(
    fakes: Fakes, tmp_path: Path
) -> None:
    root = tmp_path / "sweep"
    failing = "--config.model.width=16"
    result = _sweep(fakes, root, "--parallel", "2", FAKE_FAIL_ARG=failing)
    assert result.returncode == 1
    assert len(fakes.records("python")) == len(POINTS)  # every point ran
    summary = result.stdout[result.stdout.index("sweep: 2 of 4 points failed:") :]
    for name, overrides in POINTS:
        assert (name in summary) == (failing in overrides)
        outcome = "FAILED (exit 3)" if failing in overrides else "ok"
        assert f"{outcome} {name} in " in result.stdout


# ----------------------------------------------------------------------------- local.sh

LOCAL_ARGS = ["configs/halftone/demo.py"]


def _local(fakes: Fakes, workdir: Path, **env: str) -> subprocess.CompletedProcess:
    command = [str(LAUNCH / "local.sh"), *LOCAL_ARGS, str(workdir), SPACED]
    return _run(command, fakes.env(**env))


def _local_argv(workdir: Path, *multihost: str) -> list[str]:
    return [*MAIN, *multihost, "--config", LOCAL_ARGS[0], "--workdir", str(workdir), SPACED]


def test_local_one_process_on_cpu_devices(fakes: Fakes, tmp_path: Path) -> None:
    xla_flags = "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x"
    result = _local(fakes, tmp_path / "run", NUM_CPU_DEVICES="4", XLA_FLAGS=xla_flags)
    assert result.returncode == 0, result.stderr
    (call,) = fakes.records("python")
    assert call["argv"] == _local_argv(tmp_path / "run")
    assert call["env"]["JAX_PLATFORMS"] == "cpu"
    assert call["env"]["XLA_FLAGS"] == (
        "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4"
    )
    assert call["env"]["JAX_PROCESS_ID"] is None


def test_local_starts_processes_joined_by_one_coordinator(fakes: Fakes, tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    result = _local(fakes, workdir, NUM_PROCESSES="2")
    assert result.returncode == 0, result.stderr
    calls = sorted(fakes.records("python"), key=lambda call: call["env"]["JAX_PROCESS_ID"])
    assert [call["env"]["JAX_PROCESS_ID"] for call in calls] == ["0", "1"]
    addresses = {call["env"]["JAX_COORDINATOR_ADDRESS"] for call in calls}
    assert len(addresses) == 1
    assert re.fullmatch(r"127\.0\.0\.1:\d+", addresses.pop())
    for call in calls:
        assert call["argv"] == _local_argv(workdir, "--multihost")
        assert call["env"]["JAX_NUM_PROCESSES"] == "2"
        assert call["env"]["JAX_PLATFORMS"] == "cpu"
        assert call["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
    assert "fake python 0:" in result.stdout  # process 0 on the terminal
    assert "fake python 1:" not in result.stdout
    assert "fake python 1:" in (workdir / "logs" / "process_1.log").read_text()
    assert str(workdir / "logs" / "process_i.log") in result.stderr


def test_local_processes_take_cpu_devices_as_asked(fakes: Fakes, tmp_path: Path) -> None:
    result = _local(fakes, tmp_path / "run", NUM_PROCESSES="3", NUM_CPU_DEVICES="2")
    assert result.returncode == 0, result.stderr
    calls = fakes.records("python")
    assert sorted(call["env"]["JAX_PROCESS_ID"] for call in calls) == ["0", "1", "2"]
    assert {call["env"]["XLA_FLAGS"] for call in calls} == {
        "--xla_force_host_platform_device_count=2"
    }


def test_local_processes_share_the_gpus(fakes: Fakes, tmp_path: Path) -> None:
    result = _local(fakes, tmp_path / "run", NUM_PROCESSES="2", FAKE_GPUS="4")
    assert result.returncode == 0, result.stderr
    devices = {
        call["env"]["JAX_PROCESS_ID"]: call["env"]["CUDA_VISIBLE_DEVICES"]
        for call in fakes.records("python")
    }
    assert devices == {"0": "0,1", "1": "2,3"}
    assert all(call["env"]["JAX_PLATFORMS"] is None for call in fakes.records("python"))

    uneven = _local(fakes, tmp_path / "run", NUM_PROCESSES="3", FAKE_GPUS="4")
    assert uneven.returncode == 2
    assert "4 GPUs cannot be shared equally by NUM_PROCESSES=3" in uneven.stderr


def test_a_failing_process_stops_the_others_and_local_sh(fakes: Fakes, tmp_path: Path) -> None:
    started = time.monotonic()
    result = _local(
        fakes, tmp_path / "run", NUM_PROCESSES="3", FAKE_FAIL_PROCESS="1", FAKE_SLEEP="50"
    )
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 30  # the others did not sleep on
    assert "process 1 exited with status 3" in result.stderr
    calls = {call["env"]["JAX_PROCESS_ID"]: call for call in fakes.records("python")}
    assert calls["0"]["signal"] == calls["2"]["signal"] == "TERM"


def test_a_preempted_process_stops_no_one_and_local_sh_says_preempted(
    fakes: Fakes, tmp_path: Path
) -> None:
    """Status 75: it saved at the step every process agreed on; the others are stopping too."""
    result = _local(
        fakes,
        tmp_path / "run",
        NUM_PROCESSES="3",
        FAKE_FAIL_PROCESS="1",
        FAKE_FAIL_STATUS=str(PREEMPTED_EXIT_CODE),
        FAKE_SLEEP="2",
    )
    assert result.returncode == PREEMPTED_EXIT_CODE, result.stderr
    assert "stopping the others" not in result.stderr
    calls = {call["env"]["JAX_PROCESS_ID"]: call for call in fakes.records("python")}
    assert "signal" not in calls["0"] and "signal" not in calls["2"]


def test_a_process_that_ignores_sigterm_is_killed(fakes: Fakes, tmp_path: Path) -> None:
    started = time.monotonic()
    result = _local(
        fakes,
        tmp_path / "run",
        NUM_PROCESSES="2",
        FAKE_FAIL_PROCESS="1",
        FAKE_SLEEP="50",
        FAKE_IGNORE_TERM="1",
        KILL_GRACE_SECONDS="1",
    )
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 30
    assert "sending SIGKILL" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_local_passes_a_signal_to_every_process(
    fakes: Fakes, tmp_path: Path, signum: signal.Signals
) -> None:
    command = [str(LAUNCH / "local.sh"), *LOCAL_ARGS, str(tmp_path / "run")]
    env = fakes.env(NUM_PROCESSES="2", FAKE_SLEEP="30")
    launcher = subprocess.Popen(
        command,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell cannot trap a signal ignored when it starts, and pytest run in the background
        # ignores SIGINT; a launcher started from a terminal never does.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_for(lambda: len(fakes.records("python")) == 2)
        launcher.send_signal(signum)
        _, stderr = launcher.communicate(timeout=TIMEOUT)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, stderr
    assert [call.get("signal") for call in fakes.records("python")] == ["TERM", "TERM"]


@pytest.mark.parametrize(
    ("args", "env"),
    [([LOCAL_ARGS[0]], {}), ([LOCAL_ARGS[0], "run"], {"NUM_PROCESSES": "0"})],
    ids=["no-workdir", "zero-processes"],
)
def test_local_usage_errors(fakes: Fakes, args: list[str], env: dict[str, str]) -> None:
    result = _run([str(LAUNCH / "local.sh"), *args], fakes.env(**env))
    assert result.returncode == 2
    assert "usage: " in result.stderr
    assert not fakes.records("python")
