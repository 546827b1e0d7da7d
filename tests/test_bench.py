"""bench reports what it measured, consistently; no test times anything."""

import json

import pytest
import torch

from alexnet_cifar.cli import main
from alexnet_cifar.engine_options import EngineOptions, cpu_has_native_bf16
from alexnet_cifar.models import layer_table


def test_bench_json_fields_are_consistent(capsys):
    code = main(
        [
            "bench",
            "--models",
            "alexnet_thinner_4",
            "--batch-size",
            "8",
            "--steps",
            "1",
            "--rounds",
            "2",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["torch"] and out["batch_size"] == 8
    assert out["dataset_on_device_mb"] == pytest.approx(153.6)
    (r,) = out["results"]
    assert r["model"] == "alexnet_thinner_4"
    for side in ("plain", "engine"):
        ms = r[f"{side}_ms"]
        assert ms > 0 and len(r[f"{side}_round_ms"]) == 2
        assert r[f"{side}_images_per_s"] == pytest.approx(8 / (ms / 1e3), rel=1e-3, abs=0.006)
        flops = 6 * layer_table("alexnet_thinner_4").macs * 8
        assert r[f"{side}_tflops"] == pytest.approx(flops / (ms / 1e3) / 1e12, rel=1e-2, abs=1e-4)
    assert r["speedup"] == pytest.approx(r["plain_ms"] / r["engine_ms"], rel=1e-2)
    # Each round's ratio is the two sides' times of that round.
    rounds = zip(r["plain_round_ms"], r["engine_round_ms"], r["round_speedups"])
    for plain, engine, ratio in rounds:
        assert ratio == pytest.approx(plain / engine, rel=1e-2)
    # The engine ran the device's auto configuration, which bench records as it was used.
    cpu = torch.device("cpu")
    assert r["engine"] == EngineOptions().resolve(cpu).to_dict()
    assert r["engine"]["cuda_graphs"] is False
    assert out["cpu_native_bf16"] == cpu_has_native_bf16()


def test_bench_refuses_unknown_models_and_gpu_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--models", "alexnet,resnet", "--device", "cpu"])
    assert e.value.code == 2 and "unknown model 'resnet'" in capsys.readouterr().err
    assert main(["bench", "--cuda-graphs", "--device", "cpu"]) == 2
    assert "CUDA graphs" in capsys.readouterr().err
