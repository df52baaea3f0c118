"""SIGINT / SIGTERM during training: finish the current step, then stop resumably."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from condnet.engine.distributed import Dist, StopVote
from condnet.errors import Interrupted


class StopSignals:
    """While active, SIGINT and SIGTERM only set a flag that `check()` turns into `Interrupted`.

    The training loop calls `check()` between steps, so a signal never tears a step or a
    checkpoint write apart. Under DDP (`ctx.enabled`) the ranks vote at every check, so a
    signal to any of them stops all of them before the same step, one step after it came.
    Outside the main thread the handlers are not installed.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, ctx: Dist | None = None) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._ctx = ctx or Dist()
        self._vote: StopVote | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        if self._ctx.enabled:
            self._vote = StopVote()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._vote is not None and exc_type is None:
            self._vote.wait()  # the last vote, which every rank sent: nothing left in flight

    def check(self, epoch: int = -1, step: int = -1) -> None:
        """Raise `Interrupted` (naming `epoch` and `step`) once the ranks agree to stop."""
        request = self.received or 0
        signum = self._vote.exchange(request) if self._vote is not None else request
        if signum:
            raise Interrupted(signum, epoch, step)
