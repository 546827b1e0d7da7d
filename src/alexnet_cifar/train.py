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
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .checkpoint import BackgroundWriter, RunLock, save_checkpoint, save_model_file
from .data import CIFAR10, load_cifar10
from .distributed import DistContext, init_distributed, resolve_device
from .engine import Engine, EngineOptions, EpochSums
from .errors import (
    CheckpointError,
    NonFiniteLossError,
    RunSetupError,
    TrainingInterrupted,
    param,
)
from .evaluate import EvalResult, evaluate_model
from .files import CHECKPOINT, MODEL_FILE, prepare_run_folder, remove_stale_temp_files
from .models import AlexNet, get_config
from .recipe import Recipe
from .resume import load_resume_state, run_identity
from .runlog import METRIC_COLUMNS, RunLog, format_duration, progress_bar, versions

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
    num_classes: int = 10
    eval_batch_size: int | None = None  # None: 500 on CPU, 2000 on CUDA
    engine: EngineOptions = field(default_factory=EngineOptions)
    resume: bool = False
    force: bool = False  # resume accepts more epochs
    quiet: bool = False
    progress: bool | None = None  # None: a bar when stderr is a terminal
    tensorboard: bool = True

    def run_identity(self) -> dict:
        """The fields that define what is computed: a resume must match them."""
        return run_identity(
            self.model,
            self.num_classes,
            self.seed,
            self.limit_train,
            self.limit_test,
            self.recipe,
        )


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag checked at safe points; a second signal stops at once."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: the user means it
            raise TrainingInterrupted(f"{signal.Signals(signum).name}: stopped at once", signum)
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


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
        device = resolve_device(options.device)
        # Under torchrun: join the process group; each rank uses its own GPU.
        self.dist: DistContext = init_distributed(device.type)
        if device.type == "cuda" and self.dist.enabled and device.index is None:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        self.on_step = on_step
        self._log = log or _print_line
        self._given_data = data
        self.history: list[dict] = []
        self.last_eval: EvalResult | None = None
        self.runlog = RunLog(self.out, enabled=self.dist.is_main, tensorboard=options.tensorboard)

    def say(self, msg: str) -> None:
        if not self.opts.quiet and self.dist.is_main:
            self._log(msg)

    def warn(self, msg: str) -> None:
        if self.dist.is_main:
            _print_line(msg, sys.stderr)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        opts, dev = self.opts, self.device
        state, recipe = load_resume_state(
            self.out,
            opts.recipe,
            lambda r: replace(opts, recipe=r).run_identity(),
            opts.resume,
            opts.force,
            self.say,
            self.warn,
        )
        self.opts = opts = replace(opts, recipe=recipe)  # the caller's options stay as they were
        data = self._given_data or load_cifar10(
            opts.data_dir, verify=opts.verify, progress=not opts.quiet
        )
        data = data.subset(opts.limit_train, opts.limit_test, opts.seed)
        self.classes = data.classes
        # The whole data set on the device as uint8: 150 MB for CIFAR-10, not 600 MB as floats.
        self.x_test = torch.from_numpy(data.x_test).to(dev)
        self.y_test = torch.from_numpy(data.y_test).to(dev)
        torch.manual_seed(opts.seed)
        if dev.type == "cuda":
            torch.cuda.manual_seed_all(opts.seed)
        self.model = AlexNet(get_config(opts.model, opts.num_classes)).to(dev)
        x_train = torch.from_numpy(data.x_train).to(dev)
        y_train = torch.from_numpy(data.y_train).to(dev)
        self.engine = Engine(self.model, recipe, dev, opts.engine, x_train, y_train, self.dist)
        self.data_gen = torch.Generator().manual_seed(opts.seed + 1)
        self.start_epoch, self.start_step, self.carried = 0, 0, EpochSums()
        if state is not None:
            self._restore(state)
        if state is None or not (self.out / "config.json").is_file():
            self.runlog.write_config(self._config(data))

    def _restore(self, st: dict) -> None:
        try:
            self.model.load_state_dict(st["model"])
            self.engine.load_optimizer_state(st["optimizer"])
            self.engine.load_ema_state(st.get("engine"))
            self.data_gen.set_state(st["rng"]["data"])
            torch.set_rng_state(st["rng"]["cpu"])
            if self.device.type == "cuda" and st["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(st["rng"]["cuda"], self.device)
            self.start_epoch, self.start_step = int(st["epoch"]), int(st["step"])
            self.carried = EpochSums.from_dict(st.get("partial"))
            self.history = list(st.get("history", []))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"the checkpoint in {self.out} does not fit this run ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else 'missing field'})"
            ) from e

    def _config(self, data: CIFAR10) -> dict:
        o = self.opts
        return {
            "model": o.model,
            "model_config": self.model.config.to_dict(),
            "recipe": o.recipe.to_dict(),
            "seed": o.seed,
            "limit_train": o.limit_train,
            "limit_test": o.limit_test,
            "num_classes": o.num_classes,
            "classes": list(self.classes),
            "data_dir": str(o.data_dir) if o.data_dir else os.environ.get("CIFAR10_DIR"),
            "verify": o.verify,
            "device": str(self.device),
            "engine": self.engine.options.to_dict(),
            "engine_requested": o.engine.to_dict(),
            "world_size": self.dist.world_size,
            "eval_batch_size": self._eval_batch_size(),
            "n_train": int(self.engine.n),
            "n_test": int(len(self.y_test)),
            "versions": versions(self.device),
            "command": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _eval_batch_size(self) -> int:
        return self.opts.eval_batch_size or (2000 if self.device.type == "cuda" else 500)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        self.writer = BackgroundWriter()
        lock = None
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
                    self._flush_writes()
                    self.runlog.close()
        finally:
            if lock is not None:
                lock.release()
            self.dist.close()

    def _run(self) -> dict:
        self.runlog.open_tensorboard(self.start_epoch)
        for epoch in range(self.start_epoch, self.opts.recipe.epochs):
            row = self._train_epoch(epoch)
            self.history.append(row)
            self.runlog.log_epoch(self.history)
            self._save(epoch + 1, 0, self.data_gen.get_state(), None)
            self._report_epoch(row)
            if self._stop_requested(0, last=True):
                self.dist.barrier()  # the checkpoint is on disk before any rank leaves
                self._interrupted(f"after epoch {epoch + 1}")
        return self._finish()

    def _train_epoch(self, epoch: int) -> dict:
        engine, spe = self.engine, self.engine.steps_per_epoch
        epoch_state = self.data_gen.get_state()
        resumed = epoch == self.start_epoch and self.start_step > 0
        start_step = self.start_step if resumed else 0
        draws = engine.draw_epoch(self.data_gen)
        engine.begin_epoch(epoch, draws, start_step, self.carried if resumed else None)
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
                    seen = max(engine.local_seen, 1)
                    bar.set_postfix(
                        loss=f"{snap[0] / seen:.4f}",
                        acc=f"{snap[1] / seen:.4f}",
                        img_s=f"{engine.images_per_second():.0f}",
                        refresh=False,
                    )
                bar.update(1)
                if step + 1 < spe and self._stop_requested(step, last=False):
                    self._stop_mid_epoch(epoch, step + 1, epoch_state)
        sums, bad = engine.read_metrics()
        if bad >= 0:
            raise self._nonfinite(epoch, bad)
        try:
            ev = self._evaluate(f"{desc}: test")
        except _EvaluationStopped:
            self._stop_mid_epoch(epoch, spe, epoch_state, sums)
        self._check_finite(epoch, ev)
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
        return progress_bar(total, desc, enabled=enabled, initial=initial, unit=unit)

    def _evaluate(self, desc: str) -> EvalResult:
        """The test set, on the weights the recipe evaluates, summed over ranks. A signal
        stops a single process within one batch (ranks finish together)."""
        n = len(self.y_test) * (2 if self.opts.recipe.tta_flip else 1)
        with self._bar(n, desc, unit="img") as bar, self.engine.evaluated_weights():

            def on_batch(rows: int) -> None:
                bar.update(rows)
                if self.signals.signum is not None and not self.dist.enabled:
                    raise _EvaluationStopped

            return evaluate_model(
                self.model,
                self.x_test,
                self.y_test,
                classes=self.classes,
                batch_size=self._eval_batch_size(),
                loss_clip_eps=self.opts.recipe.loss_clip_eps,
                channels_last=bool(self.engine.options.channels_last),
                precision=self.engine.options.precision,
                tta_flip=self.opts.recipe.tta_flip,
                dist=self.dist,
                on_batch=on_batch,
            )

    def _stop_requested(self, step: int, last: bool) -> bool:
        """Whether a signal asks to stop here. Ranks agree, every few steps, on one step."""
        if not self.dist.enabled:
            return self.signals.signum is not None
        every = 50 if self.device.type == "cuda" else 5
        if not last and step % every:
            return False
        flag = torch.tensor([self.signals.signum or 0])
        flag = flag.to(self.device if self.device.type == "cuda" else "cpu")
        signum = int(self.dist.all_reduce(flag, "max").cpu())
        if signum and self.signals.signum is None:
            self.signals.signum = signum
        return bool(signum)

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
    def _save(self, epoch: int, step: int, data_state: torch.Tensor, partial: dict | None):
        if not self.dist.is_main:
            return
        rng = {
            "data": data_state,
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        state = {
            "model_name": self.opts.model,
            "model_config": self.model.config.to_dict(),
            "run_identity": self.opts.run_identity(),
            "epoch": epoch,
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.engine.optimizer_state(),
            "engine": self.engine.ema_state(),
            "rng": rng,
            "partial": partial,
            "history": self.history,
        }
        # hashed and written in a thread while the next epoch trains
        save_checkpoint(self.out, state, writer=self.writer)

    def _report_epoch(self, row: dict) -> None:
        epochs, done = self.opts.recipe.epochs, row["epoch"]
        recent = [r["seconds"] for r in self.history[-5:]]
        eta = (epochs - done) * (sum(recent) / len(recent))
        self.say(
            f"epoch {done}/{epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}  "
            f"lr {row['lr']:g}  {row['seconds']:.1f}s"
            + (f"  ETA {format_duration(eta)}" if done < epochs else "")
        )

    def _flush_writes(self) -> None:
        """Wait for a checkpoint still being written; its error wins only if none is on its way."""
        if sys.exc_info()[0] is None:
            self.writer.wait()
            return
        try:
            self.writer.wait()
        except Exception as e:  # an error is already propagating: report this one beside it
            self.warn(f"also: {e}")

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
        last = self.history[-1]["epoch"] if self.history else 0
        kept = (
            f"the last good checkpoint ({self.out / CHECKPOINT}, end of epoch {last}) is kept"
            if last
            else "no checkpoint was written"
        )
        where = f"the loss became NaN or infinite in epoch {epoch + 1}, step {step + 1}"
        if step is None:
            where = f"the weights or the test loss became NaN or infinite in epoch {epoch + 1}"
        return NonFiniteLossError(
            f"{where}; training stopped and {kept}. A lower {param('lr')} usually helps."
        )

    def _check_finite(self, epoch: int, ev: EvalResult) -> None:
        """The last update of an epoch can break the weights without a bad training loss."""
        finite = math.isfinite(ev.loss) and all(
            bool(torch.isfinite(p).all()) for p in self.model.parameters()
        )
        if not finite:
            raise self._nonfinite(epoch, None)

    def _finish(self) -> dict:
        self.writer.wait()
        if not self.history:
            raise CheckpointError(f"{self.out} holds no finished epoch")
        try:
            ev = self.last_eval or self._evaluate("test")
        except _EvaluationStopped:
            self._interrupted("before the final evaluation")
        result = self._result(ev)
        if self.dist.is_main:
            with self.engine.evaluated_weights():  # the weights that were evaluated
                state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            meta = {
                "model_name": self.opts.model,
                "epochs": result["epochs"],
                "run_identity": self.opts.run_identity(),
                "classes": list(self.classes),
            }
            save_model_file(self.out / MODEL_FILE, self.model.config.to_dict(), state, meta)
            self.runlog.write_result(result)
        return result

    def _result(self, ev: EvalResult) -> dict:
        final = self.history[-1]
        best = max(self.history, key=lambda r: r["val_accuracy"])
        return {
            "model": self.opts.model,
            "run_dir": str(self.out),
            "epochs": final["epoch"],
            "final": {k: final[k] for k in METRIC_COLUMNS if k != "epoch"},
            "test_accuracy": final["val_accuracy"],
            "test_loss": final["val_loss"],
            "best_test_accuracy": best["val_accuracy"],
            "best_epoch": best["epoch"],
            "train_seconds": round(sum(r["seconds"] for r in self.history), 3),
            "params": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "recipe": self.opts.recipe.name,
            "compile_seconds": round(self.engine.setup_seconds, 3),
            "model_file": str(self.out / MODEL_FILE),
            # the final model on the test set: what a report needs without the data
            "classes": ev.classes,
            "per_class_accuracy": ev.to_dict()["per_class_accuracy"],
            "confusion_matrix": ev.confusion.tolist(),
        }


def _print_line(msg: str, stream=None) -> None:
    """Print a line; a closed output (``train ... | head -1``) is not a reason to stop."""
    stream = stream or sys.stdout
    try:
        print(msg, file=stream, flush=True)
    except (BrokenPipeError, ValueError, OSError):
        pass


def train(options: TrainOptions, **kwargs) -> dict:
    """Train as ``options`` say; returns the result summary (also written to result.json)."""
    return Trainer(options, **kwargs).run()

