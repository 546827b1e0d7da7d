"""engine_options: what each speed-up resolves to per device, and which are refused where."""

import torch

from alexnet_cifar.engine import options as engine_options
from alexnet_cifar.engine.options import EngineOptions, cpu_has_native_bf16

CPU = torch.device("cpu")


def test_cpu_auto_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(engine_options, "cpu_has_native_bf16", lambda: True)
    fast = EngineOptions().resolve(CPU)
    assert (fast.precision, fast.channels_last, fast.compile, fast.cuda_graphs) == (
        "bf16",
        True,
        False,
        False,
    )
    monkeypatch.setattr(engine_options, "cpu_has_native_bf16", lambda: False)
    plain = EngineOptions().resolve(CPU)
    assert (plain.precision, plain.channels_last) == ("fp32", False)
    # bf16 is accepted on any CPU when asked for; fp32 stays the exact computation.
    assert EngineOptions(precision="bf16").resolve(CPU).precision == "bf16"
    assert EngineOptions(precision="fp32").resolve(CPU).channels_last is False


def test_native_bf16_detection_matches_the_cpu_flags():
    # The Linux kernel's own list of CPU flags, an independent source.
    with open("/proc/cpuinfo") as f:
        flags = f.read().split()
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_engine_options_resolve_per_device():
    cpu = EngineOptions(precision="fp32").resolve(CPU)
    assert (cpu.precision, cpu.compile, cpu.cuda_graphs) == ("fp32", False, False)
    cuda = EngineOptions().resolve(torch.device("cuda"))
    assert (cuda.precision, cuda.compile, cuda.cuda_graphs, cuda.channels_last) == (
        "bf16",
        True,
        True,
        True,
    )
    off = EngineOptions(precision="fp32", compile=False, cuda_graphs=False).resolve(
        torch.device("cuda")
    )
    assert (off.precision, off.compile, off.cuda_graphs) == ("fp32", False, False)
