"""``alexnet-cifar bench``: the engine against a plain eager fp32 step, measured in one process.

For each model: (a) the textbook step (``optim.plain_step``: eager, fp32, NCHW,
``torch.optim.SGD``, a normalised batch already on the device) and (b) the engine's step as
``train`` runs it (gather from the uint8 data set, normalise, shift and flip on the device,
forward, loss, backward, Keras SGD, device-side metrics). Both run on random images, after
warm-up, alternating in rounds so that drift in the machine's speed hits both alike; each figure
is the median over rounds of the mean step time of a round. The ratio a/b is the speed-up.
"""

from __future__ import annotations

import math
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass

import torch

from ..augment import normalize
from ..data import IMAGE_SHAPE, TRAIN_IMAGES
from ..models import AlexNet, AlexNetConfig, config_of
from ..optim import plain_step
from ..provenance import versions
from ..recipe import Recipe
from ..variants import layer_table
from .core import Engine, EngineOptions
from .options import cpu_has_native_bf16, set_process_flags

__all__ = ["BenchSettings", "run_bench", "matmul_peak_tflops", "describe_device", "format_row"]

CIFAR_TRAIN_BYTES = TRAIN_IMAGES * math.prod(IMAGE_SHAPE)  # the training set on the device, uint8


@dataclass
class BenchSettings:
    models: list[str | AlexNetConfig]  # presets' names or shapes
    device: torch.device
    batch_size: int = 64
    steps: int | None = None  # measured steps per side (None: 60 on CUDA, 3 on CPU)
    rounds: int | None = None  # alternations of plain and engine (None: 5 on CUDA and CPU)
    warmup: int | None = None  # unmeasured steps per side first (None: 10 on CUDA, 2 on CPU)
    engine: EngineOptions = EngineOptions()
    seed: int = 0

    def resolved(self) -> BenchSettings:
        cuda = self.device.type == "cuda"
        return BenchSettings(
            models=self.models,
            device=self.device,
            batch_size=self.batch_size,
            steps=self.steps or (60 if cuda else 3),
            rounds=self.rounds or 5,
            warmup=self.warmup if self.warmup is not None else (10 if cuda else 2),
            engine=self.engine,
            seed=self.seed,
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_block(fn, first: int, count: int, device: torch.device) -> float:
    """Seconds per call of ``fn(i)`` for i in first..first+count-1 (device synchronised)."""
    if count <= 0:
        return 0.0
    _sync(device)
    t0 = time.perf_counter()
    for i in range(first, first + count):
        fn(i)
    _sync(device)
    return (time.perf_counter() - t0) / count


def matmul_peak_tflops(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    """Measured bf16 matmul throughput (n x n x n), the practical peak the engine is held to."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(3):
        times.append(_time_block(lambda i: a @ b, 0, reps, device))
    return 2 * n**3 / min(times) / 1e12


def _peak_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bench_model(variant: str | AlexNetConfig, s: BenchSettings) -> dict:
    config = config_of(variant)
    dev, bs = s.device, s.batch_size
    total = max(s.warmup, 1) + s.steps * s.rounds
    n = bs * total
    g = torch.Generator().manual_seed(s.seed)
    # Random images, never zeros: the arithmetic must be the real one.
    x_u8 = torch.randint(0, 256, (n, *IMAGE_SHAPE), generator=g, dtype=torch.uint8).to(dev)
    y = torch.randint(0, 10, (n,), generator=g).to(dev)
    flops = 6 * layer_table(config).macs * bs

    # (a) the plain step
    _reset_peak(dev)
    torch.manual_seed(s.seed)
    plain_model = AlexNet(config).to(dev)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    xf = normalize(x_u8).contiguous()  # already normalised, on the device: no data path cost

    def plain(i):
        sl = slice(i * bs, (i + 1) * bs)
        plain_step(plain_model, plain_opt, xf[sl], y[sl])

    _time_block(plain, 0, s.warmup, dev)
    peak_plain = _peak_mb(dev)

    # (b) the engine, as train runs it
    torch.manual_seed(s.seed)
    model = AlexNet(config).to(dev)
    engine = Engine(model, Recipe(batch_size=bs), dev, s.engine, x_u8, y)
    engine.begin_epoch(0, engine.draw_epoch(g))
    model.train()
    _reset_peak(dev)
    engine.prepare()  # compile, capture and self-check, timed apart as set-up
    _time_block(engine.step, 0, max(s.warmup, 1), dev)

    plain_times, engine_times = [], []
    start = max(s.warmup, 1)
    for r in range(s.rounds):
        first = s.warmup + r * s.steps
        plain_times.append(_time_block(plain, first, s.steps, dev))
        engine_times.append(_time_block(engine.step, start + r * s.steps, s.steps, dev))
    peak_engine = _peak_mb(dev)
    tp, te = statistics.median(plain_times), statistics.median(engine_times)
    # Each round's own ratio: the two sides of a round ran back to back, so a slow patch of
    # the machine hits both; their spread is the measurement's own error bar.
    ratios = [a / b for a, b in zip(plain_times, engine_times)]
    result = {
        "model": config.name,
        "plain_ms": round(tp * 1e3, 3),
        "engine_ms": round(te * 1e3, 3),
        "speedup": round(tp / te, 3),
        "round_speedups": [round(r, 3) for r in ratios],
        "plain_images_per_s": round(bs / tp, 2),
        "engine_images_per_s": round(bs / te, 2),
        "plain_tflops": round(flops / tp / 1e12, 4),
        "engine_tflops": round(flops / te / 1e12, 4),
        "plain_round_ms": [round(t * 1e3, 3) for t in plain_times],
        "engine_round_ms": [round(t * 1e3, 3) for t in engine_times],
        "setup_seconds": round(engine.setup_seconds, 2),
        "peak_memory_mb_plain": peak_plain,
        "peak_memory_mb_engine": peak_engine,
        # the rung of the ladder that ran, the resolved request, each fallback and why
        "engine": engine.used_options.to_dict(),
        "engine_requested": engine.engine_record()["requested"],
        "engine_used": engine.used_options.to_dict(),
        "engine_fallbacks": engine.engine_record()["fallbacks"],
    }
    _reset_peak(dev)
    return result


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    """The machine a figure was measured on, in words."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{_cpu_name()}, {torch.get_num_threads()} threads, {bf16}"


def environment(device: torch.device) -> dict:
    env = {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
        ),
        "cpu_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        **versions(device),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device.type == "cuda":
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    return env


def run_bench(settings: BenchSettings, report=print) -> dict:
    s = settings.resolved()
    set_process_flags(s.device)  # before either side runs: both are measured alike
    out = {
        **environment(s.device),
        "batch_size": s.batch_size,
        "steps": s.steps,
        "rounds": s.rounds,
        "warmup": s.warmup,
        "dataset_on_device_mb": round(CIFAR_TRAIN_BYTES / 1e6, 1),
        "results": [],
    }
    if s.device.type == "cuda":
        out["bf16_matmul_peak_tflops"] = round(matmul_peak_tflops(s.device), 1)
    for variant in s.models:
        r = bench_model(variant, s)
        if "bf16_matmul_peak_tflops" in out:
            r["fraction_of_peak"] = round(r["engine_tflops"] / out["bf16_matmul_peak_tflops"], 4)
        out["results"].append(r)
        report(r)
    return out


def _spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}" if len(values) > 1 else f"{values[0]:.0f}"


def format_row(r: dict) -> str:
    rounds = r["round_speedups"]
    ratio_spread = f" ({min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1 else ""
    peak = f"  {r['fraction_of_peak']:.0%} of bf16 peak" if "fraction_of_peak" in r else ""
    mem = (
        f"  peak mem {r['peak_memory_mb_engine']:.0f} MB"
        if r.get("peak_memory_mb_engine") is not None
        else ""
    )
    return (
        f"{r['model']:<22} plain {r['plain_ms']:9.2f} ms [{_spread(r['plain_round_ms'])}]  "
        f"engine {r['engine_ms']:9.2f} ms [{_spread(r['engine_round_ms'])}]  "
        f"x{r['speedup']:.2f}{ratio_spread}  engine {r['engine_images_per_s']:9.0f} img/s  "
        f"{r['engine_tflops']:.3f} TFLOP/s{peak}{mem}"
    )
