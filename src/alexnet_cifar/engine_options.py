"""How the engine runs a step: each speed-up as an option, and what ``auto`` means per device.

``precision="fp32"`` with no compile and no CUDA graphs is the plain computation; the defaults
are the fast configuration for the device (bf16 autocast, channels_last, ``torch.compile`` and
CUDA graphs on CUDA; fp32 on the CPU). Fused SGD is on everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from .errors import SettingError, param

__all__ = ["EngineOptions"]


@dataclass(frozen=True)
class EngineOptions:
    """How a step is run. ``None`` / ``"auto"`` means: the fast choice for the device."""

    precision: str = "auto"  # "fp32", "bf16" (autocast on CUDA), "auto": bf16 on CUDA, else fp32
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
            precision = "bf16" if cuda else "fp32"
        if precision not in ("fp32", "bf16"):
            raise SettingError(
                f"{param('precision')} must be auto, fp32 or bf16, not {precision!r}"
            )
        if precision == "bf16" and not cuda:
            raise SettingError(
                f"bf16 autocast is for CUDA; use {param('precision', 'fp32')} on the CPU"
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
            # On 2 CPU cores channels_last gained nothing for any variant (docs/performance.md).
            channels_last = cuda
        return replace(
            self,
            precision=precision,
            channels_last=channels_last,
            compile=self.compile if self.compile is not None else cuda,
            cuda_graphs=graphs,
            fused_optimizer=self.fused_optimizer if self.fused_optimizer is not None else True,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EngineOptions:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})
