"""Graceful stops: SIGTERM (a scheduler's preemption) or Ctrl-C saves a checkpoint, then exits."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)


class PreemptionGuard:
    """Within the ``with`` block, SIGTERM and SIGINT set :attr:`stop_requested` instead of killing.

    The loop checks the flag after every step, writes a checkpoint and returns. A second Ctrl-C
    interrupts at once, as usual. Outside the main thread (where signals cannot be caught) the guard
    does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.stop_requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint and stopping", self.signal_name)

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
