"""Checkpoints: one orbax ``CheckpointManager`` for every trainer.

A checkpoint holds two items: ``state`` (the task's whole state pytree, saved as one host-equivalent
tree whatever the parallel backend) and ``meta`` (JSON: the step, the data position, the config).
Saves are asynchronous — the next training steps run while the files are written — and atomic:
orbax writes into a temporary folder and renames it when complete, so an interrupted save leaves no
checkpoint that looks finished. A finished checkpoint whose files are later damaged is reported when
it fails to restore, and the previous good one is used instead.
"""

from __future__ import annotations

import logging
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

PyTree = Any
log = logging.getLogger(__name__)


class Checkpointer:
    """Saves every ``save_every`` steps (and when forced), keeps the newest ``keep``."""

    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
        self.directory = epath.Path(directory).absolute()
        self.save_every = save_every
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def save(self, step: int, state: PyTree, meta: dict[str, Any], *, force: bool = False) -> bool:
        """Starts saving ``state`` if ``step`` is a save step (or ``force``); returns whether."""
        if step % self.save_every and not force:
            return False
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def restore_latest(self, abstract_state: PyTree) -> tuple[PyTree, dict[str, Any]] | None:
        """The newest checkpoint that restores cleanly, as ``(state, meta)``; None if there is none.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` (with shardings where the state
        lives on several devices), e.g. ``jax.eval_shape(task.init, ...)``.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as error:
                log.warning(
                    "checkpoint at step %d in %s could not be restored (%s: %s); "
                    "trying the previous one",
                    step,
                    self.directory,
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                )
                continue
            return restored.state, dict(restored.meta)
        return None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def wait(self) -> None:
        """Blocks until the asynchronous saves in flight are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
