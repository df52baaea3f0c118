"""SIGINT / SIGTERM during training: finish the current step, then stop resumably."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Interrupted(Exception):
    """Training stopped on a signal; `last.pt` holds the last completed epoch."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM only set a flag that `check()` turns into `Interrupted`.

    The training loop calls `check()` between steps, so a signal never tears a step or a
    checkpoint write apart. Outside the main thread it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def check(self) -> None:
        if self.received is not None:
            raise Interrupted(self.received)
