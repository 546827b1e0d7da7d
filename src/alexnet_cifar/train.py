"""The training loop: the seed recipe, step by step, with checkpoints that resume exactly.

Data flows one way: uint8 images on the device -> normalise and augment the batch -> model ->
Keras loss and Keras-form SGD -> metrics summed on the device, read once an epoch -> logs and
checkpoints. All randomness of the data (shuffle, shifts, flips) comes from one CPU generator,
drawn once per epoch, so a run gives the same draws on any device and a resumed run redraws
exactly what the interrupted one drew.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .augment import draw_seed_augmentation
from .checkpoint import (
    CHECKPOINT,
    MODEL_FILE,
    BackgroundWriter,
    CheckpointError,
    RunLock,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
    save_model_file,
)
from .data import CIFAR10, load_cifar10
from .distributed import DistContext, init_distributed, shard
from .engine import Engine, EngineOptions
from .evaluate import EvalResult, evaluate_model
from .models import AlexNet, get_config
from .recipe import Recipe

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

METRIC_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
RESULT_FILE = "result.json"


class RunSetupError(RuntimeError):
    """The run cannot start as asked (folder, device, resume mismatch); nothing was trained."""


class TrainingInterrupted(RuntimeError):
    """Stopped by a signal at a safe point, after saving a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


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
    force: bool = False  # resume accepts SAFE_CHANGES (more epochs)
    quiet: bool = False
    progress: bool | None = None  # None: a bar when stderr is a terminal
    tensorboard: bool = True

    def run_identity(self) -> dict:
        """The fields that define what is computed: a resume must match them."""
        ident = {
            "model": self.model,
            "num_classes": self.num_classes,
            "seed": self.seed,
            "limit_train": self.limit_train,
            "limit_test": self.limit_test,
        }
        ident.update({f"recipe.{k}": v for k, v in self.recipe.to_dict().items()})
        return ident


#: Changes a resume accepts with ``force``: they extend the run without changing its past.
SAFE_CHANGES = {"recipe.epochs"}


def resolve_device(name: str) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunSetupError(
                "--device cuda was asked for but no CUDA GPU is visible to PyTorch "
                f"(torch {torch.__version__}); use --device cpu or auto"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise RunSetupError(f"unknown device {name!r}; use auto, cpu or cuda (or cuda:N)")


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, before any training starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise RunSetupError(
            f"cannot write to the run folder {folder}: {e.strerror or e}. Choose a writable --out."
        ) from e


class _SignalGuard:
    """Turns SIGINT/SIGTERM into a flag checked at safe points; a second signal stops at once."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: the user means it
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _versions(device: torch.device) -> dict:
    v = {
        "alexnet_cifar": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        v["cuda"] = torch.version.cuda
        v["gpu"] = torch.cuda.get_device_name(device)
    return v


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


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
        self._log = log or (lambda msg: print(msg, flush=True))
        self._given_data = data
        self.history: list[dict] = []

    # ------------------------------------------------------------------ output helpers
    def say(self, msg: str) -> None:
        if not self.opts.quiet and self.dist.is_main:
            self._log(msg)

    def warn(self, msg: str) -> None:
        if self.dist.is_main:
            print(msg, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ setup
    def _load_resume_state(self) -> dict | None:
        has_ckpt = any((self.out / n).exists() for n in (CHECKPOINT, "checkpoint.prev.pt"))
        if not self.opts.resume:
            if has_ckpt:
                raise RunSetupError(
                    f"{self.out} already holds a run. Add --resume to continue it, or choose "
                    "another --out for a new run."
                )
            return None
        if not has_ckpt:
            self.say(f"nothing to resume in {self.out}: starting a new run there")
            return None
        state, path = load_checkpoint(self.out, warn=self.warn)
        theirs = state.get("run_identity", {})
        if self.opts.force and theirs.get("recipe.epochs") != self.opts.recipe.epochs:
            # More (or fewer) epochs: keep the run's learning-rate drops where they were, so
            # the epochs already trained stay what they were.
            kept = tuple(theirs.get("recipe.lr_milestones") or ())
            self.opts.recipe = self.opts.recipe.with_(lr_milestones=kept)
            if theirs.get("recipe.epochs", 0) > self.opts.recipe.epochs or (
                state["epoch"] > self.opts.recipe.epochs
            ):
                raise CheckpointError(
                    f"{path} has trained {state['epoch']} epochs; --epochs "
                    f"{self.opts.recipe.epochs} cannot shorten a run"
                )
            self.say(
                f"--force: continuing to {self.opts.recipe.epochs} epochs; the learning-rate "
                f"drops stay at epochs {', '.join(map(str, kept)) or 'none'}"
            )
            self._record_extension(theirs.get("recipe.epochs"))
        mine = self.opts.run_identity()
        diffs = [k for k in mine if theirs.get(k) != mine[k]]
        refused = [k for k in diffs if not (self.opts.force and k in SAFE_CHANGES)]
        if refused:
            lines = [
                f"{k}: checkpoint has {theirs.get(k)!r}, this run asks {mine[k]!r}" for k in refused
            ]
            advice = (
                "--force accepts only a change of --epochs"
                if self.opts.force
                else "add --force to change only the number of epochs"
            )
            raise CheckpointError(
                f"cannot resume {path} with different settings:\n  "
                + "\n  ".join(lines)
                + "\nResume with the original settings (leave the flags out to reuse them; "
                f"{advice}), or start a new run in another --out."
            )
        if state["epoch"] >= self.opts.recipe.epochs:
            self.say(f"{self.out} has finished all {state['epoch']} epochs: nothing to train")
        else:
            self.say(f"resuming {path} at epoch {state['epoch'] + 1}, step {state['step']}")
        return state

    def _record_extension(self, old_epochs) -> None:
        """config.json follows a forced change, so a later plain --resume reuses it."""
        path = self.out / CONFIG_FILE
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        config["recipe"] = self.opts.recipe.to_dict()
        config.setdefault("changes", []).append(
            {"recipe.epochs": [old_epochs, self.opts.recipe.epochs], "at": time.ctime()}
        )
        atomic_write_json(path, config)

    def setup(self) -> None:
        # Only rank 0 writes, so only rank 0 checks the folder and holds its lock.
        self.lock = None
        if self.dist.is_main:
            check_writable(self.out)
            self.lock = RunLock(self.out).acquire()
        try:
            self._setup_locked()
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _setup_locked(self) -> None:
        opts = self.opts
        self.resume_state = self._load_resume_state()
        dev = self.device
        self.eval_batch_size = opts.eval_batch_size or (2000 if dev.type == "cuda" else 500)

        data = self._given_data or load_cifar10(
            opts.data_dir, verify=opts.verify, progress=not opts.quiet
        )
        try:
            data = data.subset(opts.limit_train, opts.limit_test, opts.seed)
        except ValueError as e:
            raise RunSetupError(str(e).replace("limit_", "--limit-")) from e
        self.classes = data.classes
        # The whole data set on the device as uint8: 150 MB for CIFAR-10, not 600 MB as floats.
        self.x_train = torch.from_numpy(data.x_train).to(dev)
        self.y_train = torch.from_numpy(data.y_train).to(dev)
        self.x_test = torch.from_numpy(data.x_test).to(dev)
        self.y_test = torch.from_numpy(data.y_test).to(dev)
        self.n_train = len(self.y_train)

        torch.manual_seed(opts.seed)
        if dev.type == "cuda":
            torch.cuda.manual_seed_all(opts.seed)
        self.model: AlexNet = AlexNet(get_config(opts.model, opts.num_classes)).to(dev)
        try:
            self.engine = Engine(
                self.model,
                opts.recipe,
                dev,
                opts.engine,
                self.x_train,
                self.y_train,
                self.dist,
            )
        except ValueError as e:
            raise RunSetupError(str(e)) from e
        eng = self.engine.options
        self.channels_last = bool(eng.channels_last)
        self.eval_precision = eng.precision
        self.data_gen = torch.Generator().manual_seed(opts.seed + 1)
        self.start_epoch, self.start_step, self.partial = 0, 0, None

        if self.resume_state is not None:
            st = self.resume_state
            self.model.load_state_dict(st["model"])
            self.engine.load_optimizer_state(st["optimizer"])
            self.engine.load_extra_state(st.get("engine"))
            self.data_gen.set_state(st["rng"]["data"])
            torch.set_rng_state(st["rng"]["cpu"])
            if dev.type == "cuda" and st["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(st["rng"]["cuda"], dev)
            self.start_epoch, self.start_step = int(st["epoch"]), int(st["step"])
            self.partial = st.get("partial")
            self.history = list(st.get("history", []))
        elif self.dist.is_main:
            self._write_config()
        self.steps_per_epoch = math.ceil(self.n_train / opts.recipe.batch_size)

    def _write_config(self) -> None:
        o = self.opts
        config = {
            "model": o.model,
            "model_config": self.model.config.to_dict(),
            "recipe": o.recipe.to_dict(),
            "seed": o.seed,
            "limit_train": o.limit_train,
            "limit_test": o.limit_test,
            "num_classes": o.num_classes,
            "data_dir": str(o.data_dir) if o.data_dir else os.environ.get("CIFAR10_DIR"),
            "verify": o.verify,
            "device": str(self.device),
            "engine": self.engine.options.to_dict(),
            "world_size": self.dist.world_size,
            "eval_batch_size": self.eval_batch_size,
            "n_train": int(self.n_train),
            "n_test": int(len(self.y_test)),
            "versions": _versions(self.device),
            "command": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(self.out / CONFIG_FILE, config)

    # ------------------------------------------------------------------ checkpoints and logs
    def _rng_state(self, data_state: torch.Tensor) -> dict:
        return {
            "data": data_state,
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def _save(self, epoch: int, step: int, data_state: torch.Tensor, partial: dict | None):
        if not self.dist.is_main:
            return
        save_checkpoint(
            self.out,
            {
                "model_name": self.opts.model,
                "model_config": self.model.config.to_dict(),
                "run_identity": self.opts.run_identity(),
                "epoch": epoch,
                "step": step,
                "model": self.model.state_dict(),
                "optimizer": self.engine.optimizer_state(),
                "engine": self.engine.extra_state(),
                "rng": self._rng_state(data_state),
                "partial": partial,
                "history": self.history,
            },
            # hashed and written in a thread while the next epoch trains
            writer=self.writer,
        )

    def _write_metrics(self) -> None:
        if not self.dist.is_main:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        w.writeheader()
        for row in self.history:
            w.writerow({k: row[k] for k in METRIC_COLUMNS})
        atomic_write_text(self.out / METRICS_FILE, buf.getvalue())

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        self.writer = BackgroundWriter()
        try:
            self.setup()
            try:
                with _SignalGuard() as guard:
                    self.guard = guard
                    return self._run()
            finally:
                self._flush_writes()
                if self.lock is not None:
                    self.lock.release()
        finally:
            self.dist.close()

    def _stop_requested(self, step: int, last: bool) -> bool:
        """Whether a signal asks to stop here. Ranks agree, every few steps, on one step."""
        if not self.dist.enabled:
            return self.guard.signum is not None
        every = 50 if self.device.type == "cuda" else 5
        if not last and step % every:
            return False
        flag = torch.tensor([0 if self.guard.signum is None else self.guard.signum])
        flag = flag.to(self.device if self.device.type == "cuda" else "cpu")
        signum = int(self.dist.all_reduce(flag, "max").cpu())
        if signum and self.guard.signum is None:
            self.guard.signum = signum
        return bool(signum)

    def _progress_enabled(self) -> bool:
        if self.opts.quiet:
            return False
        if self.opts.progress is not None:
            return self.opts.progress
        return sys.stderr.isatty()

    def _run(self) -> dict:
        opts, recipe = self.opts, self.opts.recipe
        tb = None
        if opts.tensorboard and self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run logged past its last checkpoint.
            tb = SummaryWriter(str(self.out), purge_step=self.start_epoch + 1)
        self.run_start = time.perf_counter()
        try:
            for epoch in range(self.start_epoch, recipe.epochs):
                row = self._train_epoch(epoch)
                self.history.append(row)
                self._write_metrics()
                if tb is not None:
                    for k in METRIC_COLUMNS[1:]:
                        tb.add_scalar(k, row[k], epoch + 1)
                    tb.flush()
                self._save(epoch + 1, 0, self.data_gen.get_state(), None)
                self._report_epoch(row)
                if self._stop_requested(0, last=True):
                    self.dist.barrier()  # the checkpoint is on disk before any rank leaves
                    self._interrupted(epoch + 1, 0)
        finally:
            if tb is not None:
                tb.close()
        return self._finish()

    def _report_epoch(self, row: dict) -> None:
        epochs = self.opts.recipe.epochs
        done = row["epoch"]
        recent = [r["seconds"] for r in self.history[-5:]]
        eta = (epochs - done) * (sum(recent) / len(recent))
        self.say(
            f"epoch {done}/{epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}  "
            f"lr {row['lr']:g}  {row['seconds']:.1f}s"
            + (f"  ETA {_fmt_duration(eta)}" if done < epochs else "")
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

    def _interrupted(self, epoch: int, step: int) -> None:
        self.writer.wait()  # the checkpoint named below is on disk
        signum = self.guard.signum or signal.SIGINT
        name = signal.Signals(signum).name
        cmd = f"alexnet-cifar train {self.opts.model} --out {self.out} --resume"
        where = f"in epoch {epoch + 1} after step {step}" if step else f"after epoch {epoch}"
        raise TrainingInterrupted(
            f"{name}: stopped {where} and saved {self.out / CHECKPOINT}.\nResume with: {cmd}",
            signum,
        )

    def _train_epoch(self, epoch: int) -> dict:
        recipe = self.opts.recipe
        dev, bs, n = self.device, recipe.batch_size, self.n_train
        engine, spe = self.engine, self.steps_per_epoch
        world, rank = self.dist.world_size, self.dist.rank

        # The epoch's randomness, drawn on the CPU in one go: the same on every device and
        # every rank.
        epoch_state = self.data_gen.get_state()
        perm = torch.randperm(n, generator=self.data_gen)
        dy, dx, flip = draw_seed_augmentation(
            n, self.data_gen, None, recipe.max_shift, recipe.flip_p
        )

        start_step, seconds_before, seen = 0, 0.0, 0
        partial = {}
        if epoch == self.start_epoch and self.start_step:
            start_step = self.start_step
            partial = self.partial or {}
            seen = int(partial.get("seen", 0))
            seconds_before = float(partial.get("seconds", 0.0))
        # A resumed epoch's sums were summed over ranks when saved: rank 0 carries them.
        carried = partial if self.dist.is_main else {}
        engine.begin_epoch(
            epoch,
            perm.to(dev),
            dy.to(dev),
            dx.to(dev),
            flip.to(dev),
            start_step,
            float(carried.get("loss_sum", 0.0)),
            int(carried.get("correct", 0)),
        )

        self.model.train()
        setup_before = engine.setup_seconds
        t0 = time.perf_counter()
        bar = None
        if self._progress_enabled() and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=spe,
                initial=start_step,
                desc=f"epoch {epoch + 1}/{recipe.epochs}",
                unit="step",
                leave=False,
                dynamic_ncols=True,
            )
        last_peek, mine = 0.0, 0  # mine: the images this rank has seen this epoch
        for step in range(start_step, spe):
            engine.step(step)
            b = min(bs, n - step * bs)
            seen += b
            mine += shard(b, world, rank)[1]
            if self.on_step is not None:
                self.on_step(self, epoch, step)
            now = time.perf_counter()
            # On the CPU reading the sums is free; on CUDA peek_metrics never waits.
            if dev.type == "cpu" or now - last_peek > 1.0:
                last_peek = now
                snap = engine.peek_metrics()
                if snap is not None:
                    if snap[2] >= 0 and not self.dist.enabled:  # ranks agree at the epoch end
                        raise self._nonfinite(epoch, snap[2])
                    if bar is not None:
                        elapsed = now - t0 - (engine.setup_seconds - setup_before)
                        bar.set_postfix(
                            loss=f"{snap[0] / max(mine, 1):.4f}",
                            acc=f"{snap[1] / max(mine, 1):.4f}",
                            img_s=f"{(seen - start_step * bs) / max(elapsed, 1e-9):.0f}",
                            refresh=False,
                        )
            if bar is not None:
                bar.update(1)
            if step + 1 < spe and self._stop_requested(step, last=False):
                if bar is not None:
                    bar.close()
                loss_sum, correct, bad = engine.read_metrics()
                if bad >= 0:
                    raise self._nonfinite(epoch, bad)
                elapsed = time.perf_counter() - t0 - (engine.setup_seconds - setup_before)
                self._save(
                    epoch,
                    step + 1,
                    epoch_state,
                    {
                        "loss_sum": loss_sum,
                        "correct": correct,
                        "seen": seen,
                        "seconds": seconds_before + elapsed,
                    },
                )
                self.dist.barrier()
                self._interrupted(epoch, step + 1)
        if bar is not None:
            bar.close()
        loss_sum, correct, bad = engine.read_metrics()
        if bad >= 0:
            raise self._nonfinite(epoch, bad)

        ev = self._evaluate()
        self.last_eval = ev
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = seconds_before + time.perf_counter() - t0 - (engine.setup_seconds - setup_before)
        return {
            "epoch": epoch + 1,
            "loss": loss_sum / seen,
            "accuracy": correct / seen,
            "val_loss": ev.loss,
            "val_accuracy": ev.accuracy,
            "lr": recipe.lr_at(epoch, spe - 1, spe),
            "seconds": round(seconds, 3),
        }

    def _evaluate(self) -> EvalResult:
        """The test set, on the weights the recipe evaluates; split over ranks and summed."""
        n, world, rank = len(self.y_test), self.dist.world_size, self.dist.rank
        offset, size = shard(n, world, rank)
        with self.engine.evaluated_weights():
            ev = evaluate_model(
                self.model,
                self.x_test[offset : offset + size],
                self.y_test[offset : offset + size],
                classes=self.classes,
                batch_size=self.eval_batch_size,
                loss_clip_eps=self.opts.recipe.loss_clip_eps,
                channels_last=self.channels_last,
                precision=self.eval_precision,
                tta_flip=self.opts.recipe.tta_flip,
            )
        if not self.dist.enabled:
            return ev
        where = self.device if self.device.type == "cuda" else torch.device("cpu")
        sums = torch.tensor([ev.cross_entropy * ev.n, ev.n], dtype=torch.float64, device=where)
        confusion = torch.from_numpy(ev.confusion).to(where)
        self.dist.all_reduce(sums, "sum")
        self.dist.all_reduce(confusion, "sum")
        ce_sum, total = float(sums[0]), int(sums[1])
        confusion = confusion.cpu().numpy()
        penalty = ev.loss - ev.cross_entropy
        return EvalResult(
            loss=ce_sum / total + penalty,
            accuracy=float(confusion.trace()) / total,
            cross_entropy=ce_sum / total,
            n=total,
            confusion=confusion,
            classes=ev.classes,
        )

    def _nonfinite(self, epoch: int, step: int) -> NonFiniteLossError:
        last = self.history[-1]["epoch"] if self.history else 0
        kept = (
            f"the last good checkpoint ({self.out / CHECKPOINT}, end of epoch {last}) is kept"
            if last
            else "no checkpoint was written"
        )
        return NonFiniteLossError(
            f"the loss became NaN or infinite in epoch {epoch + 1}, step {step + 1}; "
            f"training stopped and {kept}. A lower learning rate usually helps."
        )

    def _finish(self) -> dict:
        self.writer.wait()
        opts = self.opts
        model_path = self.out / MODEL_FILE
        if not self.history:
            raise CheckpointError(f"{self.out} holds no finished epoch")
        final = self.history[-1]
        best = max(self.history, key=lambda r: r["val_accuracy"])
        ev = getattr(self, "last_eval", None) or self._evaluate()
        result = {
            "model": opts.model,
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
            "recipe": opts.recipe.name,
            "compile_seconds": round(self.engine.setup_seconds, 3),
            "model_file": str(model_path),
            # the final model on the test set: what a report needs without the data
            "classes": ev.classes,
            "per_class_accuracy": ev.to_dict()["per_class_accuracy"],
            "confusion_matrix": ev.confusion.tolist(),
        }
        if not self.dist.is_main:
            return result
        with self.engine.evaluated_weights():  # the weights that were evaluated
            state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        save_model_file(
            model_path,
            self.model.config.to_dict(),
            state,
            {
                "model_name": opts.model,
                "epochs": final["epoch"],
                "run_identity": opts.run_identity(),
            },
        )
        atomic_write_json(self.out / RESULT_FILE, result)
        return result


def train(options: TrainOptions, **kwargs) -> dict:
    """Train as ``options`` say; returns the result summary (also written to result.json)."""
    return Trainer(options, **kwargs).run()
