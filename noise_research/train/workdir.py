"""A run's working directory: one run at a time, one config per run, nothing deleted.

Layout (``WORKDIR/``): ``checkpoints/<step>/`` (orbax), ``metrics.jsonl``, ``tensorboard/``,
``report/``, ``config.json`` (the config the run trains with now), ``config_changes.jsonl`` (each
resume that changed a resumable key: the step and the keys), ``LOCK`` (the process training in it),
and, when something had to make way, ``set_aside/<what>-<time>/``: a checkpoint that failed to
restore (``damaged-step<N>``) or a whole earlier run replaced with ``--on_config_change=restart``
(``replaced-run``). Nothing the loop finds is deleted.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from noise_research.config_schema import ConfigError, differences

log = logging.getLogger(__name__)

LOCK_NAME = "LOCK"
SET_ASIDE = "set_aside"
ON_CONFIG_CHANGE = ("refuse", "resume", "restart")


def check_writable(workdir: str) -> None:
    """Creates ``workdir`` if needed; ConfigError naming it when it cannot hold a run."""
    if not workdir:
        raise ConfigError("--workdir is empty: give the directory for checkpoints and metrics")
    if "://" in workdir:
        raise ConfigError(
            f"--workdir={workdir}: metrics, the lock and the report need a local or mounted "
            "filesystem path (mount the bucket, e.g. with gcsfuse)"
        )
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ConfigError(
            f"--workdir={workdir}: cannot write there ({error.strerror or error}: "
            f"{error.filename or workdir})"
        ) from error


class WorkdirLock:
    """An exclusive claim on a workdir by one run's chief process (``with WorkdirLock(dir):``).

    ``LOCK`` is created with O_CREAT | O_EXCL, atomic on local disks and on NFS v3+, and holds the
    host, the pid and the start time. A lock whose process has died on this host (a run killed
    with ``kill -9`` or out of memory) is taken over, with one line saying so. A lock held from
    another host cannot be checked from here: the run is refused, naming the holder; delete
    ``LOCK`` if that run is gone. Object storage has no exclusive create: URLs (gs://, s3://) are
    refused by :func:`check_writable`; on a bucket mounted as a filesystem (gcsfuse, s3fs) the
    lock is only as exclusive as the mount's O_EXCL, so there it guards against a second run
    started by mistake, not against two started in the same instant.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.held = False

    def __enter__(self) -> WorkdirLock:
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _now(),
        }
        for _ in range(2):  # the second try after taking over a stale lock
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                previous = _read_lock(self.path)
                if not _is_stale(previous):
                    raise ConfigError(
                        f"{os.path.dirname(self.path)} is in use by another run ("
                        f"{_describe_holder(previous)}); wait for it, use another --workdir, "
                        f"or delete {self.path} if that run is gone"
                    ) from None
                log.warning(
                    "taking over the lock of a run that is gone (%s)", _describe_holder(previous)
                )
                os.remove(self.path)
                continue
            with os.fdopen(descriptor, "w") as f:
                json.dump(holder, f)
            self.held = True
            return self
        raise ConfigError(f"{self.path}: could not take the lock (another run took it first)")

    def __exit__(self, *exc_info: object) -> None:
        if self.held:
            os.remove(self.path)
            self.held = False


def _read_lock(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):  # a lock half written by a killed process
        return {}


def _is_stale(holder: Mapping[str, Any]) -> bool:
    """A lock we can prove nobody holds: unreadable, or its process is gone from this host."""
    if not holder or "pid" not in holder:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _describe_holder(holder: Mapping[str, Any]) -> str:
    if not holder:
        return "an unreadable LOCK file"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def set_aside(workdir: str, paths: Iterable[str], label: str) -> str:
    """Moves ``paths`` into a new ``workdir/set_aside/<label>-<time>/``; returns that folder."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = os.path.join(workdir, SET_ASIDE, f"{label}-{stamp}")
    suffix = 1
    while os.path.exists(target):
        suffix += 1
        target = os.path.join(workdir, SET_ASIDE, f"{label}-{stamp}-{suffix}")
    os.makedirs(target)
    for path in paths:
        shutil.move(path, os.path.join(target, os.path.basename(path.rstrip(os.sep))))
    return target


def set_aside_run(workdir: str) -> str | None:
    """Moves everything of the run in ``workdir`` (not the lock, not earlier set-asides) aside."""
    names = [n for n in sorted(os.listdir(workdir)) if n not in (LOCK_NAME, SET_ASIDE)]
    if not names:
        return None
    return set_aside(workdir, [os.path.join(workdir, n) for n in names], "replaced-run")


def config_change(
    checkpointed: Mapping[str, Any],
    now: Mapping[str, Any],
    free_keys: set[str],
    *,
    workdir: str,
    step: int,
    on_config_change: str,
) -> list[tuple[str, Any, Any]]:
    """The differences between the checkpointed run's config and this one, if resuming may go on.

    Raises ConfigError naming the keys that differ, unless every one is in ``free_keys`` or
    ``on_config_change`` is ``'resume'`` (the user's explicit choice). ``'restart'`` is handled by
    the caller before any checkpoint is read.
    """
    changed = differences(checkpointed, now)
    refused = [change for change in changed if change[0] not in free_keys]
    if refused and on_config_change == "refuse":
        listed = ", ".join(f"{key}: {before!r} -> {after!r}" for key, before, after in refused)
        raise ConfigError(
            f"{workdir} holds a run (step {step}) whose config differs: {listed}; use a new "
            "--workdir, or --on_config_change=restart to set that run aside and start over, or "
            "--on_config_change=resume to continue it with the new values"
        )
    return changed


def record_config(
    workdir: str, config: Mapping[str, Any], step: int, changed: list[tuple[str, Any, Any]]
) -> None:
    """Writes ``config.json``; appends the resume's changes (if any) to ``config_changes.jsonl``."""
    if changed:
        record = {
            "step": step,
            "time": _now(),
            "changes": {key: [before, after] for key, before, after in changed},
        }
        with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
    temporary = os.path.join(workdir, "config.json.tmp")
    with open(temporary, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.replace(temporary, os.path.join(workdir, "config.json"))
