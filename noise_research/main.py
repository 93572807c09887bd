"""Runs any experiment.

    python -m noise_research.main --config configs/<task>/<name>.py --workdir DIR

Config values are overridden on the command line as ``--config.key=value`` (ml_collections). The
config is validated before anything is built or compiled; a wrong value stops the run with one line
naming the key, the value and what is allowed. Running the same command again resumes from the last
checkpoint in ``--workdir``; SIGTERM or Ctrl-C saves a checkpoint and exits.
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import sys
from collections.abc import Sequence

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
flags.mark_flags_as_required(["config"])

log = logging.getLogger("noise_research")


def _override_problem(argv: Sequence[str]) -> str | None:
    """Explains a bad ``--config.key=value`` override, or a config file that does not load."""
    config_arg = next(
        (a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
        None,
    )
    if config_arg is None:
        return None
    path, _, file_arg = config_arg.partition(":")
    if not os.path.isfile(path):
        return f"--config={config_arg}: no such config file {path!r}"
    try:
        get_config = runpy.run_path(path)["get_config"]
        config = get_config(file_arg) if file_arg else get_config()
    except Exception as error:
        return f"--config={config_arg}: the config file failed to load: {error}"
    known = config_schema.flatten(config.to_dict())
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config.") :].split("=", 1)[0]
            if key not in known and not any(k.startswith(key + ".") for k in known):
                return config_schema.unknown_key_message(key, arg.split("=", 1)[-1], known)
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except Exception as error:
        problem = _override_problem(argv[1:]) or str(error).splitlines()[0]
        sys.stderr.write(f"error: {problem}\n")
        sys.exit(2)


def _record_config(workdir: str, config: dict) -> None:
    """Writes ``config.json``; on resume, says which keys differ from the previous run's."""
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            changed = config_schema.differences(json.load(f), config)
        if changed:
            log.warning(
                "config differs from the run already in %s: %s",
                workdir,
                ", ".join(f"{key}: {before!r} -> {now!r}" for key, before, now in changed),
            )
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


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
            sys.stderr.write("error: --workdir is required: where checkpoints, metrics go\n")
            sys.exit(2)
        _run(_CONFIG.value.to_dict(), _WORKDIR.value)
    except config_schema.ConfigError as error:  # a wrong value, found before any compilation
        sys.stderr.write(f"error: {error}\n")
        sys.exit(2)


def _describe(config: dict) -> str:
    """``key = value   meaning`` for every key of a checked config."""
    import jax

    from noise_research.tasks import task_module

    module = task_module(config.get("task"))
    config_schema.validate(config, module.config_rules(), num_devices=jax.device_count())
    meanings = {}
    for name, section in module.SECTIONS.items():
        meanings.update(config_schema.describe_keys(name, section))
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
    from noise_research.train.loop import LoopConfig, restore_state, train

    module = task_module(config.get("task"))
    config_schema.validate(config, module.config_rules(), num_devices=jax.device_count())
    mode = config.get("mode", "train")
    if mode == "train" and jax.process_index() == 0:  # an evaluation mode keeps the run's config
        _record_config(workdir, config)
    task = module.build(config)
    loop_config = config_schema.read_section(LoopConfig, config["train"])
    if mode != "train":
        restored = restore_state(task, loop_config, workdir)
        if restored is None:
            sys.stderr.write(
                f"error: config.mode = {mode!r} evaluates the latest checkpoint in {workdir}, "
                "but there is none: train first (the same command with --config.mode=train)\n"
            )
            sys.exit(2)
        state, step = restored
        print(json.dumps({"step": step, **task.run_mode(mode, state, workdir, step)}, indent=2))
        return
    result = train(task, loop_config, workdir)
    if result.preempted:
        print(f"stopped at step {result.step}; run the same command to resume from {workdir}")
        return
    summary = {"step": result.step, **result.eval_metrics}
    print(json.dumps(summary, indent=2))
    print(f"pictures and tables: {os.path.join(workdir, 'report')}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
