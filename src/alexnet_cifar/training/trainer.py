"""The training loop: the seed recipe, epoch by epoch, with checkpoints that resume exactly.

Data flows one way: uint8 images on the device -> the engine's step (normalise and augment the
batch, model, Keras loss and Keras-form SGD, metrics summed on the device) -> the epoch's
totals, read once -> evaluation -> metrics.csv, TensorBoard and a checkpoint. All randomness of
the data (shuffle, shifts, flips) comes from one CPU generator, drawn once per epoch, so a run
gives the same draws on any device and a resumed run redraws exactly what the interrupted one
drew.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import files
from ..data import CIFAR10, load_cifar10
from ..distributed import DistContext, init_distributed, resolve_device
from ..engine.core import Engine, EngineOptions, EpochSums
from ..engine.evaluate import EvalResult
from ..engine.memory import check_data_memory
from ..engine.options import set_process_flags
from ..errors import (
    CheckpointError,
    NonFiniteLossError,
    RunSetupError,
    TrainingInterrupted,
    param,
)
from ..files import (
    CHECKPOINT,
    MODEL_FILE,
    prepare_run_folder,
    remove_empty_run_folder,
    remove_stale_temp_files,
)
from ..models import AlexNet, get_config
from ..recipe import Recipe
from .checkpoint import BackgroundWriter, RunLock, save_checkpoint
from .records import (
    RunState,
    checkpoint_state,
    run_config,
    run_result,
    save_final_model,
)
from .resume import load_resume_state, record_data_folder, run_identity
from .runlog import METRIC_COLUMNS, RunLog, epoch_line, progress_bar
from .selection import BestEpoch
from .stop_signals import StopSignals

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


@dataclass
class TrainOptions:
    """Everything a training run needs; ``config.json`` records it."""

    model: str
    out: Path
    recipe: Recipe = field(default_factory=Recipe)
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    verify: bool = True
    limit_train: int | None = None
    limit_test: int | None = None
    val_split: int | None = None  # training images held out to choose the epoch; None: none
    num_classes: int = 10
    eval_batch_size: int | None = None  # None: 500 on CPU, 2000 on CUDA
    engine: EngineOptions = field(default_factory=EngineOptions)
    resume: bool = False
    force: bool = False  # resume accepts more epochs
    quiet: bool = False
    progress: bool | None = None  # None: a bar when stderr is a terminal
    tensorboard: bool = True
    # seconds between checkpoints at most (0: every epoch); one is always written at the end
    # and on a signal, so a kill -9 loses at most this much training
    checkpoint_every: float = 60.0
    command: list[str] | None = None  # what config.json records as the command; None: sys.argv

    def run_identity(self) -> dict:
        """The fields that define what is computed: a resume must match them."""
        return run_identity(
            self.model,
            self.num_classes,
            self.seed,
            self.limit_train,
            self.limit_test,
            self.recipe,
            self.val_split,
        )


class _EvaluationStopped(Exception):
    """A signal arrived during the evaluation; the epoch's training is saved, not evaluated."""


class Trainer:
    """One training run in one run folder. ``run()`` trains to the end (or to an interruption)."""

    def __init__(
        self,
        options: TrainOptions,
        data: CIFAR10 | None = None,
        on_step: Callable[[Trainer, int, int], None] | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.opts = options
        self.out = Path(options.out)
        self.device, self.dist = _device_and_ranks(options.device)
        self.on_step = on_step
        self._given_data = data
        self.history: list[dict] = []
        self.last_eval: EvalResult | None = None
        self.runlog = RunLog(
            self.out,
            enabled=self.dist.is_main,
            tensorboard=options.tensorboard,
            quiet=options.quiet,
            print_line=log,
        )
        self.say, self.warn = self.runlog.say, self.runlog.warn

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        opts, dev = self.opts, self.device
        set_process_flags(dev)  # once, before any step is run or measured
        said: list[str] = []  # the engine's line comes first, then what the resume found
        state, recipe = load_resume_state(
            self.out,
            opts.recipe,
            lambda r: replace(opts, recipe=r).run_identity(),
            opts.resume,
            opts.force,
            said.append,
            self.warn,
        )
        self.opts = opts = replace(opts, recipe=recipe)  # the caller's options stay as they were
        data = self._given_data or load_cifar10(
            opts.data_dir, verify=opts.verify, progress=not opts.quiet
        )
        data = data.subset(opts.limit_train, opts.limit_test, opts.seed, opts.val_split)
        batches = (opts.recipe.batch_size, self._eval_batch())  # can the device hold them?
        check_data_memory(get_config(opts.model, opts.num_classes), *batches, data, dev, self.dist)
        self.classes = data.classes
        x_train, y_train, self.x_test, self.y_test, self.x_val, self.y_val = _on_device(data, dev)
        self.best = BestEpoch()  # with a split: the best validation epoch and its weights
        torch.manual_seed(opts.seed)
        if dev.type == "cuda":
            torch.cuda.manual_seed_all(opts.seed)
        self.model = AlexNet(get_config(opts.model, opts.num_classes)).to(dev)
        self.engine = Engine(
            self.model, recipe, dev, opts.engine, x_train, y_train, self.dist, warn=self.warn
        )
        self.data_gen = torch.Generator().manual_seed(opts.seed + 1)
        self.start_epoch, self.start_step, self.resumed_sums = 0, 0, EpochSums()
        if state is not None:
            self._restore(state)
            if self.start_epoch < recipe.epochs and self.dist.is_main:
                # A finished run extended with more epochs: its result and final model
                # describe the shorter run (the checkpoint holds its weights).
                for name in (files.RESULT_FILE, MODEL_FILE):
                    (self.out / name).unlink(missing_ok=True)
        self.saved_epoch = self.start_epoch if state is not None else 0
        if self.start_epoch < recipe.epochs:
            self.engine.prepare()  # compile and capture now: the configuration used is known
        self.say(_engine_line(self))
        for line in said:
            self.say(line)
        if state is None or not (self.out / files.CONFIG_FILE).is_file():
            self.runlog.write_config(run_config(self.state()))
        elif self.dist.is_main and opts.verify:  # the md5-checked files: the same data
            record_data_folder(self.out, opts.data_dir)

    def _restore(self, st: dict) -> None:
        try:
            self.engine.load_state_dict(st)
            _restore_rng(st["rng"], self.data_gen, self.device)
            self.start_epoch, self.start_step = int(st["epoch"]), int(st["step"])
            self.resumed_sums = EpochSums.from_dict(st.get("partial"))
            self.history = list(st.get("history", []))
            self.best = BestEpoch(st.get("best_val"))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"the checkpoint in {self.out} does not fit this run ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else 'missing field'})"
            ) from e

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        self.writer = BackgroundWriter()
        lock = None
        created = not self.out.exists()
        try:
            if self.dist.is_main:  # only rank 0 writes, so only rank 0 holds the folder's lock
                prepare_run_folder(self.out)
                lock = RunLock(self.out).acquire()
                remove_stale_temp_files(self.out)  # ours: the lock says no writer is alive
            with StopSignals() as self.signals:
                try:
                    self._setup()
                    return self._run()
                finally:
                    self.writer.wait(quietly=sys.exc_info()[0] is not None, warn=self.warn)
                    self.runlog.close()
        except BaseException:
            if lock is not None:
                lock.release()
                lock = None
                if created:  # a run that never started leaves no empty folder behind
                    remove_empty_run_folder(self.out)
            raise
        finally:
            if lock is not None:
                lock.release()
            self.dist.close(finished=sys.exc_info()[0] is None)

    def _checkpoint_due(self) -> bool:
        """Whether ``checkpoint_every`` seconds have passed since the last checkpoint (or
        the start): copying the state to the host every epoch would cost as much as a fast
        epoch's training."""
        return time.monotonic() - self._last_save >= self.opts.checkpoint_every

    def _run(self) -> dict:
        self._last_save = time.monotonic()
        self.runlog.open_tensorboard(self.start_epoch)
        for epoch in range(self.start_epoch, self.opts.recipe.epochs):
            row = self._train_epoch(epoch)
            self.history.append(row)
            if self.opts.val_split is not None:
                self.best.offer(row, self.engine)
            self.runlog.log_epoch(self.history)
            stop = self._stop_requested(0, last=True)
            if stop or epoch + 1 == self.opts.recipe.epochs or self._checkpoint_due():
                self._save(epoch + 1, 0, self.data_gen.get_state(), None)
            recent = [r["seconds"] for r in self.history[-5:]]
            self.say(epoch_line(row, self.opts.recipe.epochs, recent))
            if stop:
                self.dist.barrier()  # the checkpoint is on disk before any rank leaves
                self._interrupted(f"after epoch {epoch + 1}")
        return self._finish()

    def _train_epoch(self, epoch: int) -> dict:
        engine, spe = self.engine, self.engine.steps_per_epoch
        epoch_state = self.data_gen.get_state()
        resumed = epoch == self.start_epoch and self.start_step > 0
        start_step = self.start_step if resumed else 0
        draws = engine.draw_epoch(self.data_gen)
        engine.begin_epoch(epoch, draws, start_step, self.resumed_sums if resumed else None)
        self.model.train()
        desc = f"epoch {epoch + 1}/{self.opts.recipe.epochs}"
        with self._bar(spe, desc, start_step) as bar:
            for step in range(start_step, spe):
                engine.step(step)
                if self.on_step is not None:
                    self.on_step(self, epoch, step)
                snap = engine.peek_metrics()
                if snap is not None:
                    if snap[2] >= 0 and not self.dist.enabled:  # ranks agree at the epoch end
                        raise self._nonfinite(epoch, snap[2])
                    bar.set_postfix(**engine.progress_postfix(snap), refresh=False)
                bar.update(1)
                if step + 1 < spe and self._stop_requested(step, last=False):
                    self._stop_mid_epoch(epoch, step + 1, epoch_state)
        sums, bad = engine.read_metrics()
        if bad >= 0:
            raise self._nonfinite(epoch, bad)
        try:
            ev = self._evaluate(f"{desc}: {'validation' if self.opts.val_split else 'test'}")
        except _EvaluationStopped:
            self._stop_mid_epoch(epoch, spe, epoch_state, sums)
        if not (math.isfinite(ev.loss) and _weights_finite(self.model)):
            raise self._nonfinite(epoch, None)  # the epoch's last update broke the weights
        self.last_eval = ev
        return {
            "epoch": epoch + 1,
            "loss": sums.loss,
            "accuracy": sums.accuracy,
            "val_loss": ev.loss,
            "val_accuracy": ev.accuracy,
            "lr": self.opts.recipe.lr_at(epoch, spe - 1, spe),
            "seconds": round(engine.epoch_seconds(), 3),
        }

    def _bar(self, total: int, desc: str, initial: int = 0, unit: str = "step"):
        enabled = False if self.opts.quiet or not self.dist.is_main else self.opts.progress
        # where no bar shows (the output is not a terminal), a heartbeat line now and then
        return progress_bar(
            total, desc, enabled=enabled, initial=initial, unit=unit, heartbeat=self.say
        )

    def _evaluate(self, desc: str, on_test: bool = False, averaged: bool = True) -> EvalResult:
        """The epoch's evaluation set (or with ``on_test`` the test set) as the recipe
        evaluates it. A signal stops a single process within one batch (under data
        parallelism the ranks finish the evaluation together)."""
        x, y = (self.x_test, self.y_test) if on_test else (self.x_val, self.y_val)
        n = len(y) * (2 if self.opts.recipe.tta_flip else 1)
        with self._bar(n, desc, unit="img") as bar:

            def on_batch(rows: int) -> None:
                bar.update(rows)
                if self.signals.signum is not None and not self.dist.enabled:
                    raise _EvaluationStopped

            return self.engine.evaluate(x, y, self.classes, self._eval_batch(), on_batch, averaged)

    def _eval_batch(self) -> int:
        return self.opts.eval_batch_size or (2000 if self.device.type == "cuda" else 500)

    def _stop_requested(self, step: int, last: bool) -> bool:
        """Whether a signal asks to stop here. Ranks agree, every few steps, on one step."""
        every = 50 if self.device.type == "cuda" else 5
        if self.dist.enabled and not last and step % every:
            return False
        self.signals.signum = self.dist.agreed_signal(self.signals.signum, self.device)
        return self.signals.signum is not None

    def _stop_mid_epoch(self, epoch, step, epoch_state, sums: EpochSums | None = None) -> None:
        """Checkpoint the epoch so far (its draws' state, the step, the totals) and stop."""
        if sums is None:
            sums, bad = self.engine.read_metrics()
            if bad >= 0:
                raise self._nonfinite(epoch, bad)
        self._save(epoch, step, epoch_state, sums.to_dict())
        self.dist.barrier()
        spe = self.engine.steps_per_epoch
        where = "before its evaluation" if step >= spe else f"after step {step}"
        self._interrupted(f"in epoch {epoch + 1} {where}")

    # ------------------------------------------------------------------ checkpoints, logs
    def state(self) -> RunState:
        """The run as its records (config.json, checkpoint, result.json, model.pt) see it."""
        return RunState(
            opts=self.opts,
            out=self.out,
            model=self.model,
            device=self.device,
            dist=self.dist,
            engine=self.engine,
            classes=list(self.classes),
            history=self.history,
            best=self.best,
            y_test=self.y_test,
            y_val=self.y_val,
        )

    def _save(self, epoch: int, step: int, data_state: torch.Tensor, epoch_so_far: dict | None):
        if not self.dist.is_main:
            return
        rng = _rng_state(data_state, self.device)
        state = checkpoint_state(self.state(), epoch, step, rng, epoch_so_far)
        self.writer.wait()  # the previous write (a second Ctrl-C may cut this wait short)
        with self.signals.held():  # hashed and written in a thread while the next epoch trains
            save_checkpoint(self.out, state, writer=self.writer)
        self._last_save = time.monotonic()
        if step == 0:
            self.saved_epoch = epoch

    def _interrupted(self, where: str) -> None:
        self.writer.wait()  # the checkpoint named below is on disk
        signum = self.signals.signum or signal.SIGINT
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name}: stopped {where} and saved {self.out / CHECKPOINT}.",
            signum,
            run_dir=self.out,
            model=self.opts.model,
        )

    def _nonfinite(self, epoch: int, step: int | None) -> NonFiniteLossError:
        return _nonfinite_error(self.out, epoch, step, self.saved_epoch)

    def _finish(self) -> dict:
        self.writer.wait()
        if not self.history:
            raise CheckpointError(f"{self.out} holds no finished epoch")
        best_ev = None
        try:
            if self.opts.val_split is None:
                ev = self.last_eval or self._evaluate("test")
            else:
                ev, best_ev = self.best.test_at_the_end(
                    self.model,
                    self.history[-1]["epoch"],
                    lambda desc, averaged: self._evaluate(desc, on_test=True, averaged=averaged),
                )
        except _EvaluationStopped:
            self._interrupted("before the final evaluation")
        result = run_result(self.state(), ev, best_ev)
        if self.dist.is_main:
            save_final_model(self.state(), result)
            self.runlog.write_result(result)
        return result


def _engine_line(t: Trainer) -> str:
    """The first line a run prints: the engine configuration used, and any fallback."""
    used, rec = t.engine.used_options, t.engine.engine_record()
    line = f"{t.opts.model} on {t.device}: engine {used.describe()}"
    if rec["fallbacks"]:
        asked = EngineOptions.from_dict(rec["requested"]).describe()
        why = "; ".join(f"{f['from']}: {f['reason']}" for f in rec["fallbacks"])
        line += f" (asked for {asked}; fell back: {why})"
    return line


def _on_device(data: CIFAR10, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test, x_val, y_val) on the device, as uint8 images: 150 MB
    for CIFAR-10, not 600 MB as floats. Each epoch is evaluated on the held-out images when
    there are some, else on the test set (the post's setting); with a split the test set is
    used once, at the end."""
    x_train, y_train, x_test, y_test = (
        torch.from_numpy(a).to(dev) for a in (data.x_train, data.y_train, data.x_test, data.y_test)
    )
    if data.x_val is None:
        return x_train, y_train, x_test, y_test, x_test, y_test
    x_val, y_val = torch.from_numpy(data.x_val).to(dev), torch.from_numpy(data.y_val).to(dev)
    return x_train, y_train, x_test, y_test, x_val, y_val


def _device_and_ranks(name: str) -> tuple[torch.device, DistContext]:
    """The device, and the process group when torchrun started this process (each rank then
    uses its own GPU)."""
    device = resolve_device(name)
    dist = init_distributed(device.type)
    if device.type == "cuda" and dist.enabled and device.index is None:
        device = torch.device("cuda", dist.local_rank)
    return device, dist


def _rng_state(data_state: torch.Tensor, device: torch.device) -> dict:
    """The random states a resumed run needs: the data draws' generator (as of the start of
    the epoch being saved), torch's CPU generator (dropout) and the GPU's."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"data": data_state, "cpu": torch.get_rng_state(), "cuda": cuda}


def _restore_rng(rng: dict, data_gen: torch.Generator, device: torch.device) -> None:
    data_gen.set_state(rng["data"])
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)


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


def train(options: TrainOptions, **kwargs) -> dict:
    """Train as ``options`` say; returns the result summary (also written to result.json)."""
    return Trainer(options, **kwargs).run()
