"""The weight average (EMA) a recipe may keep: updated inside the step, on the device; what is
evaluated and saved. Each averaged tensor is laid out like its parameter."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["WeightAverage", "like"]


@torch.no_grad()
def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``value`` copied into a new tensor on ``param``'s device, in its dtype and memory layout
    (strides): what CUDA's fused SGD requires of a momentum buffer, and what keeps an average
    laid out like its parameter, whatever layout a checkpoint was saved in."""
    out = torch.empty_like(param, memory_format=torch.preserve_format)
    out.copy_(value)
    return out


class WeightAverage:
    """An exponential moving average of the model's parameters (none when ``decay`` is 0).

    The decay ramps up as (1 + t) / (10 + t) to ``decay``, so a short run's average is not
    stuck near the initial weights.

    A batch normalisation's running statistics (its floating-point buffers) are averaged with
    the parameters, at the same decay, and evaluated and saved with them: the averaged weights
    then meet statistics gathered over about the same stretch of training, where the live ones
    describe only the newest weights. Its integer batch count is not averaged (nothing reads it
    while the normalisation has a momentum).
    """

    def __init__(self, model: torch.nn.Module, decay: float, device: torch.device):
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.params = [*model.parameters(), *buffers]
        self.decay = decay
        self.avg = [like(p, p) for p in self.params] if decay > 0 else None
        self.t = torch.zeros((), dtype=torch.float32, device=device)  # averaging steps

    @torch.no_grad()
    def update(self) -> None:
        """One averaging step, all on the device (part of the captured step)."""
        if self.avg is None:
            return
        self.t.add_(1)
        d = torch.clamp((1 + self.t) / (10 + self.t), max=self.decay)
        # avg = d * avg + (1 - d) * p, computed in place as avg + (1 - d) * (p - avg). The
        # weight stays a tensor on the device (one per average: the only overload that takes
        # tensors), so a captured step replays the ramp; a Python number would be read back.
        w = 1 - d
        torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], [w] * len(self.avg))

    def state(self) -> dict:
        """The average and its step count, for a checkpoint."""
        if self.avg is None:
            return {"ema": None}
        return {"ema": [t.detach() for t in self.avg], "ema_t": self.t.detach()}

    @torch.no_grad()
    def load(self, state: dict | None) -> None:
        """Copy a checkpoint's average into this one's own tensors: their identity (a captured
        step writes them) and their parameters' layout stay, whatever the checkpoint's."""
        ema = (state or {}).get("ema")
        if self.avg is not None and ema is not None:
            if len(ema) != len(self.avg):
                n = len(self.avg)
                raise ValueError(f"the weight average holds {len(ema)} tensors, not {n}")
            for mine, saved in zip(self.avg, ema):
                mine.copy_(saved)
            self.t.copy_(state["ema_t"])

    def snapshot(self) -> tuple | None:
        return ([t.clone() for t in self.avg] if self.avg is not None else None, self.t.clone())

    @torch.no_grad()
    def restore(self, snap: tuple) -> None:
        avg, t = snap
        if avg is not None:
            torch._foreach_copy_(self.avg, avg)
        self.t.copy_(t)

    @contextlib.contextmanager
    def evaluated_weights(self):
        """The weights to evaluate and save: the average when there is one."""
        if self.avg is None:
            yield
            return
        params = [p.detach() for p in self.params]
        backup = [p.clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(params, self.avg)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, backup)
