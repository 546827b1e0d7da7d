"""How the engine runs a step: each speed-up as an option, and what ``auto`` means per device.

``precision="fp32"`` with no compile and no CUDA graphs is the plain computation; the defaults
are the fast configuration for the device:

- CUDA: bf16 autocast, channels_last, ``torch.compile`` and CUDA graphs;
- a CPU with native bf16 arithmetic (AVX512-BF16 or AMX, detected): bf16 autocast and
  channels_last, which measured 2.2-2.9x the fp32 step on the thin variants
  (docs/performance.md);
- any other CPU: fp32, where bf16 would be emulated and slower.

Fused SGD is on everywhere. ``precision="bf16"`` is accepted on any CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from .errors import SettingError, param

__all__ = ["EngineOptions", "cpu_has_native_bf16"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16), as
    PyTorch's own CPU feature detection reports it."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            c = caps()
            return bool(c.get("avx512_bf16") or c.get("amx_bf16"))
        except Exception:  # an unknown CPU: fall through to the older probes
            pass
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


@dataclass(frozen=True)
class EngineOptions:
    """How a step is run. ``None`` / ``"auto"`` means: the fast choice for the device."""

    # "fp32", "bf16" (autocast), "auto": bf16 on CUDA and on a CPU with native bf16, else fp32
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool | None = None  # torch.compile the model (auto: on CUDA)
    compile_mode: str | None = None  # torch.compile mode (None: default)
    compile_backend: str = "inductor"
    cuda_graphs: bool | None = None  # one CUDA graph per step (auto: on CUDA)
    fused_optimizer: bool | None = None  # torch's fused SGD kernel (auto: on)

    def resolve(self, device: torch.device, world_size: int = 1) -> EngineOptions:
        cuda = device.type == "cuda"
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if cuda or cpu_has_native_bf16() else "fp32"
        if precision not in ("fp32", "bf16"):
            raise SettingError(
                f"{param('precision')} must be auto, fp32 or bf16, not {precision!r}"
            )
        graphs = self.cuda_graphs if self.cuda_graphs is not None else cuda and world_size == 1
        if graphs and not cuda:
            raise SettingError(f"CUDA graphs need a CUDA device: use {param('cuda_graphs', False)}")
        if graphs and world_size > 1:
            raise SettingError(
                "CUDA graphs are not used with data-parallel training; use "
                f"{param('cuda_graphs', False)}"
            )
        channels_last = self.channels_last
        if channels_last is None:
            # On the CPU channels_last pays with bf16 (oneDNN's bf16 kernels are NHWC), not
            # reliably in fp32 (docs/performance.md).
            channels_last = cuda or precision == "bf16"
        return replace(
            self,
            precision=precision,
            channels_last=channels_last,
            compile=self.compile if self.compile is not None else cuda,
            cuda_graphs=graphs,
            fused_optimizer=self.fused_optimizer if self.fused_optimizer is not None else True,
        )

    def describe(self) -> str:
        """A resolved configuration in words, e.g. "bf16 autocast, channels_last, fused SGD"."""
        parts = ["bf16 autocast" if self.precision == "bf16" else "fp32"]
        parts.append("channels_last" if self.channels_last else "NCHW")
        if self.compile:
            parts.append(f"torch.compile ({self.compile_mode or 'default'})")
        if self.cuda_graphs:
            parts.append("CUDA graphs")
        parts.append("fused SGD" if self.fused_optimizer else "foreach SGD")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EngineOptions:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})
