"""Metrics to ``metrics.jsonl`` and TensorBoard event files (tensorboardX, no TensorFlow)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax


def read_metrics(workdir: str, split: str | None = None) -> list[dict[str, float]]:
    """The records of ``workdir/metrics.jsonl``, optionally only those of one ``split``."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
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
        from tensorboardX import SummaryWriter

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
        for name, value in metrics.items():
            self._tensorboard.add_scalar(f"{split}/{name}", float(value), int(step))

    def flush(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
