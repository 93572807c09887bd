"""Graceful stops: SIGTERM (a scheduler's preemption) or Ctrl-C saves a checkpoint, then exits.

One process: the guard owns SIGTERM and SIGINT and the loop stops after the step in which one
arrived. Several processes: a signal reaches the hosts at different steps, so each stopping on its
own would leave the others waiting in a collective or in a half-written checkpoint. There JAX's
preemption service owns SIGTERM (it installs its handler in ``jax.distributed.initialize``) and
agrees on a step every process reaches (:func:`jax.experimental.multihost_utils.
reached_preemption_sync_point`); the guard leaves SIGTERM alone and turns Ctrl-C into a SIGTERM to
its own process, so both take that path.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

import jax

log = logging.getLogger(__name__)


class PreemptionGuard:
    """Within the ``with`` block, :meth:`should_stop` says when to save and stop.

    A second Ctrl-C interrupts at once, as usual. Outside the main thread (where signals cannot be
    caught) the guard installs nothing.
    """

    def __init__(self) -> None:
        self.multi_process = jax.process_count() > 1
        self.signal_name: str | None = None
        self._stop_requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop_requested = True
        self.signal_name = signal.Signals(signum).name
        if self.multi_process:  # hand it to JAX's preemption service, which owns SIGTERM
            log.warning("SIGINT received: asking every process to stop at a common step")
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            log.warning("%s received: saving a checkpoint and stopping", self.signal_name)

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop after ``step``; call it after every step, in every process."""
        if not self.multi_process:
            return self._stop_requested
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            self.signal_name = self.signal_name or "a preemption notice"
            return True
        return False

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            signals = (signal.SIGINT,) if self.multi_process else (signal.SIGTERM, signal.SIGINT)
            for signum in signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
