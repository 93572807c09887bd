"""Metrics to ``metrics.jsonl`` and TensorBoard event files (tensorboardX, no TensorFlow; without
tensorboardX installed, metrics.jsonl alone)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping

import jax

from noise_research.config_schema import ConfigError

log = logging.getLogger(__name__)


def read_metrics(workdir: str, split: str | None = None) -> list[dict[str, float]]:
    """The records of ``workdir/metrics.jsonl``, optionally only those of one ``split``.

    A last line cut off mid-write (a killed process) is skipped with a warning; any other line
    that is not a record raises ConfigError naming the file and the line.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path) as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not {"step", "split"} <= record.keys():
                raise ValueError("not a {step, split, ...} record")
        except ValueError as error:
            if number == len(lines):  # no newline after it: the write was cut off
                log.warning("%s: skipping its last line, cut off mid-write: %.60r", path, line)
                continue
            raise ConfigError(
                f"{path}, line {number}: not a metrics record ({error}); move the file aside "
                "to go on (the checkpoints do not need it)"
            ) from None
        records.append(record)
    return [r for r in records if split is None or r["split"] == split]


class MetricWriter:
    """Writes scalars for one run; only process 0 writes.

    Each line of ``metrics.jsonl`` is ``{"step": s, "split": "train" | "eval" | ..., name: value}``.
    On resume from step ``s``, lines newer than ``s`` (written by the interrupted run after its last
    checkpoint) are dropped so the file reads as one uninterrupted run.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tensorboard = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._truncate_after(resume_step)
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # e.g. an accelerator image without it: metrics.jsonl is the record
            log.warning(
                "tensorboardX is not installed: metrics go to %s only, no TensorBoard files "
                "(pip install tensorboardX to get them)",
                self.path,
            )
            return
        self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=None)

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        kept = [r for r in read_metrics(os.path.dirname(self.path)) if r["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tensorboard is None:
            return
        for name, value in metrics.items():
            self._tensorboard.add_scalar(f"{split}/{name}", float(value), int(step))

    def flush(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
