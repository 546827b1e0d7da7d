"""Whether a run's memory can be had: a lower bound of what a training step and an evaluation
batch need, against what the device has, checked before anything is written.

The bound counts only what cannot be avoided: each layer's output for every image of the batch
(kept for the backward pass in training; in evaluation the largest layer's input and output), in
bf16 (2 bytes, the smallest the engine uses), the batch as floats, the weights with their
gradients and momentum, and the data set on the device. A real step needs more, so a run that
is refused cannot fit, and the runs people make (batch 64 or 512 on the whole data set) are far
below any machine's memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..data import CIFAR10
from ..distributed import DistContext
from ..errors import SettingError, param
from ..models import AlexNetConfig
from ..variants import layer_table

__all__ = ["check_data_memory", "check_run_memory", "machine_memory", "step_bytes"]

_ACTIVATION_BYTES = 2  # bf16: the smallest element the engine computes in
_INPUT_BYTES = 4  # the normalised batch, float32
_STATE_COPIES = 3  # weights, gradients, momentum (float32)
GIB = 2**30


def step_bytes(config: AlexNetConfig, rows: int, train: bool) -> int:
    """At least the bytes one step of ``rows`` images needs beyond the weights."""
    sizes = [math.prod(r.output_shape) for r in layer_table(config).rows]
    image = sizes[0] * _INPUT_BYTES
    if train:  # every layer's output is kept for the backward pass
        return rows * (image + sum(sizes[1:]) * _ACTIVATION_BYTES)
    pairs = max(a + b for a, b in zip(sizes, sizes[1:]))  # a layer's input and output at once
    return rows * (image + pairs * _ACTIVATION_BYTES)


def _cgroup_limit() -> int | None:
    """The memory limit of this process's container, where one is set."""
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(f).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def machine_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, how to name them) of the memory ``device`` computes in: the GPU's, or the
    machine's (its container's limit where lower)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return total, f"the {total / GIB:.1f} GiB of {device}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    if limit is not None and limit < total:
        return limit, f"the {limit / GIB:.1f} GiB this container may use"
    return total, f"this machine's {total / GIB:.1f} GiB of memory"


def check_run_memory(
    config: AlexNetConfig,
    batch_size: int,
    eval_batch_size: int,
    n_train: int,
    n_eval: int,
    device: torch.device,
    machine_bytes: int | None = None,
    world_size: int = 1,
) -> None:
    """Refuse a run whose training step or evaluation batch cannot fit in the device's memory
    (``machine_bytes``: that memory, by default the device's), naming what was asked, what it
    needs at least and what there is. Under data parallelism each of ``world_size`` processes
    takes its share of a training batch."""
    if machine_bytes is None:
        machine_bytes, has = machine_memory(device)
    else:
        has = f"the {machine_bytes / GIB:.1f} GiB there are"
    params = layer_table(config).params
    image = config.image_size * config.image_size * config.in_channels  # uint8 on the device
    fixed = params * 4 * _STATE_COPIES + (n_train + n_eval) * image
    for name, asked, n, train in (
        ("batch_size", batch_size, n_train, True),
        ("eval_batch_size", eval_batch_size, n_eval, False),
    ):
        rows = min(asked, n)
        need = fixed + step_bytes(config, math.ceil(rows / world_size) if train else rows, train)
        if need > machine_bytes:
            what = "training step" if train else "evaluation batch"
            raise SettingError(
                f"{param(name, asked)} ({rows:,} images a step) needs at least "
                f"{need / GIB:.1f} GiB for a {what} of {config.name}, more than {has}: choose a "
                f"smaller {param(name)}"
            )


def check_data_memory(
    config: AlexNetConfig,
    batch_size: int,
    eval_batch_size: int,
    data: CIFAR10,
    device: torch.device,
    dist: DistContext,
) -> None:
    """:func:`check_run_memory` for a run on ``data`` (its training, test and held-out images)
    in a process of ``dist``."""
    n_eval = len(data.y_test) + (0 if data.y_val is None else len(data.y_val))
    check_run_memory(
        config,
        batch_size,
        eval_batch_size,
        len(data.y_train),
        n_eval,
        device,
        world_size=dist.world_size,
    )
