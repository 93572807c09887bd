"""Runs any experiment.

    python -m noise_research.main --config configs/<task>/<name>.py --workdir DIR

Config values are overridden on the command line as ``--config.key=value`` (ml_collections). The
config is validated before anything is built or compiled; a wrong value stops the run with one line
naming the key, the value and what is allowed. Running the same command again resumes from the last
checkpoint in ``--workdir``; SIGTERM or Ctrl-C saves a checkpoint and exits. A workdir holds one
run: a config that differs in a key that changes what is trained is refused
(``--on_config_change``), and a second run in a workdir in use is refused.

Exit codes: 0 trained to ``train.num_steps`` (or already there); 2 a bad config, flag, input file
or workdir (one line on stderr); 3 the loss or the model state stopped being finite (nothing saved
after the last good checkpoint, which the line names); 75 (EX_TEMPFAIL) stopped by SIGTERM /
Ctrl-C after saving a checkpoint: run the same command to resume (``launch/slurm.sbatch``
requeues on it).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import runpy
import sys
from collections.abc import Sequence
from typing import NoReturn

from absl import app, flags
from ml_collections import config_flags

from noise_research import config_schema

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (Python).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and pictures go.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Join a multi-process run with jax.distributed.initialize() (one process per host, or "
    "NUM_PROCESSES=N launch/local.sh for N on this machine).",
)
_DESCRIBE = flags.DEFINE_bool(
    "describe",
    False,
    "Print every config key with its value and meaning (after overrides), check them, and exit.",
)
_ON_CONFIG_CHANGE = flags.DEFINE_enum(
    "on_config_change",
    "refuse",
    ["refuse", "resume", "restart"],
    "When --workdir holds a run whose config differs in a key that changes what is trained: "
    "'refuse' (stop, naming the keys), 'resume' (continue that run with the new values), "
    "'restart' (set that run aside in WORKDIR/set_aside/ and start over; the same command again "
    "resumes the new run). Cadences and other "
    "keys declared resumable may always change; each change is recorded in config_changes.jsonl.",
)
flags.mark_flags_as_required(["config"])

BAD_INPUT_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3
PREEMPTED_EXIT_CODE = 75  # sysexits' EX_TEMPFAIL: "try again later"

log = logging.getLogger("noise_research")


def _config_argument(argv: Sequence[str]) -> str | None:
    """The value of ``--config=FILE[:ARG]`` or ``--config FILE[:ARG]``."""
    for index, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1]
    return None


def _override_problem(argv: Sequence[str]) -> str | None:
    """Explains a bad ``--config.key=value`` override, or a config file that does not load."""
    config_arg = _config_argument(argv)
    if config_arg is None:
        return None
    path, _, file_arg = config_arg.partition(":")
    if not os.path.isfile(path):
        return f"--config {config_arg}: no such config file {os.path.abspath(path)!r}"
    try:
        get_config = runpy.run_path(path)["get_config"]
        if file_arg and not inspect.signature(get_config).parameters:
            return f"--config {config_arg}: {path} takes no ':ARGUMENT' (no variants)"
        config = get_config(file_arg) if file_arg else get_config()
    except Exception as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        return f"--config {config_arg}: the config file failed to load: {reason}"
    known = config_schema.flatten(config.to_dict())
    for index, arg in enumerate(argv):
        if arg.startswith("--config."):
            key, has_value, value = arg[len("--config.") :].partition("=")
            if not has_value:
                value = argv[index + 1] if index + 1 < len(argv) else ""
            if key not in known and not any(k.startswith(key + ".") for k in known):
                return config_schema.unknown_key_message(key, value, known)
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        remaining = flags.FLAGS(argv)
        if _CONFIG.present:
            _CONFIG.value.to_dict()  # ml_collections defers a config file's load error to here
    except Exception as error:
        _fail(_override_problem(argv[1:]) or str(error).splitlines()[0], BAD_INPUT_EXIT_CODE)
    return remaining


def main(argv: Sequence[str]) -> None:
    del argv
    for noisy in ("absl", "jax"):  # orbax's and the backend probe's INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    if _MULTIHOST.value:
        from noise_research.train.distributed import initialize_distributed

        initialize_distributed()
    try:
        if _DESCRIBE.value:
            print(_describe(_CONFIG.value.to_dict()))
            return
        if _WORKDIR.value is None:
            _fail("--workdir is required: where checkpoints, metrics go", BAD_INPUT_EXIT_CODE)
        _run(_CONFIG.value.to_dict(), _WORKDIR.value)
    except config_schema.ConfigError as error:  # a wrong value, file or workdir
        _fail(str(error), BAD_INPUT_EXIT_CODE)


def _fail(message: str, exit_code: int) -> NoReturn:
    """One line on stderr (a message's own line breaks folded), then exit with ``exit_code``."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.exit(exit_code)


def _describe(config: dict) -> str:
    """``key = value   meaning`` for every key of a checked config; keys that may change when a
    run resumes say so."""
    import jax

    from noise_research.tasks import task_module

    module = task_module(config.get("task"))
    config_schema.validate(config, module.config_rules(), num_devices=jax.device_count())
    meanings = {}
    for name, section in module.SECTIONS.items():
        meanings.update(config_schema.describe_keys(name, section))
    for key in config_schema.resumable_keys(module.SECTIONS):  # see --on_config_change
        meanings[key] = f"(may change on resume) {meanings[key]}"
    values = {key: repr(value) for key, value in config_schema.flatten(config).items()}
    key_width = max(map(len, values))
    value_width = min(max(map(len, values.values())), 24)
    return "\n".join(
        f"{key:<{key_width}} = {value:<{value_width}}  {meanings.get(key, '')}".rstrip()
        for key, value in values.items()
    )


def _run(config: dict, workdir: str) -> None:
    """Validates ``config``, then trains, or runs the evaluation ``config.mode`` on the latest
    checkpoint. A value that only the data or another run can check raises ConfigError too."""
    import jax

    from noise_research.tasks import task_module
    from noise_research.train.loop import LoopConfig, TrainingDiverged, restore_state, train
    from noise_research.train.workdir import check_writable

    module = task_module(config.get("task"))
    config_schema.validate(config, module.config_rules(), num_devices=jax.device_count())
    mode = config.get("mode", "train")
    if mode == "train":
        check_writable(workdir)
    task = module.build(config)
    loop_config = config_schema.read_section(LoopConfig, config["train"])
    if mode != "train":
        restored = restore_state(task, loop_config, workdir)
        if restored is None:
            _fail(
                f"config.mode = {mode!r} evaluates the latest checkpoint in {workdir}, "
                "but there is none: train first (the same command with --config.mode=train)",
                BAD_INPUT_EXIT_CODE,
            )
        state, step = restored
        print(json.dumps({"step": step, **task.run_mode(mode, state, workdir, step)}, indent=2))
        return
    try:
        result = train(task, loop_config, workdir, on_config_change=_ON_CONFIG_CHANGE.value)
    except TrainingDiverged as error:
        _fail(str(error), DIVERGED_EXIT_CODE)
    if result.preempted:
        print(f"stopped at step {result.step}; run the same command to resume from {workdir}")
        sys.exit(PREEMPTED_EXIT_CODE)
    if result.already_finished:
        print(f"the run in {workdir} is finished at step {result.step}; nothing to do")
        return
    summary = {"step": result.step, **result.eval_metrics}
    print(json.dumps(summary, indent=2))
    if loop_config.final_report:
        print(f"pictures and tables: {os.path.join(workdir, 'report')}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
