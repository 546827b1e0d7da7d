"""When a run writes its checkpoint, and what it adds to its records there: the cadence (at
most every ``checkpoint_every`` seconds, and always at the end and on a stop), the write in a
background thread, and the random states a resume needs to draw what the run would have."""

from __future__ import annotations

import time

import torch

from .checkpoint import BackgroundWriter, save_checkpoint
from .records import checkpoint_state
from .run import Run
from .stop_signals import StopSignals

__all__ = ["Checkpointer", "restore_rng", "rng_state"]


class Checkpointer:
    """Writes a run's checkpoints; only rank 0 writes."""

    def __init__(self, run: Run, signals: StopSignals):
        self.run = run
        self.signals = signals
        self.writer = BackgroundWriter()
        self.last_save = time.monotonic()
        #: The last epoch whose end is on disk (0: none yet), named when a run breaks.
        self.saved_epoch = run.start_epoch

    def due(self) -> bool:
        """Whether ``checkpoint_every`` seconds have passed since the last checkpoint (or
        the start): copying the state to the host every epoch would cost as much as a fast
        epoch's training."""
        return time.monotonic() - self.last_save >= self.run.opts.checkpoint_every

    def save(
        self, epoch: int, step: int, data_state: torch.Tensor, epoch_so_far: dict | None
    ) -> None:
        """The checkpoint at ``epoch`` (finished epochs), ``step`` steps into the next, with
        the data generator's state as of that epoch's start and its totals so far."""
        run = self.run
        if not run.dist.is_main:
            return
        rng = rng_state(data_state, run.device)
        state = checkpoint_state(run, epoch, step, rng, epoch_so_far)
        self.writer.wait()  # the previous write (a second Ctrl-C may cut this wait short)
        with self.signals.held():  # hashed and written in a thread while the next epoch trains
            save_checkpoint(run.out, state, writer=self.writer)
        self.last_save = time.monotonic()
        if step == 0:
            self.saved_epoch = epoch

    def wait(self) -> None:
        """Until the checkpoint on its way is on disk (its error raised here)."""
        self.writer.wait()

    def close(self, quietly: bool) -> None:
        """The last write finished; with ``quietly`` (another error is on its way) its error
        is only reported, beside that one."""
        self.writer.wait(quietly=quietly, warn=self.run.runlog.warn)


def rng_state(data_state: torch.Tensor, device: torch.device) -> dict:
    """The random states a resumed run needs: the data draws' generator (as of the start of
    the epoch being saved), torch's CPU generator (dropout) and the GPU's."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"data": data_state, "cpu": torch.get_rng_state(), "cuda": cuda}


def restore_rng(rng: dict, data_gen: torch.Generator, device: torch.device) -> None:
    """Set the random states :func:`rng_state` saved."""
    data_gen.set_state(rng["data"])
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
