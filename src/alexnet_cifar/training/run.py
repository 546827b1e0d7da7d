"""What one run is: the options it is asked for (:class:`TrainOptions`) and what it is built
of once its folder is locked (:class:`Run`: data on the device, model, engine, where it
starts). ``build`` makes a Run; the trainer, the checkpointer and the records read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..distributed import DistContext, resolve_device
from ..engine.core import Engine, EngineOptions, EpochSums
from ..models import AlexNet
from ..recipe import Recipe
from .resume import run_identity
from .runlog import RunLog
from .selection import BestEpoch

__all__ = ["CHECKPOINT_EVERY", "Run", "TrainOptions"]

#: Seconds between checkpoints at most, by default: a hard kill loses at most this much
#: training, and a fast epoch does not pay for copying the state to the host each time.
CHECKPOINT_EVERY = 60.0


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
    eval_batch_size: int | None = None  # None: the device's (engine.evaluate.EVAL_BATCH)
    engine: EngineOptions = field(default_factory=EngineOptions)
    resume: bool = False
    force: bool = False  # resume accepts more epochs
    quiet: bool = False
    progress: bool | None = None  # None: a bar when stderr is a terminal
    tensorboard: bool = True
    # seconds between checkpoints at most (0: every epoch); one is always written at the end
    # and on a signal, so a kill -9 loses at most this much training
    checkpoint_every: float = CHECKPOINT_EVERY
    command: list[str] | None = None  # what config.json records as the command; None: sys.argv

    def run_identity(self) -> dict:
        """The fields that define what is computed: a resume must match them. The engine's
        numerics are those its options give on this run's device."""
        return run_identity(self, self.engine.numerics(resolve_device(self.device)))


@dataclass(frozen=True)
class Run:
    """One run as built in its locked folder, ready for its first (or next) epoch; what its
    records (config.json, the checkpoint, result.json, model.pt) are made from.

    ``history`` grows by one row per epoch and ``best`` follows the best validation epoch;
    nothing else changes once the run is built.
    """

    opts: TrainOptions  # as given, with the recipe a forced resume extended
    out: Path
    device: torch.device
    dist: DistContext
    runlog: RunLog
    classes: list[str]
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor  # the images each epoch is evaluated on: the split, else the test set
    y_val: torch.Tensor
    model: AlexNet
    engine: Engine
    data_gen: torch.Generator  # every draw of the data: shuffle, shifts, flips
    start_epoch: int
    start_step: int
    resumed_sums: EpochSums  # the totals of the epoch a resume continues (empty otherwise)
    history: list[dict]
    best: BestEpoch

    @property
    def epochs(self) -> int:
        return self.opts.recipe.epochs

    def run_identity(self) -> dict:
        """What this run computes (its checkpoint and model file record it), with the numerics
        its engine uses."""
        return run_identity(self.opts, self.engine.used_options.numerics(self.device))
