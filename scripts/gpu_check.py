"""The checks and measurements that need a CUDA GPU, in one script with one report.

    python scripts/gpu_check.py --out gpu-report [--seed-run] [--fast-runs] [--data-dir DIR]

1. the environment: card, driver, PyTorch, CUDA;
2. correctness on the card: the engine (fp32, no compile, no graphs) equals the plain eager
   step; the engine with torch.compile and CUDA graphs (fp32) equals it without; bf16 trains
   with finite losses;
3. ``alexnet-cifar bench`` for all variants at batch 64, and ``alexnet_slim`` at batch 512;
4. with ``--seed-run``: the whole seed recipe for ``alexnet_slim_regular`` (300 epochs), timed;
5. with ``--fast-runs``: ``--recipe fast`` for ``alexnet_slim_regular`` with seeds 0, 1, 2 and
   once for each other variant.

Everything printed also goes to OUT/report.md and OUT/*.json, ready for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from alexnet_cifar.augment import draw_seed_augmentation, hflip, normalize, translate
from alexnet_cifar.bench import BenchSettings, environment, format_row, run_bench
from alexnet_cifar.engine import Engine, EngineOptions
from alexnet_cifar.optim import plain_step
from alexnet_cifar.models import PRESETS, AlexNet, get_config
from alexnet_cifar.recipe import Recipe


class Report:
    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        (self.out / "report.md").write_text("\n".join(self.lines) + "\n")

    def save(self, name: str, obj) -> None:
        (self.out / name).write_text(json.dumps(obj, indent=2) + "\n")


def _data(n: int, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(64, 192, (n, 32, 32, 3), generator=g, dtype=torch.uint8).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    perm = torch.randperm(n, generator=g)
    dy, dx, flip = draw_seed_augmentation(n, g)
    return x, y, perm, dy, dx, flip


def _model(name, device):
    # No dropout: torch.compile draws its random numbers differently from eager mode, and
    # these checks are about the arithmetic.
    torch.manual_seed(0)
    return AlexNet(replace(get_config(name), dropout=0.0)).to(device)


def _engine_params(name, options, device, steps=4, bs=32):
    """Parameters after ``steps`` engine steps from a fixed start, and the loss sum."""
    n = bs * steps
    x, y, perm, dy, dx, flip = _data(n, device)
    model = _model(name, device)
    engine = Engine(model, Recipe(batch_size=bs, lr=0.003), device, options, x, y)
    engine.begin_epoch(0, (perm, dy, dx, flip))
    for s in range(steps):
        engine.step(s)
    sums, bad = engine.read_metrics()
    return [p.detach().float().cpu() for p in model.parameters()], sums.loss_sum, bad


def correctness(say) -> bool:
    dev = torch.device("cuda")
    ok = True
    name, bs, steps = "alexnet_thinner_4", 32, 4
    # (a) engine, everything off, against the plain step
    n = bs * steps
    x, y, perm, dy, dx, flip = _data(n, dev)
    ref = _model(name, dev)
    opt = torch.optim.SGD(ref.parameters(), lr=0.003, momentum=0.9, nesterov=True)
    for s in range(steps):
        sl = slice(s * bs, (s + 1) * bs)
        idx = perm[sl].to(dev)
        xb = hflip(translate(normalize(x[idx]), dy[sl].to(dev), dx[sl].to(dev)), flip[sl].to(dev))
        plain_step(ref, opt, xb, y[idx])
    plain = [p.detach().float().cpu() for p in ref.parameters()]
    off = EngineOptions(
        precision="fp32",
        compile=False,
        cuda_graphs=False,
        channels_last=False,
        fused_optimizer=False,
    )
    eng, _, _ = _engine_params(name, off, dev, steps, bs)
    diff = max((a - b).abs().max().item() for a, b in zip(plain, eng))
    say(f"- engine (fp32, no compile, no graphs) vs plain step, {steps} steps: {diff:.2e}")
    ok &= diff < 1e-4
    # (b) compile + graphs (fp32) against no compile, no graphs
    fast = EngineOptions(precision="fp32", compile=True, cuda_graphs=True, channels_last=True)
    t0 = time.perf_counter()
    eng2, loss2, _ = _engine_params(name, fast, dev, steps, bs)
    diff2 = max((a - b).abs().max().item() for a, b in zip(eng, eng2))
    say(
        f"- engine with torch.compile + CUDA graphs + channels_last (fp32) vs engine plain: "
        f"max |dw| = {diff2:.2e} (compile and capture {time.perf_counter() - t0:.1f} s)"
    )
    ok &= diff2 < 1e-3
    # (c) bf16 trains
    _, loss3, bad = _engine_params(name, EngineOptions(), dev, steps, bs)
    say(f"- engine, default CUDA configuration (bf16): loss sum {loss3:.3f}, first bad step {bad}")
    ok &= bad == -1 and loss3 == loss3
    return ok


def _cli(*args, timeout=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "alexnet_cifar", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-report"))
    ap.add_argument("--data-dir", help="CIFAR-10 for the training runs (default $CIFAR10_DIR)")
    ap.add_argument("--seed-run", action="store_true", help="the 300-epoch seed-recipe run")
    ap.add_argument("--fast-runs", action="store_true", help="the fast-recipe runs")
    ap.add_argument("--bench-steps", type=int, default=60)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to check here", file=sys.stderr)
        return 2
    say = Report(args.out)
    env = environment(torch.device("cuda"))
    say(f"# GPU check, {env['date']}")
    say()
    say(
        f"{env['device_name']}, driver {env.get('driver')}, CUDA {env.get('cuda')}, "
        f"PyTorch {env['torch']}, alexnet-cifar {env['alexnet_cifar']}"
    )
    say()
    say("## Correctness on the card")
    ok = correctness(say)
    say(f"- {'all checks hold' if ok else 'A CHECK FAILED'}")
    say()
    say("## bench, batch 64")
    b64 = run_bench(
        BenchSettings(list(PRESETS), torch.device("cuda"), 64, steps=args.bench_steps),
        report=lambda r: say("    " + format_row(r)),
    )
    say.save("bench64.json", b64)
    say(f"measured bf16 matmul peak: {b64['bf16_matmul_peak_tflops']} TFLOP/s")
    say()
    say("## bench, batch 512, alexnet_slim")
    b512 = run_bench(
        BenchSettings(["alexnet_slim"], torch.device("cuda"), 512, steps=20),
        report=lambda r: say("    " + format_row(r)),
    )
    say.save("bench512.json", b512)
    say()
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    if args.seed_run:
        say("## Seed recipe, alexnet_slim_regular, 300 epochs")
        t0 = time.perf_counter()
        p = _cli(
            "train",
            "alexnet_slim_regular",
            "--out",
            str(args.out / "seed-slim-regular"),
            "--json",
            "--quiet",
            *data,
        )
        wall = time.perf_counter() - t0
        say(f"    wall {wall:.0f} s, exit {p.returncode}")
        if p.returncode == 0:
            r = json.loads(p.stdout)
            say(
                f"    test accuracy {r['test_accuracy']:.4f} (best {r['best_test_accuracy']:.4f} "
                f"at epoch {r['best_epoch']}), training {r['train_seconds']:.0f} s, compile "
                f"{r['compile_seconds']:.0f} s"
            )
        else:
            say("    " + p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "")
        say()
    if args.fast_runs:
        say("## Fast recipe")
        runs = [("alexnet_slim_regular", s) for s in (0, 1, 2)]
        runs += [(m, 0) for m in PRESETS if m != "alexnet_slim_regular"]
        for model, seed in runs:
            out = args.out / f"fast-{model}-{seed}"
            p = _cli(
                "train",
                model,
                "--recipe",
                "fast",
                "--seed",
                str(seed),
                "--out",
                str(out),
                "--json",
                "--quiet",
                *data,
            )
            if p.returncode == 0:
                r = json.loads(p.stdout)
                say(
                    f"    {model} seed {seed}: test accuracy {r['test_accuracy']:.4f}, training "
                    f"{r['train_seconds']:.1f} s, compile {r['compile_seconds']:.1f} s"
                )
            else:
                say(f"    {model} seed {seed}: failed ({p.returncode})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
