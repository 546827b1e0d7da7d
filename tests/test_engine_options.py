"""engine_options: what each speed-up resolves to per device, and which are refused where."""

import pytest
import torch

from alexnet_cifar.engine_options import EngineOptions

CPU = torch.device("cpu")


def test_engine_options_resolve_per_device():
    cpu = EngineOptions().resolve(CPU)
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
    with pytest.raises(ValueError, match="bf16"):
        EngineOptions(precision="bf16").resolve(CPU)
    with pytest.raises(ValueError, match="CUDA graphs"):
        EngineOptions(cuda_graphs=True).resolve(CPU)
