"""The training loop: the seed recipe, epoch by epoch, with checkpoints that resume exactly.

``train`` locks the run folder, builds the run (``build``), and hands it to a :class:`Trainer`,
which runs the epochs. Data flows one way: uint8 images on the device -> the engine's step
(normalise and augment the batch, model, Keras loss and Keras-form SGD, metrics summed on the
device) -> the epoch's totals, read once -> evaluation -> metrics.csv, TensorBoard and a
checkpoint (``checkpointer``). A signal stops the run at a safe point (``stop_signals``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..data import CIFAR10
from ..distributed import DistContext, resolve_device
from ..engine.core import EpochSums
from ..engine.evaluate import EvalResult, eval_batch_size
from ..errors import (
    CheckpointError,
    NonFiniteLossError,
    RunSetupError,
    TrainingInterrupted,
    param,
)
from ..files import (
    CHECKPOINT,
    prepare_run_folder,
    remove_empty_run_folder,
    remove_stale_temp_files,
)
from .build import build_run, device_and_ranks
from .checkpoint import RunLock
from .checkpointer import Checkpointer
from .records import run_result, save_final_model, stopped_result
from .run import Run, TrainOptions
from .runlog import METRIC_COLUMNS, RunLog, epoch_line, progress_bar
from .stop_signals import EvaluationStopped, StopProtocol, StopSignals

__all__ = [
    "METRIC_COLUMNS",
    "NonFiniteLossError",
    "RunSetupError",
    "TrainOptions",
    "Trainer",
    "TrainingInterrupted",
    "resolve_device",
    "train",
]


def train(
    options: TrainOptions,
    data: CIFAR10 | None = None,
    on_step: Callable[[Trainer, int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train as ``options`` say; returns the result summary (also written to result.json).

    ``data``: CIFAR-10 already loaded; ``on_step(trainer, epoch, step)``: called after each
    step (tests use it to interrupt); ``log``: where the run's lines go (default: stdout).
    """
    out = Path(options.out)
    device, dist = device_and_ranks(options.device)
    runlog = RunLog(
        out,
        enabled=dist.is_main,
        tensorboard=options.tensorboard,
        quiet=options.quiet,
        print_line=log,
    )
    with _run_folder(out, dist), StopSignals() as signals:
        try:
            run = build_run(options, device, dist, runlog, data)
            checkpoints = Checkpointer(run, signals)
            try:
                trainer = Trainer(run, checkpoints, StopProtocol(signals, dist, device), on_step)
                return trainer.train()
            finally:
                checkpoints.close(quietly=sys.exc_info()[0] is not None)
        finally:
            runlog.close()


@contextmanager
def _run_folder(out: Path, dist: DistContext) -> Iterator[None]:
    """The run folder, locked by rank 0 (the only rank that writes) for the whole run. A run
    that never started leaves no empty folder behind. Closes the process group at the end."""
    lock = None
    created = not out.exists()
    finished = False
    try:
        if dist.is_main:
            prepare_run_folder(out)
            lock = RunLock(out).acquire()
            remove_stale_temp_files(out)  # ours: the lock says no writer is alive
        yield
        finished = True
    except BaseException:
        if lock is not None:
            lock.release()
            lock = None
            if created:
                remove_empty_run_folder(out)
        raise
    finally:
        if lock is not None:
            lock.release()
        dist.close(finished=finished)


class Trainer:
    """The epochs of one built run: each epoch's steps, its evaluation, its records and (when
    due) its checkpoint; a stop when a signal asks; the final evaluation and model."""

    def __init__(
        self,
        run: Run,
        checkpoints: Checkpointer,
        stop: StopProtocol,
        on_step: Callable[[Trainer, int, int], None] | None = None,
    ):
        self.run = run
        self.checkpoints = checkpoints
        self.stop = stop
        self.on_step = on_step
        self.last_eval: EvalResult | None = None  # the last epoch's, when it was the test set

    def train(self) -> dict:
        """Train from where the run starts to its last epoch; the result (result.json)."""
        run = self.run
        run.runlog.open_tensorboard(run.start_epoch)
        last = run.opts.last_epoch  # the run's last epoch, or where --stop-after stops it
        for epoch in range(run.start_epoch, last):
            row = self._train_epoch(epoch)
            run.history.append(row)
            if run.opts.val_split is not None:
                run.best.offer(row, run.engine)
            run.runlog.log_epoch(run.history)
            stop = self.stop.requested(0, last=True)
            if stop or epoch + 1 == last or self.checkpoints.due():
                self.checkpoints.save(epoch + 1, 0, run.data_gen.get_state(), None)
            recent = [r["seconds"] for r in run.history[-5:]]
            run.runlog.say(epoch_line(row, run.epochs, recent))
            if stop:
                run.dist.barrier()  # the checkpoint is on disk before any rank leaves
                self._interrupted(f"after epoch {epoch + 1}")
        if run.start_epoch < run.epochs and last < run.epochs:
            return self._stopped()
        return self._finish()

    def _train_epoch(self, epoch: int) -> dict:
        run = self.run
        engine, spe = run.engine, run.engine.steps_per_epoch
        epoch_state = run.data_gen.get_state()
        resumed = epoch == run.start_epoch and run.start_step > 0
        start_step = run.start_step if resumed else 0
        draws = engine.draw_epoch(run.data_gen)
        engine.begin_epoch(epoch, draws, start_step, run.resumed_sums if resumed else None)
        run.model.train()
        desc = f"epoch {epoch + 1}/{run.epochs}"
        with self._bar(spe, desc, start_step) as bar:
            for step in range(start_step, spe):
                engine.step(step)
                if self.on_step is not None:
                    self.on_step(self, epoch, step)
                snap = engine.peek_metrics()
                if snap is not None:
                    if snap[2] >= 0 and not run.dist.enabled:  # ranks agree at the epoch end
                        raise self._nonfinite(epoch, snap[2])
                    bar.set_postfix(**engine.progress_postfix(snap), refresh=False)
                bar.update(1)
                if step + 1 < spe and self.stop.requested(step, last=False):
                    self._stop_mid_epoch(epoch, step + 1, epoch_state)
        sums, bad = engine.read_metrics()
        if bad >= 0:
            raise self._nonfinite(epoch, bad)
        try:
            ev = self._evaluate(f"{desc}: {'validation' if run.opts.val_split else 'test'}")
        except EvaluationStopped:
            self._stop_mid_epoch(epoch, spe, epoch_state, sums)
        if not (math.isfinite(ev.loss) and _weights_finite(run.model)):
            raise self._nonfinite(epoch, None)  # the epoch's last update broke the weights
        self.last_eval = ev
        return {
            "epoch": epoch + 1,
            "loss": sums.loss,
            "accuracy": sums.accuracy,
            "val_loss": ev.loss,
            "val_accuracy": ev.accuracy,
            "lr": run.opts.recipe.lr_at(epoch, spe - 1, spe),
            "seconds": round(engine.epoch_seconds(), 3),
        }

    def _bar(self, total: int, desc: str, initial: int = 0, unit: str = "step"):
        opts = self.run.opts
        enabled = False if opts.quiet or not self.run.dist.is_main else opts.progress
        # where no bar shows (the output is not a terminal), a heartbeat line now and then
        return progress_bar(
            total, desc, enabled=enabled, initial=initial, unit=unit, heartbeat=self.run.runlog.say
        )

    def _evaluate(self, desc: str, on_test: bool = False, averaged: bool = True) -> EvalResult:
        """The epoch's evaluation set (or with ``on_test`` the test set) as the recipe
        evaluates it. A signal stops a single process within one batch (under data
        parallelism the ranks finish the evaluation together)."""
        run = self.run
        x, y = (run.x_test, run.y_test) if on_test else (run.x_val, run.y_val)
        n = len(y) * (2 if run.opts.recipe.tta_flip else 1)
        with self._bar(n, desc, unit="img") as bar:

            def on_batch(rows: int) -> None:
                bar.update(rows)
                self.stop.check_evaluation()

            batch = run.opts.eval_batch_size or eval_batch_size(run.device)
            return run.engine.evaluate(x, y, run.classes, batch, on_batch, averaged)

    def _stop_mid_epoch(self, epoch, step, epoch_state, sums: EpochSums | None = None) -> None:
        """Checkpoint the epoch so far (its draws' state, the step, the totals) and stop."""
        if sums is None:
            sums, bad = self.run.engine.read_metrics()
            if bad >= 0:
                raise self._nonfinite(epoch, bad)
        self.checkpoints.save(epoch, step, epoch_state, sums.to_dict())
        self.run.dist.barrier()
        spe = self.run.engine.steps_per_epoch
        where = "before its evaluation" if step >= spe else f"after step {step}"
        self._interrupted(f"in epoch {epoch + 1} {where}")

    def _interrupted(self, where: str) -> None:
        self.checkpoints.wait()  # the checkpoint named below is on disk
        raise self.stop.interrupted(where, self.run.out, self.run.opts.model)

    def _nonfinite(self, epoch: int, step: int | None) -> NonFiniteLossError:
        return _nonfinite_error(self.run.out, epoch, step, self.checkpoints.saved_epoch)

    def _stopped(self) -> dict:
        """The end of a run stopped by ``stop_after``: its checkpoint is on disk, it writes
        no result.json (it is unfinished, and its test set stays unread) and says where it
        stands."""
        self.checkpoints.wait()
        if not self.run.history:
            raise CheckpointError(f"{self.run.out} holds no finished epoch")
        result = stopped_result(self.run)
        self.run.runlog.say(result["note"])
        return result

    def _finish(self) -> dict:
        run = self.run
        self.checkpoints.wait()
        if not run.history:
            raise CheckpointError(f"{run.out} holds no finished epoch")
        best_ev = None
        try:
            if run.opts.val_split is None:
                ev = self.last_eval or self._evaluate("test")
            else:
                ev, best_ev = run.best.test_at_the_end(
                    run.model,
                    run.history[-1]["epoch"],
                    lambda desc, averaged: self._evaluate(desc, on_test=True, averaged=averaged),
                )
        except EvaluationStopped:
            self._interrupted("before the final evaluation")
        result = run_result(run, ev, best_ev)
        if run.dist.is_main:
            save_final_model(run, result)
            run.runlog.write_result(result)
        return result


def _weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _nonfinite_error(out: Path, epoch: int, step: int | None, last_good: int):
    kept = (
        f"the last good checkpoint ({out / CHECKPOINT}, end of epoch {last_good}) is kept"
        if last_good
        else "no checkpoint was written"
    )
    if step is None:
        where = f"the weights or the test loss became NaN or infinite in epoch {epoch + 1}"
    else:
        where = f"the loss became NaN or infinite in epoch {epoch + 1}, step {step + 1}"
    return NonFiniteLossError(
        f"{where}; training stopped and {kept}. A lower {param('lr')} usually helps."
    )
