"""bench reports what it measured, consistently; no test times anything."""

import json
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from alexnet_cifar.cli import main
from alexnet_cifar.engine.options import EngineOptions, cpu_has_native_bf16
from alexnet_cifar.models import build_model


def _step_flops(model_name: str, batch: int) -> float:
    """The floating-point operations of one training step's forward and backward, counted by
    torch itself (a fact independent of bench's 6 x MACs rule)."""
    model = build_model(model_name)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(batch, 3, 32, 32)).sum().backward()
    return counter.get_total_flops()


@pytest.mark.slow
def test_bench_json_fields_are_consistent(capsys):
    args = ["--models", "alexnet_thinner_4", "--batch-size", "8", "--steps", "1"]
    args += ["--rounds", "2", "--warmup", "0", "--device", "cpu", "--precision", "fp32"]
    started = time.perf_counter()
    code = main(["bench", *args, "--json"])
    elapsed = time.perf_counter() - started
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["torch"] == torch.__version__ and out["batch_size"] == 8
    assert out["dataset_on_device_mb"] == pytest.approx(50_000 * 32 * 32 * 3 / 1e6)  # CIFAR's
    (r,) = out["results"]
    assert r["model"] == "alexnet_thinner_4"
    flops = _step_flops("alexnet_thinner_4", 8)
    measured = 0.0
    for side in ("plain", "engine"):
        ms, rounds = r[f"{side}_ms"], r[f"{side}_round_ms"]
        assert len(rounds) == 2 and all(t > 0 for t in rounds)
        assert min(rounds) <= ms <= max(rounds)  # a middle value of its rounds
        measured += sum(rounds) / 1e3  # one step per round
        # images/s and TFLOP/s are this step time in other units: 8 images, and the FLOPs
        # torch counts for a step of 8
        assert r[f"{side}_images_per_s"] * ms / 1e3 == pytest.approx(8, rel=0.01)  # rounded
        step_tflops = flops / (ms / 1e3) / 1e12
        assert r[f"{side}_tflops"] == pytest.approx(step_tflops, rel=0.02, abs=5e-5)  # 4 places
    assert measured < elapsed  # what it timed happened inside the command
    assert r["speedup"] == pytest.approx(r["plain_ms"] / r["engine_ms"], rel=1e-2)
    # Each round's ratio is the two sides' times of that round.
    rounds = zip(r["plain_round_ms"], r["engine_round_ms"], r["round_speedups"])
    for plain, engine, ratio in rounds:
        assert ratio == pytest.approx(plain / engine, rel=1e-2)
    # The engine ran the configuration asked for, resolved, which bench records as used.
    cpu = torch.device("cpu")
    assert r["engine"] == EngineOptions(precision="fp32").resolve(cpu).to_dict()
    assert r["engine"]["cuda_graphs"] is False
    assert out["cpu_native_bf16"] == cpu_has_native_bf16()



