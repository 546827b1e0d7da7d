"""Stop signals for a training run: SIGINT and SIGTERM become a flag that the trainer checks at
safe points (so the run saves and stops cleanly); a second signal stops at once."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from ..errors import TrainingInterrupted

__all__ = ["StopSignals"]


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag checked at safe points; a second signal stops at once,
    except inside ``held()``, which it leaves first."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, object] = {}
        self._held = False
        self._pending: int | None = None  # a second signal that came while held

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: the user means it
            if self._held:
                self._pending = signum
                return
            raise _stopped_at_once(signum)
        self.signum = signum

    @contextmanager
    def held(self):
        """A step that must not be cut in two (handing a checkpoint to its writer thread): a
        second signal during it stops the run as soon as it is done."""
        self._held = True
        try:
            yield
        finally:
            self._held = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise _stopped_at_once(signum)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _stopped_at_once(signum: int) -> TrainingInterrupted:
    return TrainingInterrupted(f"{signal.Signals(signum).name}: stopped at once", signum)
