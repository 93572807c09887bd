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
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from noise_research.config_schema import ConfigError, differences, flatten

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
        with tempfile.TemporaryFile(dir=workdir) as probe:  # a unique name, gone when closed
            probe.write(b"ok")
    except OSError as error:
        raise ConfigError(
            f"--workdir={workdir}: cannot write there ({error.strerror or error}: "
            f"{error.filename or workdir})"
        ) from error


class WorkdirLock:
    """An exclusive claim on a workdir by one run's chief process (``with WorkdirLock(dir):``).

    ``LOCK`` is created with O_CREAT | O_EXCL, atomic on local disks and on NFS v3+, and holds the
    host, the pid, the process's identity (boot id and start time, where /proc has them), the
    SLURM job id if any, and the start time. It is taken over, with one line saying so, when its
    run is provably gone: on this host, its process has died (``kill -9``, out of memory) or its
    pid now belongs to another process (a restarted container reuses pids, this one's included);
    anywhere, it was taken by an earlier run of this same SLURM job (a requeued job may start on
    another node). A lock held from another host otherwise cannot be checked from here: the run
    is refused, naming the holder; delete ``LOCK`` if that run is gone. Object storage has no
    exclusive create: URLs (gs://, s3://) are refused by :func:`check_writable`; on a bucket
    mounted as a filesystem (gcsfuse, s3fs) the lock is only as exclusive as the mount's O_EXCL,
    so there it guards against a second run started by mistake, not against two started in the
    same instant.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.held = False

    def __enter__(self) -> WorkdirLock:
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process": process_identity(os.getpid()),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
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


def process_identity(pid: int) -> str | None:
    """``boot id/start time`` of process ``pid`` (Linux /proc), which a reused pid does not share;
    None where /proc does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat") as f:
            start_time = f.read().rsplit(")", 1)[1].split()[19]  # field 22, after the name
    except (OSError, IndexError):
        return None
    return f"{boot}/{start_time}"


def _is_stale(holder: Mapping[str, Any]) -> bool:
    """A lock we can prove nobody holds (see :class:`WorkdirLock`)."""
    if not holder or "pid" not in holder:
        return True  # half written by a killed process
    job = os.environ.get("SLURM_JOB_ID")
    if job is not None and holder.get("slurm_job") == job:
        return True  # this job's earlier run: a job runs once at a time
    if holder.get("host") != socket.gethostname():
        return False
    pid = int(holder["pid"])
    if pid == os.getpid():
        return True  # not us: we are only now taking it; a restarted container reused the pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    recorded, now = holder.get("process"), process_identity(pid)
    return recorded is not None and now is not None and recorded != now


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
    """Moves everything of the run in ``workdir`` aside: not the lock, not earlier set-asides, not
    ``logs/`` (``launch/local.sh`` appends the processes' output there, open while they run)."""
    names = [n for n in sorted(os.listdir(workdir)) if n not in (LOCK_NAME, SET_ASIDE, "logs")]
    if not names:
        return None
    return set_aside(workdir, [os.path.join(workdir, n) for n in names], "replaced-run")


def config_change(
    checkpointed: Mapping[str, Any],
    now: Mapping[str, Any],
    free_keys: set[str],
    defaults: Mapping[str, Any],
    *,
    workdir: str,
    step: int,
    on_config_change: str,
) -> list[tuple[str, Any, Any]]:
    """The differences between the checkpointed run's config and this one, if resuming may go on.

    Raises ConfigError naming the keys that differ, unless every one is in ``free_keys``, is a key
    the checkpointed config does not have (written by an older version of the code) whose value
    now is its default ``defaults[key]`` (a new key's default keeps the old behaviour), or
    ``on_config_change`` is ``'resume'`` (the user's explicit choice). ``'restart'`` is handled by
    the caller before any state is read (:func:`refused_changes` of the newest checkpoint's meta).
    """
    changed = differences(checkpointed, now)
    refused = refused_changes(checkpointed, changed, free_keys, defaults)
    if refused and on_config_change == "refuse":
        raise ConfigError(
            f"{workdir} holds a run (step {step}) whose config differs: "
            f"{describe_changes(refused)}; use a new --workdir, or --on_config_change=restart to "
            "set that run aside and start over, or --on_config_change=resume to continue it with "
            "the new values"
        )
    return changed


def refused_changes(
    checkpointed: Mapping[str, Any],
    changed: list[tuple[str, Any, Any]],
    free_keys: set[str],
    defaults: Mapping[str, Any],
) -> list[tuple[str, Any, Any]]:
    """The ``changed`` keys a resume may not take (see :func:`config_change`)."""
    known_before = flatten(json.loads(json.dumps(checkpointed)))

    def free(key: str, after: Any) -> bool:
        if key in free_keys:
            return True
        return key not in known_before and key in defaults and after == defaults[key]

    return [(key, before, after) for key, before, after in changed if not free(key, after)]


def describe_changes(changed: list[tuple[str, Any, Any]]) -> str:
    """``key: before -> after, ...``."""
    return ", ".join(f"{key}: {before!r} -> {after!r}" for key, before, after in changed)


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
