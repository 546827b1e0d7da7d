"""An epoch's running totals, clock and metrics: the host side of the engine's accumulators.

The step adds its loss and hits to tensors on the device (``step``); this module counts
the images, keeps the epoch's time (compile and capture left out), and reads the totals back:
once at the end of an epoch, and for a progress bar without waiting for the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..distributed import DistContext, shard

__all__ = ["EpochMeter", "EpochSums"]


@dataclass(frozen=True)
class EpochSums:
    """An epoch's running totals over all ranks: what a mid-epoch checkpoint carries."""

    loss_sum: float = 0.0  # summed per-image loss (L2 term included, as Keras reports it)
    correct: int = 0
    seen: int = 0  # images trained on
    seconds: float = 0.0  # training time, compile and capture left out

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> EpochSums:
        d = d or {}
        return cls(
            float(d.get("loss_sum", 0.0)),
            int(d.get("correct", 0)),
            int(d.get("seen", 0)),
            float(d.get("seconds", 0.0)),
        )


class EpochMeter:
    """Counts an epoch's images and time, and reads the step's device accumulators
    (``loss_sum``, ``correct``, ``bad_step``)."""

    def __init__(
        self,
        step,  # step.TrainStep: its accumulators
        device: torch.device,
        dist: DistContext,
        setup_seconds: Callable[[], float],
    ):
        self.step, self.device, self.dist = step, device, dist
        self._setup_seconds = setup_seconds
        self.seen = self._seen_at_t0 = 0  # images seen this epoch, all ranks
        self.local_seen = 0  # this rank's, since the epoch (re)started
        self._local_base = 0  # the images behind the totals this rank carries from a resume
        self._seconds_before = 0.0
        self._t0 = time.perf_counter()
        self._setup_at_t0 = 0.0
        self._last_peek = 0.0
        self._host = None

    def begin(self, start_step: int, resumed: EpochSums) -> None:
        """Set the device totals to ``resumed`` (rank 0 carries the sums, the count and time
        are everyone's) and start the clock."""
        s = self.step
        own = resumed if self.dist.is_main else EpochSums()
        s.step_t.fill_(start_step)
        s.loss_sum.fill_(own.loss_sum)
        s.correct.fill_(own.correct)
        s.bad_step.fill_(-1)
        self.seen = self._seen_at_t0 = resumed.seen
        self.local_seen = 0
        self._local_base = own.seen
        self._seconds_before = resumed.seconds
        self._t0 = time.perf_counter()
        self._setup_at_t0 = self._setup_seconds()
        self._last_peek = 0.0
        self._host = None

    def count(self, b: int) -> None:
        """A step of ``b`` global rows has run."""
        self.seen += b
        self.local_seen += shard(b, self.dist.world_size, self.dist.rank)[1]

    def _spent(self) -> float:
        setup = self._setup_seconds() - self._setup_at_t0
        return time.perf_counter() - self._t0 - setup

    def epoch_seconds(self) -> float:
        """Wall time of this epoch so far, compile and capture left out."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self._seconds_before + self._spent()

    def images_per_second(self) -> float:
        """This epoch's training speed since it (re)started, all ranks together."""
        return (self.seen - self._seen_at_t0) / max(self._spent(), 1e-9)

    def read_metrics(self) -> tuple[EpochSums, int]:
        """(the epoch's totals over all ranks, the first non-finite step or -1): one
        synchronising read."""
        s = self.step
        sums = torch.stack([s.loss_sum, s.correct.double()])
        big = torch.iinfo(torch.long).max
        bad = torch.where(s.bad_step < 0, big, s.bad_step).reshape(1)
        self.dist.all_reduce(sums, "sum")
        self.dist.all_reduce(bad, "min")
        sums, bad = sums.cpu(), int(bad.cpu())
        totals = EpochSums(float(sums[0]), int(sums[1]), self.seen, self.epoch_seconds())
        return totals, (-1 if bad == big else bad)

    def progress_postfix(self, snapshot: tuple[float, int, int]) -> dict:
        """What a progress bar shows of a :meth:`peek` snapshot. The snapshot's sums include
        those a resumed epoch carried in, so they are divided by the images behind them too."""
        seen = max(self._local_base + self.local_seen, 1)
        return {
            "loss": f"{snapshot[0] / seen:.4f}",
            "acc": f"{snapshot[1] / seen:.4f}",
            "img_s": f"{self.images_per_second():.0f}",
        }

    def peek(self, every: float = 1.0) -> tuple[float, int, int] | None:
        """This rank's running (loss sum, correct, first non-finite step or -1), without
        waiting for the device; None when there is nothing new to show.

        On the CPU the totals are read directly, at every call. On CUDA at most every
        ``every`` seconds: an asynchronous copy starts, and the previous one is returned once
        it has landed.
        """
        s = self.step
        if self.device.type != "cuda":
            return float(s.loss_sum), int(s.correct), int(s.bad_step)
        now = time.perf_counter()
        result = None
        if self._host is not None and self._host[1].query():
            h = self._host[0]
            result = (float(h[0]), int(h[1]), int(h[2]))
            self._host = None
        if self._host is None and now - self._last_peek > every:
            self._last_peek = now
            buf = torch.empty(3, dtype=torch.float64, pin_memory=True)
            buf.copy_(
                torch.stack([s.loss_sum, s.correct.double(), s.bad_step.double()]),
                non_blocking=True,
            )
            ev = torch.cuda.Event()
            ev.record()
            self._host = (buf, ev)
        return result
