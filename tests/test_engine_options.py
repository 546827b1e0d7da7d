"""engine_options: what each speed-up resolves to per device, and which are refused where."""

import pytest
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


def test_an_unknown_compile_backend_is_one_line_naming_the_available_ones():
    from alexnet_cifar.errors import SettingError

    with pytest.raises(SettingError, match="compile_backend") as refused:
        EngineOptions(compile=True, compile_backend="nosuch").resolve(CPU)
    text = str(refused.value)
    assert "'nosuch'" in text and "inductor" in text and "\n" not in text
    # also where compile is off: the name is wrong whatever runs
    with pytest.raises(SettingError, match="nosuch"):
        EngineOptions(compile_backend="nosuch").resolve(CPU)
    for name in ("inductor", "eager", "aot_eager"):
        assert EngineOptions(compile=True, compile_backend=name).resolve(CPU).compile is True


def test_a_compile_mode_without_compile_is_refused_not_ignored():
    from alexnet_cifar.errors import SettingError

    # compile is off on a CPU unless asked for: a mode would be recorded and never run
    with pytest.raises(SettingError, match="compile_mode.*compile") as refused:
        EngineOptions(compile_mode="reduce-overhead").resolve(CPU)
    assert "\n" not in str(refused.value)
    with pytest.raises(SettingError, match="compile_mode"):
        EngineOptions(compile=False, compile_mode="default").resolve(torch.device("cuda"))
    asked = EngineOptions(compile=True, compile_mode="reduce-overhead").resolve(CPU)
    assert asked.compile is True and asked.compile_mode == "reduce-overhead"
    assert EngineOptions(compile_mode="max-autotune").resolve(torch.device("cuda")).compile
