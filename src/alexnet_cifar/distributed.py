"""Data-parallel training on PyTorch's own machinery: torchrun, a process group, DDP.

``torchrun --nproc-per-node N -m alexnet_cifar train ...`` starts N copies of the command; each
finds its rank in the environment torchrun sets. Every rank holds the whole data set, draws the
same shuffle, shifts, flips and dropout masks, and trains on its own rows of every global
batch; DDP averages the gradients. The global batch and the recipe do not change with N, and
neither does the result, up to float rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import SettingError, param

__all__ = ["DistContext", "init_distributed", "is_device_name", "resolve_device", "shard"]

DEVICES = ("auto", "cpu", "cuda")


def is_device_name(text: str) -> bool:
    """Whether ``text`` names a device: auto, cpu, cuda or cuda:N (any case, spaces around)."""
    t = text.strip().lower()
    return t in DEVICES or (t.startswith("cuda:") and t[5:].isdigit())


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` (CUDA when PyTorch sees a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or "auto").strip().lower()
    if not is_device_name(text):
        raise SettingError(f"unknown {param('device')} {name!r}; use auto, cpu or cuda (or cuda:N)")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError(
            f"{param('device', 'cuda')} was asked for but no CUDA GPU is visible to PyTorch "
            f"(torch {torch.__version__}); use {param('device', 'cpu')} or auto"
        )
    return torch.device(text)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process created the process group (and ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In place across ranks (a no-op in one process); returns ``t``."""
        if self.enabled:
            ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
            dist.all_reduce(t, op=ops[op])
        return t

    def agreed_signal(self, signum: int | None, device: torch.device) -> int | None:
        """The signal any rank has received (one collective), so that all stop together."""
        if not self.enabled:
            return signum
        flag = torch.tensor([signum or 0], device=device if device.type == "cuda" else "cpu")
        return int(self.all_reduce(flag, "max").cpu()) or None

    def close(self, finished: bool = True) -> None:
        """End the process group this process created. After a run that ``finished``, the
        ranks first wait for each other: a rank that tears the group down while another still
        works (rank 0 writing the final files) can abort either."""
        if self.owns_group and dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()


def init_distributed(device_type: str) -> DistContext:
    """The context torchrun describes in the environment; one process when it describes none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        owns = True
    return DistContext(rank, world, local_rank, owns)


def shard(batch: int, world_size: int, rank: int) -> tuple[int, int]:
    """(offset, size) of this rank's rows in a global batch: as even as the batch allows."""
    base, extra = divmod(batch, world_size)
    size = base + (1 if rank < extra else 0)
    return rank * base + min(rank, extra), size
