"""How best to use a few CPU cores: threads, data-parallel ranks, runs side by side.

    python scripts/measure_cpu_parallel.py [--rounds 5] [--steps 20] [--precision auto]
    python scripts/measure_cpu_parallel.py --study [--study-rounds 2] [--study-epochs 1]

Run it on a quiet machine (nothing else working): every figure is a rate or a wall time.

1. **Threads.** The ``alexnet_thinner_4`` fast-recipe step at batch 128 (the engine's step as
   ``train`` runs it, on random images already on the device), with 1 and with 2 torch threads,
   alternating in one process, round by round: images/s each, and 2 threads against 1.
2. **Data parallel.** The same step, global batch 128: two gloo ranks of one thread each
   (``torchrun --standalone --nproc-per-node 2``, the package's data parallelism) against one
   process with two threads, alternating, a fresh process (or pair) each round: images/s each,
   and the two ranks against the one process.
3. **Runs side by side** (``--study``): the wall time of a two-run study
   (``alexnet,alexnet_thinner_4``; by default one epoch on 10,000 training images) with
   ``--jobs 1`` and with ``--jobs 2``, alternating, each round in a fresh folder: seconds each,
   and ``--jobs 1`` against ``--jobs 2``.

Each figure is the median over rounds; each ratio is against the baseline measured in the same
invocation (1 thread; one process of 2 threads; ``--jobs 1``), with every round's own ratio.
``--quick`` shrinks everything to check that the script runs (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from alexnet_cifar.distributed import init_distributed
from alexnet_cifar.engine.bench import describe_device, environment
from alexnet_cifar.engine.core import Engine, EngineOptions
from alexnet_cifar.models import AlexNet, get_config
from alexnet_cifar.recipe import get_recipe

MODEL = "alexnet_thinner_4"
STUDY_MODELS = "alexnet,alexnet_thinner_4"
CPU = torch.device("cpu")


class Stepper:
    """The fast recipe's step of MODEL at a global batch, on random images; under torchrun,
    this rank's share of it (DDP averages the gradients)."""

    def __init__(self, batch: int, steps: int, precision: str, dist=None, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        n = batch * steps
        x = torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (n,), generator=g)
        torch.manual_seed(seed)
        model = AlexNet(get_config(MODEL))
        recipe = get_recipe("fast", batch_size=batch)
        self.engine = Engine(model, recipe, CPU, EngineOptions(precision=precision), x, y, dist)
        self.engine.begin_epoch(0, self.engine.draw_epoch(g))
        model.train()
        self.engine.prepare()
        self.next, self.batch, self.dist = 0, batch, dist

    def images_per_s(self, steps: int) -> float:
        """Images (of the global batch) a second over ``steps`` steps."""
        if self.dist is not None:
            self.dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.engine.step(self.next % self.engine.steps_per_epoch)
            self.next += 1
        if self.dist is not None:
            self.dist.barrier()
        return steps * self.batch / (time.perf_counter() - t0)


def _ratios(a: list[float], b: list[float]) -> list[float]:
    return [round(x / y, 3) for x, y in zip(a, b)]


def _say(name: str, values: list[float], unit: str) -> None:
    shown = ", ".join(f"{v:.1f}" for v in values)
    print(f"  {name:<34}{statistics.median(values):>9.1f} {unit}  (rounds: {shown})", flush=True)


def threads(args) -> dict:
    """Part 1: one process, 1 and 2 threads in turn."""
    print(f"1. threads: {MODEL}, fast recipe, batch {args.batch_size}, one process", flush=True)
    total = args.warmup + 2 * args.rounds * args.steps
    stepper = Stepper(args.batch_size, total, args.precision)
    torch.set_num_threads(2)
    stepper.images_per_s(args.warmup)
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for n in (1, 2):
            torch.set_num_threads(n)
            rates[n].append(stepper.images_per_s(args.steps))
    _say("1 thread (baseline)", rates[1], "images/s")
    _say("2 threads", rates[2], "images/s")
    ratio = statistics.median(rates[2]) / statistics.median(rates[1])
    print(f"  2 threads / 1 thread: {ratio:.2f}x (rounds: {_ratios(rates[2], rates[1])})")
    return {"one_thread": rates[1], "two_threads": rates[2], "ratio": round(ratio, 3)}


def _worker_command(args, ranks: int) -> tuple[list[str], dict]:
    worker = [
        str(Path(__file__).resolve()), "--worker", "--batch-size", str(args.batch_size),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--precision", args.precision,
    ]  # fmt: skip
    env = dict(os.environ)
    if ranks == 1:
        env["OMP_NUM_THREADS"] = "2"
        return [sys.executable, *worker, "--threads", "2"], env
    env["OMP_NUM_THREADS"] = "1"
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*run, "--nproc-per-node", str(ranks), *worker, "--threads", "1"], env


def _run_worker(args, ranks: int) -> float:
    command, env = _worker_command(args, ranks)
    p = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not lines:
        why = f"{p.stdout[-2000:]}{p.stderr[-3000:]}"
        raise SystemExit(f"the worker failed (exit code {p.returncode}):\n{why}")
    return json.loads(lines[-1])["images_per_s"]


def data_parallel(args) -> dict:
    """Part 2: one process of 2 threads against 2 gloo ranks of 1 thread, in turn."""
    print(
        f"2. data parallel: {MODEL}, fast recipe, global batch {args.batch_size}: one process "
        "of 2 threads against 2 gloo ranks of 1 thread (torchrun), a fresh start each round",
        flush=True,
    )
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for ranks in (1, 2):
            rates[ranks].append(_run_worker(args, ranks))
    _say("1 process, 2 threads (baseline)", rates[1], "images/s")
    _say("2 ranks x 1 thread", rates[2], "images/s")
    ratio = statistics.median(rates[2]) / statistics.median(rates[1])
    print(f"  2 ranks / 1 process: {ratio:.2f}x (rounds: {_ratios(rates[2], rates[1])})")
    return {"one_process": rates[1], "two_ranks": rates[2], "ratio": round(ratio, 3)}


def worker(args) -> None:
    """One measurement in a fresh process (a rank of torchrun, or alone); rank 0 prints it."""
    torch.set_num_threads(args.threads)
    dist = init_distributed("cpu")
    ranks = dist if dist.enabled else None
    stepper = Stepper(args.batch_size, args.warmup + args.steps, args.precision, ranks)
    stepper.images_per_s(args.warmup)
    rate = stepper.images_per_s(args.steps)
    if dist.is_main:
        print(json.dumps({"images_per_s": rate, "world_size": dist.world_size}), flush=True)
    dist.close()


def study(args) -> dict:
    """Part 3: the wall time of a two-run study, --jobs 1 and --jobs 2 in turn."""
    flags = [
        "--models", args.study_models, "--seeds", str(args.study_seeds), "--epochs",
        str(args.study_epochs), "--limit-train",
        str(args.study_limit_train), "--limit-test", str(args.study_limit_test), "--device",
        "cpu", "--quiet", "--no-tensorboard",
    ]  # fmt: skip
    print(f"3. runs side by side: study {' '.join(flags)}, --jobs 1 against --jobs 2", flush=True)
    seconds: dict[str, list[float]] = {"1": [], "2": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.study_rounds):
            for jobs in ("1", "2"):
                out = Path(tmp) / f"jobs{jobs}-{r}"
                t0 = time.perf_counter()
                p = subprocess.run(
                    [sys.executable, "-m", "alexnet_cifar", "study", *flags, "--jobs", jobs,
                     "--out", str(out)],
                    capture_output=True, text=True,
                )  # fmt: skip
                seconds[jobs].append(time.perf_counter() - t0)
                if p.returncode != 0:
                    raise SystemExit(f"the study failed:\n{p.stdout[-2000:]}{p.stderr[-3000:]}")
    _say("--jobs 1 (baseline)", seconds["1"], "s")
    _say("--jobs 2", seconds["2"], "s")
    ratio = statistics.median(seconds["1"]) / statistics.median(seconds["2"])
    print(f"  --jobs 2 is {ratio:.2f}x as fast (rounds: {_ratios(seconds['1'], seconds['2'])})")
    return {"jobs1_seconds": seconds["1"], "jobs2_seconds": seconds["2"], "speedup": ratio}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="measured steps per round and side")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps first")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--skip-threads", action="store_true", help="leave out part 1")
    p.add_argument("--skip-ddp", action="store_true", help="leave out part 2")
    p.add_argument("--study", action="store_true", help="also part 3: --jobs 1 against 2")
    p.add_argument("--study-models", default=STUDY_MODELS)
    p.add_argument("--study-epochs", type=int, default=1)
    p.add_argument("--study-limit-train", type=int, default=10_000)
    p.add_argument("--study-limit-test", type=int, default=1_000)
    p.add_argument("--study-rounds", type=int, default=2)
    p.add_argument(
        "--study-seeds", type=int, default=1, help="seeds per model (2 with one model: alike runs)"
    )
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--quick", action="store_true", help="tiny sizes: does the script run?")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.steps, args.warmup, args.rounds, args.batch_size = 2, 1, 1, 16
        args.study_epochs, args.study_limit_train, args.study_limit_test = 1, 64, 50
        args.study_rounds = 1
    print(f"on {describe_device(CPU)}; torch {torch.__version__}", flush=True)
    figures = {"environment": environment(CPU), "settings": vars(args) | {"json": None}}
    if not args.skip_threads:
        figures["threads"] = threads(args)
    if not args.skip_ddp:
        figures["data_parallel"] = data_parallel(args)
    if args.study:
        figures["study"] = study(args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
