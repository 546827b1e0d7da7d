"""A run's construction, in its locked folder: what a resume continues (or a new run), the data
on the device, the model and its engine, the random states, and the first records.

All randomness of the data (shuffle, shifts, flips) comes from one CPU generator, drawn once
per epoch, so a run gives the same draws on any device and a resumed run redraws exactly what
the interrupted one drew.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .. import files
from ..data import CIFAR10, load_cifar10
from ..distributed import DistContext, init_distributed, resolve_device
from ..engine.core import Engine, EngineOptions, EpochSums
from ..engine.evaluate import eval_batch_size
from ..engine.memory import check_data_memory
from ..engine.options import set_process_flags
from ..errors import CheckpointError
from ..models import AlexNet
from ..variants import check_images
from .checkpointer import restore_rng
from .records import run_config
from .resume import load_resume_state, record_kept_changes
from .run import Run, TrainOptions
from .runlog import RunLog
from .selection import BestEpoch

__all__ = ["build_run", "device_and_ranks", "engine_line"]


def device_and_ranks(name: str) -> tuple[torch.device, DistContext]:
    """The device, and the process group when torchrun started this process (each rank then
    uses its own GPU)."""
    device = resolve_device(name)
    dist = init_distributed(device.type)
    if device.type == "cuda" and dist.enabled and device.index is None:
        device = torch.device("cuda", dist.local_rank)
    return device, dist


def build_run(
    opts: TrainOptions,
    device: torch.device,
    dist: DistContext,
    runlog: RunLog,
    data: CIFAR10 | None = None,
) -> Run:
    """The run ``opts`` ask for in its (locked) folder: new, or continued from its checkpoint
    (``opts.resume``); ``data``: CIFAR-10 already loaded (default: loaded as ``opts`` say).
    Prints the engine line, writes config.json for a new run."""
    out = Path(opts.out)
    set_process_flags(device)  # once, before any step is run or measured
    said: list[str] = []  # the engine's line comes first, then what the resume found
    state, recipe = load_resume_state(
        out,
        opts.recipe,
        lambda r: replace(opts, recipe=r).run_identity(),
        opts.resume,
        opts.force,
        said.append,
        runlog.warn,
    )
    opts = replace(opts, recipe=recipe)  # the caller's options stay as they were
    data = data or load_cifar10(opts.data_dir, verify=opts.verify, progress=not opts.quiet)
    data = data.subset(opts.limit_train, opts.limit_test, opts.seed, opts.val_split)
    check_images(opts.model_shape(), data.x_train.shape[1:])
    batches = (opts.recipe.batch_size, opts.eval_batch_size or eval_batch_size(device))
    check_data_memory(opts.model_shape(), *batches, data, device, dist)  # can the device hold them?
    x_train, y_train, x_test, y_test, x_val, y_val = _on_device(data, device)
    torch.manual_seed(opts.seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(opts.seed)
    model = AlexNet(opts.model_shape()).to(device)
    engine = Engine(model, recipe, device, opts.engine, x_train, y_train, dist, warn=runlog.warn)
    data_gen = torch.Generator().manual_seed(opts.seed + 1)
    where = _where_it_starts(out, state, engine, data_gen, device)
    run = Run(
        opts=opts,
        out=out,
        device=device,
        dist=dist,
        runlog=runlog,
        classes=list(data.classes),
        x_test=x_test,
        y_test=y_test,
        x_val=x_val,
        y_val=y_val,
        model=model,
        engine=engine,
        data_gen=data_gen,
        **where,
    )
    if state is not None and run.start_epoch < recipe.epochs and dist.is_main:
        # A finished run extended with more epochs: its result and final model describe the
        # shorter run (the checkpoint holds its weights).
        for name in (files.RESULT_FILE, files.MODEL_FILE):
            (out / name).unlink(missing_ok=True)
    if run.start_epoch < opts.last_epoch:
        engine.prepare()  # compile and capture now: the configuration used is known
    runlog.say(engine_line(run))
    for line in said:
        runlog.say(line)
    if state is None or not (out / files.CONFIG_FILE).is_file():
        runlog.write_config(run_config(run))
    elif dist.is_main:  # a new data folder (md5-checked: the same files), checkpoint cadence
        record_kept_changes(out, opts)
    return run


def _where_it_starts(
    out: Path, state: dict | None, engine: Engine, data_gen: torch.Generator, device
) -> dict:
    """Where the run starts (the Run's fields from ``start_epoch`` on): at the beginning, or
    where the checkpoint ``state`` left it, with its training state loaded into ``engine`` and
    its random states restored."""
    if state is None:
        return dict(
            start_epoch=0, start_step=0, resumed_sums=EpochSums(), history=[], best=BestEpoch()
        )
    try:
        engine.load_state_dict(state)
        restore_rng(state["rng"], data_gen, device)
        return dict(
            start_epoch=int(state["epoch"]),
            start_step=int(state["step"]),
            resumed_sums=EpochSums.from_dict(state.get("partial")),
            history=list(state.get("history", [])),
            best=BestEpoch(state.get("best_val")),
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"the checkpoint in {out} does not fit this run ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'missing field'})"
        ) from e


def engine_line(run: Run) -> str:
    """The first line a run prints: the engine configuration used, and any fallback."""
    used, rec = run.engine.used_options, run.engine.engine_record()
    line = f"{run.opts.model} on {run.device}: engine {used.describe()}"
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
