"""Checkpoints: one orbax ``CheckpointManager`` for every trainer.

A checkpoint holds two items: ``state`` (the task's whole state pytree, saved as one host-equivalent
tree whatever the parallel backend) and ``meta`` (JSON: the step, the data position, the config).
Saves are asynchronous — the next training steps run while the files are written — and atomic:
orbax writes into a temporary folder and renames it when complete, so an interrupted save leaves no
checkpoint that looks finished. A finished checkpoint whose files are later damaged is reported when
it fails to restore, and the previous good one is used instead; the train loop then moves the
damaged one aside (``train.workdir``), so the steps retrained after it are saved again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from noise_research.config_schema import ConfigError

PyTree = Any
log = logging.getLogger(__name__)
_META_ONLY = ocp.args.Composite(meta=ocp.args.JsonRestore())


class Checkpointer:
    """Saves every ``save_every`` steps (and when forced), keeps the newest ``keep``."""

    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
        self.directory = epath.Path(directory).absolute()
        self.save_every = save_every
        self.damaged: list[int] = []  # steps that failed to restore, newest first
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def due(self, step: int) -> bool:
        """Whether ``step`` is a save step."""
        return step % self.save_every == 0

    def save(self, step: int, state: PyTree, meta: dict[str, Any], *, force: bool = False) -> bool:
        """Starts saving ``state`` if ``step`` is a save step (or ``force``); returns whether."""
        if not (force or self.due(step)):
            return False
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def restore_latest(
        self,
        abstract_state: PyTree,
        check_meta: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> tuple[PyTree, dict[str, Any]] | None:
        """The newest checkpoint that restores cleanly, as ``(state, meta)``; None if there is none.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` (with shardings where the state
        lives on several devices), e.g. ``jax.eval_shape(task.init, ...)``. ``check_meta`` sees
        each candidate's meta before its state is read: it may refuse it by raising (a run whose
        config differs), or return why its state may not fit this model (a changed config), in
        which case a state that does not restore raises ConfigError with that reason instead of
        counting as damaged. The steps that failed to restore are in :attr:`damaged`.
        """
        self.damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = dict(self.manager.restore(step, args=_META_ONLY).meta)
            except Exception as error:
                self._report_damaged(step, error)
                continue
            misfit_reason = check_meta(meta) if check_meta is not None else None
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as error:
                if misfit_reason is not None:
                    raise ConfigError(
                        f"the checkpoint at step {step} in {self.directory} does not restore "
                        f"into this model ({_first_line(error)}): {misfit_reason}"
                    ) from error
                self._report_damaged(step, error)
                continue
            return restored.state, meta
        return None

    def newest_meta(self) -> dict[str, Any] | None:
        """The meta of the newest checkpoint whose meta reads (its state is not read); None if
        there is none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return dict(self.manager.restore(step, args=_META_ONLY).meta)
            except Exception:
                continue
        return None

    def _report_damaged(self, step: int, error: Exception) -> None:
        self.damaged.append(step)
        log.warning(
            "checkpoint at step %d in %s could not be restored (%s: %s); trying the previous one",
            step,
            self.directory,
            type(error).__name__,
            _first_line(error),
        )

    def step_path(self, step: int) -> str:
        return str(self.directory / str(step))

    def reload(self) -> None:
        """Re-reads the checkpoint folders (after some were moved away)."""
        self.manager.reload()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def wait(self) -> None:
        """Blocks until the asynchronous saves in flight are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
