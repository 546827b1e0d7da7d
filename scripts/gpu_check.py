"""The checks and measurements that need a CUDA GPU, in one script with one report.

    python scripts/gpu_check.py --out gpu-report [--seed-run] [--fast-runs] [--data-dir DIR]
    python scripts/gpu_check.py --dry-run --out /tmp/check   # every section the CPU can run

Sections, each wrapped so that one failure loses no other, each printing PASS or FAIL with its
figures (relative differences; fp32 references run with the engine's own TF32 setting, off):

1. the environment: card, driver, PyTorch, CUDA;
2. the engine's plain configuration equals the textbook step;
3. CUDA graphs (with torch.compile) equal the same engine without, over 2 epochs whose last
   batch is short, with a learning-rate change every step and the weight average, and were
   really used (``--strict-engine``: a silent fallback is a failure);
4. the default configuration (bf16) trains, with finite losses, on the rung it asked for;
5. a forced fallback (capture made to fail) trains on and equals the plain engine;
6. a resume from a contiguous checkpoint into a channels_last engine: the optimiser's and the
   average's tensors are laid out like their parameters, and training goes on as if unbroken;
7. ``bench`` for two variants at batch 64 and ``alexnet_slim`` at 512, with set-up time;
8. with ``--seed-run`` / ``--fast-runs``: whole training runs, timed.

``--dry-run`` runs sections 2-7 on the CPU (graphs emulated by a ``make_fx`` trace that holds
the real state tensors, which cannot trace a compiled model: compile is rehearsed alone, on its
eager backend; tiny benches); the test suite runs it.
Everything printed also goes to OUT/report.md and OUT/*.json, ready for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from alexnet_cifar.augment import draw_seed_augmentation, hflip, normalize, translate
from alexnet_cifar.engine.bench import BenchSettings, environment, format_row, run_bench
from alexnet_cifar.engine.capture import EmulatedGraphs
from alexnet_cifar.engine.core import Engine, EngineOptions
from alexnet_cifar.engine.options import set_process_flags
from alexnet_cifar.models import PRESETS, AlexNet, get_config
from alexnet_cifar.optim import plain_step
from alexnet_cifar.recipe import Recipe, get_recipe

MODEL = "alexnet_thinner_4"


class Report:
    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self.failed: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        (self.out / "report.md").write_text("\n".join(self.lines) + "\n")

    def save(self, name: str, obj) -> None:
        (self.out / name).write_text(json.dumps(obj, indent=2) + "\n")

    def section(self, title: str, fn) -> None:
        """Run one section: PASS with its figures, or FAIL with the reason; never raises."""
        self(f"## {title}")
        try:
            ok, figures = fn()
        except Exception as e:  # one failing section must not cost the others
            ok, figures = False, f"{type(e).__name__}: {e}"
            self("    " + traceback.format_exc().strip().splitlines()[-1])
        self(f"{'PASS' if ok else 'FAIL'}: {figures}")
        self()
        if not ok:
            self.failed.append(title)


class Setup:
    """Device, sizes and how graphs are made: the card's, or the CPU rehearsal's."""

    def __init__(self, dry_run: bool):
        self.dry = dry_run
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.n, self.bs = (20, 8) if dry_run else (600, 64)  # a short last batch either way
        self.backend = "eager" if dry_run else "inductor"

    def graphs(self, fail: BaseException | None = None):
        if self.dry:
            return EmulatedGraphs(fail)
        if fail is None:
            return None  # the engine's own CUDA graphs

        class Failing(EmulatedGraphs):
            def capture(self, fn, before):
                raise fail

        return Failing()

    def data(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(64, 192, (self.n, 32, 32, 3), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (self.n,), generator=g)
        return x.to(self.device), y.to(self.device)

    def engine(self, options, graphs=None, recipe=None, dropout=0.0, said=None):
        torch.manual_seed(0)
        model = AlexNet(replace(get_config(MODEL), dropout=dropout)).to(self.device)
        recipe = recipe or get_recipe("fast", epochs=2, batch_size=self.bs)
        x, y = self.data()
        warn = said.append if said is not None else print
        return Engine(model, recipe, self.device, options, x, y, graphs=graphs, warn=warn)


def train(engine, epochs=2, seed=1):
    """``epochs`` epochs; the parameters and the average, as float32 on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    engine.prepare()
    for epoch in range(epochs):
        engine.begin_epoch(epoch, engine.draw_epoch(gen))
        engine.model.train()
        for s in range(engine.steps_per_epoch):
            engine.step(s)
    sums, bad = engine.read_metrics()
    state = [p.detach().float().cpu() for p in engine.model.parameters()]
    return state + [t.float().cpu() for t in (engine.ema or [])], sums, bad


def rel_diff(a: list, b: list) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b))
    den = sum(float(y.pow(2).sum()) for y in b)
    return (num / max(den, 1e-30)) ** 0.5


FP32 = EngineOptions(precision="fp32", channels_last=False, compile=False, cuda_graphs=False)


def check_plain(s: Setup):
    dev, bs, steps = s.device, s.bs, s.n // s.bs
    x, y = s.data()
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(s.n, generator=g)
    dy, dx, flip = draw_seed_augmentation(s.n, g)
    torch.manual_seed(0)
    ref = AlexNet(replace(get_config(MODEL), dropout=0.0)).to(dev)
    opt = torch.optim.SGD(ref.parameters(), lr=0.003, momentum=0.9, nesterov=True)
    for i in range(steps):
        sl = slice(i * bs, (i + 1) * bs)
        idx = perm[sl].to(dev)
        xb = translate(normalize(x[idx]), dy[sl].to(dev), dx[sl].to(dev))
        plain_step(ref, opt, hflip(xb, flip[sl].to(dev)), y[idx])
    recipe = Recipe(batch_size=bs, lr=0.003)
    engine = s.engine(replace(FP32, fused_optimizer=False), recipe=recipe)
    engine.begin_epoch(0, (perm, dy, dx, flip))
    for i in range(steps):
        engine.step(i)
    mine = [p.detach().float().cpu() for p in engine.model.parameters()]
    d = rel_diff(mine, [p.detach().float().cpu() for p in ref.parameters()])
    return d < 1e-5, f"engine (fp32, eager) vs plain step, {steps} steps: relative {d:.1e}"


def check_graphs(s: Setup):
    plain, _, _ = train(s.engine(FP32))
    # make_fx cannot trace a compiled function: the rehearsal's graphs run uncompiled
    fast = replace(FP32, compile=not s.dry, compile_backend=s.backend, cuda_graphs=True)
    t0 = time.perf_counter()
    engine = s.engine(replace(fast, strict_engine=True), s.graphs())
    graphed, sums, bad = train(engine)
    used = engine.used_options
    d = rel_diff(graphed, plain)
    ok = used.cuda_graphs and used.compile == (not s.dry) and bad == -1 and d < 1e-4
    return ok, (
        f"{used.describe()} vs eager, 2 epochs of {s.n} images at batch {s.bs} (short last "
        f"batch), per-step lr, EMA: relative {d:.1e}; set-up {engine.setup_seconds:.1f} s, "
        f"total {time.perf_counter() - t0:.1f} s"
    )


def check_default(s: Setup):
    asked = EngineOptions(compile=True, compile_backend=s.backend, strict_engine=True)
    if s.dry:  # compile alone: it cannot run inside the emulated graphs
        asked = replace(asked, cuda_graphs=False)
    engine = s.engine(asked, None, dropout=0.5)
    _, sums, bad = train(engine)
    ok = bad == -1 and sums.loss == sums.loss
    return ok, f"{engine.used_options.describe()}: loss {sums.loss:.3f}, first bad step {bad}"


def check_fallback(s: Setup):
    plain, _, _ = train(s.engine(FP32))
    said: list[str] = []
    opts = replace(FP32, cuda_graphs=True)
    engine = s.engine(opts, s.graphs(RuntimeError("capture made to fail")), said=said)
    state, _, bad = train(engine)
    d = rel_diff(state, plain)
    rec = engine.engine_record()["fallbacks"]
    ok = not engine.used_options.cuda_graphs and len(rec) == 1 and len(said) == 1 and d < 1e-5
    return ok, f"fell back ({rec[0]['reason'] if rec else 'no fallback!'}); relative {d:.1e}"


def check_layout(s: Setup):
    whole, _, _ = train(s.engine(FP32), epochs=2)
    first = s.engine(FP32)
    train(first, epochs=1)
    state = first.state_dict()
    second = s.engine(replace(FP32, channels_last=True))
    second.load_state_dict(state)
    params = list(second.model.parameters())
    bufs = [second.optimizer.state[p]["momentum_buffer"] for p in params]
    laid = all(b.stride() == p.stride() for b, p in zip(bufs, params))
    laid &= all(a.stride() == p.stride() for a, p in zip(second.ema or [], params))
    gen = torch.Generator().manual_seed(1)
    second.draw_epoch(gen)  # the first epoch's draws, already trained
    second.begin_epoch(1, second.draw_epoch(gen))
    second.model.train()
    for i in range(second.steps_per_epoch):
        second.step(i)
    resumed = [p.detach().float().cpu() for p in params]
    resumed += [t.float().cpu() for t in (second.ema or [])]
    d = rel_diff(resumed, whole)
    return laid and d < 1e-4, f"strides like the parameters: {laid}; vs unbroken run {d:.1e}"


def check_bench(s: Setup, say):
    if s.dry:
        runs = [([MODEL], 8, 2)]
    else:
        two = ["alexnet_thinner_4", "alexnet_slim_regular"]
        runs = [(two, 64, 60), (["alexnet_slim"], 512, 20)]
    figures = []
    for models, bs, steps in runs:
        settings = BenchSettings(
            models,
            s.device,
            bs,
            steps=steps,
            rounds=2 if s.dry else None,
            warmup=1 if s.dry else None,
            engine=FP32 if s.dry else EngineOptions(strict_engine=True),
        )
        out = run_bench(settings, report=lambda r: say("    " + format_row(r)))
        say.save(f"bench{bs}.json", out)
        for r in out["results"]:
            figures.append(f"{r['model']}@{bs}: x{r['speedup']:.2f}, set-up {r['setup_seconds']} s")
            if r["engine_fallbacks"]:
                return False, f"{r['model']} fell back: {r['engine_fallbacks']}"
    return True, "; ".join(figures)


def _cli(*args, timeout=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "alexnet_cifar", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def training_runs(args, say) -> None:
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    runs = []
    if args.seed_run:
        runs.append(("seed-slim-regular", ["alexnet_slim_regular"]))
    if args.fast_runs:
        fast = [("alexnet_slim_regular", s) for s in (0, 1, 2)]
        fast += [(m, 0) for m in PRESETS if m != "alexnet_slim_regular"]
        for model, seed in fast:
            runs.append((f"fast-{model}-{seed}", [model, "--recipe", "fast", "--seed", str(seed)]))
    for name, run in runs:

        def one(name=name, run=run):
            out = ["--out", str(args.out / name), "--json", "--quiet", *data]
            t0 = time.perf_counter()
            p = _cli("train", *run, *out)
            wall = time.perf_counter() - t0
            if p.returncode != 0:
                return False, f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
            r = json.loads(p.stdout)
            return not r["engine_fallbacks"], (
                f"test accuracy {r['test_accuracy']:.4f}, training {r['train_seconds']:.0f} s, "
                f"set-up {r['compile_seconds']:.0f} s, wall {wall:.0f} s, engine "
                f"{r['engine_used']}, fallbacks {r['engine_fallbacks']}"
            )

        say.section(f"training run {name}", one)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-report"))
    ap.add_argument("--dry-run", action="store_true", help="every section the CPU can run")
    ap.add_argument("--data-dir", help="CIFAR-10 for the training runs (default $CIFAR10_DIR)")
    ap.add_argument("--seed-run", action="store_true", help="the 300-epoch seed-recipe run")
    ap.add_argument("--fast-runs", action="store_true", help="the fast-recipe runs")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to check here (--dry-run: the CPU rehearsal)")
        return 2
    s = Setup(args.dry_run)
    set_process_flags(s.device)
    say = Report(args.out)
    env = environment(s.device)
    say(f"# GPU check{' (dry run on the CPU)' if s.dry else ''}, {env['date']}")
    say()
    say(
        f"{env['device_name']}, driver {env.get('driver')}, CUDA {env.get('cuda')}, "
        f"PyTorch {env['torch']}, alexnet-cifar {env['alexnet_cifar']}"
    )
    say()
    say.section("the plain configuration equals the textbook step", lambda: check_plain(s))
    say.section("CUDA graphs and compile, used and equal", lambda: check_graphs(s))
    say.section("the default configuration", lambda: check_default(s))
    say.section("a forced fallback", lambda: check_fallback(s))
    say.section("resume contiguous -> channels_last", lambda: check_layout(s))
    say.section("bench", lambda: check_bench(s, say))
    if not s.dry:
        training_runs(args, say)
    say(f"{'ALL SECTIONS PASS' if not say.failed else 'FAILED: ' + ', '.join(say.failed)}")
    return 1 if say.failed else 0


if __name__ == "__main__":
    sys.exit(main())
