"""How a training run stops: SIGINT and SIGTERM become a flag that the trainer checks at safe
points (so the run saves and stops cleanly; the ranks of a data-parallel run agree on the step);
a second signal stops at once."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from ..distributed import DistContext
from ..errors import TrainingInterrupted
from ..files import CHECKPOINT

__all__ = ["EvaluationStopped", "StopProtocol", "StopSignals"]


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


class EvaluationStopped(Exception):
    """A signal arrived during an evaluation; the epoch's training is saved, not evaluated."""


class StopProtocol:
    """Where a run may stop: after any step, inside an evaluation (one process), after an
    epoch. The ranks of a data-parallel run agree on one step, every few steps."""

    def __init__(self, signals: StopSignals, dist: DistContext, device: torch.device):
        self.signals = signals
        self.dist = dist
        self.device = device
        #: Steps between the ranks' agreements (each is an all-reduce: a read back).
        self.every = 50 if device.type == "cuda" else 5

    def requested(self, step: int, last: bool) -> bool:
        """Whether a signal asks to stop after ``step`` (``last``: the epoch's end, where the
        ranks always agree)."""
        if self.dist.enabled and not last and step % self.every:
            return False
        self.signals.signum = self.dist.agreed_signal(self.signals.signum, self.device)
        return self.signals.signum is not None

    def check_evaluation(self) -> None:
        """Raise :class:`EvaluationStopped` when a signal came during an evaluation (in one
        process; under data parallelism the ranks finish the evaluation together)."""
        if self.signals.signum is not None and not self.dist.enabled:
            raise EvaluationStopped

    def interrupted(self, where: str, out: Path, model: str) -> TrainingInterrupted:
        """The error that ends a run stopped ``where``, its checkpoint on disk."""
        signum = self.signals.signum or signal.SIGINT
        return TrainingInterrupted(
            f"{signal.Signals(signum).name}: stopped {where} and saved {out / CHECKPOINT}.",
            signum,
            run_dir=out,
            model=model,
        )
