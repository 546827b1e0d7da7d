"""How the step is prepared: ``torch.compile``, a CUDA graph per batch size, and the ladder that
falls back, one rung at a time, when a rung fails where it runs.

Rungs, fastest first: compile + CUDA graphs, CUDA graphs alone, compile alone, eager. The
ladder starts at the rung the options ask for and climbs only down. A rung is used once its
preparation has run: compile's warm-up steps, the capture, and after a capture a self-check
(one replay on a snapshot must advance the step counter and give the parameters and running
statistics one plain call of the same step gives, within a tolerance set by the precision).
Any failure prints one warning with its root cause (``--strict-engine``: an error instead), is
recorded, and the next rung is tried; the last one, eager, runs one probe step. Every
preparation trains on a snapshot that is restored afterwards, so a run computes as if none had
run.

Graphs come from a backend: :class:`CudaGraphs` on CUDA, :class:`EmulatedGraphs` (a trace by
``make_fx`` that holds the real state tensors by identity, as a capture does) to rehearse the
ladder on the CPU.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import replace

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from ..errors import SettingError, param
from .options import EngineOptions, rung_name
from .step import TrainStep

__all__ = [
    "FAIL_RUNG_ENV",
    "CudaGraphs",
    "EmulatedGraphs",
    "EngineFallbackError",
    "SelfCheckError",
    "StepLadder",
    "restore",
    "root_cause",
    "snapshot",
    "rungs_made_to_fail",
]

#: Relative tolerance of the self-check on the parameters after one step, by precision.
SELF_CHECK_RTOL = {"fp32": 1e-5, "bf16": 1e-2}


class EngineFallbackError(SettingError):
    """A rung of the engine failed and ``strict_engine`` forbids falling back."""


class SelfCheckError(RuntimeError):
    """A captured step does not compute what the same step computes without capture."""


def root_cause(e: BaseException) -> str:
    """The first exception of ``e``'s chain (what went wrong first), as one line."""
    seen = {id(e)}
    while True:
        nxt = e.__cause__ or e.__context__
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        e = nxt
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


#: A test hook: the environment variable naming the rungs of the ladder that fail on purpose
#: (comma-separated: ``compile + CUDA graphs``, ``CUDA graphs``, ``compile``; spaces, case, ``-``
#: and ``_`` do not matter), so that a fallback, its warning, its record and
#: ``--strict-engine`` can be watched where nothing really fails.
FAIL_RUNG_ENV = "ALEXNET_CIFAR_FAIL_RUNG"
#: The rungs it can name (eager, the last rung, cannot fail and fall back).
_FAILABLE = {rung_name(c, g): (c, g) for c, g in [(True, True), (False, True), (True, False)]}


def _rung_key(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch not in " -_")


def rungs_made_to_fail() -> set[tuple[bool, bool]]:
    """The rungs (compile, graphs) that :data:`FAIL_RUNG_ENV` names; refuses a name that is
    no rung it can fail."""
    text = os.environ.get(FAIL_RUNG_ENV, "").strip()
    if not text:
        return set()
    keys = {_rung_key(name): rung for name, rung in _FAILABLE.items()}
    wanted = [_rung_key(part) for part in text.split(",")]
    unknown = [w for w in wanted if w not in keys]
    if unknown:
        raise SettingError(
            f"{FAIL_RUNG_ENV}={text!r} names no rung that can fail; name one or more of: "
            + ", ".join(_FAILABLE)
        )
    return {keys[w] for w in wanted}


def _forced_failure(forced: set, compiled: bool, graphed: bool) -> None:
    if (compiled, graphed) in forced:
        raise RuntimeError(
            f"made to fail by {FAIL_RUNG_ENV}={os.environ.get(FAIL_RUNG_ENV, '')!r} (a test hook)"
        )


class CudaGraphs:
    """Captures a step as a CUDA graph on the engine's device (its own stream and memory
    pool), after warm-up steps on that stream, as PyTorch's capture rules ask."""

    def __init__(self, device: torch.device):
        self.device = device
        self._pool = None

    def capture(self, fn: Callable[[], None], before: Callable[[], None]) -> Callable[[], None]:
        # The device is set for the whole capture: a stream made while another device is
        # current would capture nothing of this device's work (an empty graph).
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    before()
                    fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            before()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=side):
                fn()
            self._pool = graph.pool()
        return graph.replay

    def recover(self) -> None:
        """After a failure: wait for the device and make the default stream current again."""
        with torch.cuda.device(self.device):
            try:
                torch.cuda.synchronize(self.device)
            except RuntimeError:  # an aborted capture can leave an error to collect
                pass
            torch.cuda.set_stream(torch.cuda.default_stream(self.device))

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)


class EmulatedGraphs:
    """A CPU stand-in for CUDA graphs: the step traced once by ``make_fx``, which records the
    real state tensors by identity as a capture records their addresses, and a replay that
    reruns the trace. A host read inside the step bakes its value into the trace, as a capture
    would (or fails). ``fail`` makes every capture raise, to rehearse the fallbacks."""

    def __init__(self, fail: BaseException | None = None):
        self.fail = fail

    def capture(self, fn: Callable[[], None], before: Callable[[], None]) -> Callable[[], None]:
        if self.fail is not None:
            raise self.fail
        before()
        traced = make_fx(fn)()  # runs the step once, for real, as CUDA's warm-up does

        def replay() -> None:
            with torch.no_grad():  # the trace holds the backward as plain operations
                traced()

        return replay

    def recover(self) -> None:
        pass

    def sync(self) -> None:
        pass


def _trained_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """What a step changes in the model: its parameters and its floating-point buffers (a
    batch normalisation's running statistics)."""
    params = [p.detach() for p in model.parameters()]
    return params + [b for b in model.buffers() if b.is_floating_point()]


class StepLadder:
    """Prepares the step per batch size on the best rung that works, and runs it."""

    def __init__(
        self,
        step: TrainStep,
        options: EngineOptions,
        graphs: CudaGraphs | EmulatedGraphs | None,
        warn: Callable[[str], None] | None = None,
    ):
        self.step = step
        self.requested = options
        self.graphs = graphs
        self.warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
        want_c, want_g = bool(options.compile), bool(options.cuda_graphs)
        all_rungs = [(True, True), (False, True), (True, False), (False, False)]
        self.rungs = [(c, g) for c, g in all_rungs if (c <= want_c and g <= want_g)]
        self.rung = 0
        self.fallbacks: list[dict] = []
        self.prepared: dict[int, Callable[[], None] | None] = {}
        self.setup_seconds = 0.0  # compile, warm-up, capture and checks: kept out of epochs
        self._compiled = None
        self.forced = rungs_made_to_fail()  # the test hook: rungs that fail on purpose

    @property
    def used(self) -> EngineOptions:
        """The options of the rung in use."""
        c, g = self.rungs[self.rung]
        return replace(self.requested, compile=c, cuda_graphs=g)

    def record(self) -> dict:
        """What was asked, what is used and each fallback with its reason."""
        return {
            "requested": self.requested.to_dict(),
            "used": self.used.to_dict(),
            "fallbacks": list(self.fallbacks),
        }

    def _forward(self, compiled: bool):
        if not compiled:
            return self.step.base_forward
        if self._compiled is None:
            self._compiled = torch.compile(
                self.step.base_forward, **self.requested.compile_kwargs()
            )
        return self._compiled

    def run(self, b: int) -> None:
        """One step of ``b`` rows, prepared first if this batch size is new."""
        if b not in self.prepared:
            self.prepare(b)
        replay = self.prepared[b]
        if replay is not None:
            replay()
        else:
            self.step.eager(b)

    def prepare(self, b: int) -> None:
        """Find the best rung for batch size ``b`` (from the current one down)."""
        t0 = time.perf_counter()
        try:
            while True:
                compiled, graphed = self.rungs[self.rung]
                if not (compiled or graphed or self.fallbacks):
                    self.step.forward = self.step.base_forward
                    self.prepared[b] = None  # eager as asked: nothing to prepare
                    return
                try:  # every failure of a rung's preparation, its compile's set-up included
                    _forced_failure(self.forced, compiled, graphed)
                    self.step.forward = self._forward(compiled)
                    self.prepared[b] = self._attempt(b, compiled, graphed)
                    return
                except Exception as e:  # a rung that fails must not cost the run
                    self._fall(e)
        finally:
            self.setup_seconds += time.perf_counter() - t0

    def _attempt(self, b: int, compiled: bool, graphed: bool):
        """Prepare one rung on a snapshot, restored whatever happens."""
        step = self.step
        snap = snapshot(step)
        try:
            if graphed:
                replay = self.graphs.capture(lambda: step.run(b), self._before)
                self._self_check(replay, b)
                return replay
            for _ in range(2 if compiled else 1):  # compile's warm-up, or eager's probe step
                self._before()
                step.run(b)
            return None
        except BaseException:
            if self.graphs is not None:
                self.graphs.recover()
            raise
        finally:
            restore(step, snap)
            step.optimizer.zero_grad(set_to_none=True)
            if self.graphs is not None:
                self.graphs.sync()

    def _before(self) -> None:
        """Before a preparation step: the epoch's first batch (always in range), new grads."""
        self.step.step_t.zero_()
        self.step.optimizer.zero_grad(set_to_none=True)

    def _self_check(self, replay: Callable[[], None], b: int) -> None:
        """One replay and one plain call of the same step, from the same snapshot, must agree
        and must each advance the step counter by one."""
        step = self.step
        snap = snapshot(step)
        try:
            step.step_t.zero_()  # the epoch's first batch: in range for every batch size
            start = 0
            replay()
            self.graphs.sync()
            moved = int(step.step_t) - start
            replayed = [t.float().clone() for t in _trained_tensors(step.model)]
            restore(step, snap)
            step.eager(b)
            self.graphs.sync()
            plain = [t.float() for t in _trained_tensors(step.model)]
            num = sum(float((a - c).pow(2).sum()) for a, c in zip(replayed, plain))
            den = sum(float(c.pow(2).sum()) for c in plain)
        finally:
            restore(step, snap)
        if moved != 1:
            raise SelfCheckError(
                f"a replay moved the step counter by {moved}, not 1: the graph is empty or stale"
            )
        rel = (num / max(den, 1e-30)) ** 0.5
        tol = SELF_CHECK_RTOL[self.requested.precision]
        if not rel <= tol:
            raise SelfCheckError(
                f"a replay differs from the same step without graph by {rel:.1e} (relative; "
                f"tolerance {tol:.0e} for {self.requested.precision})"
            )

    def _fall(self, e: Exception) -> None:
        """Record the failure of the current rung and step down, or raise."""
        compiled, graphed = self.rungs[self.rung]
        here, cause = rung_name(compiled, graphed), root_cause(e)
        if self.rung + 1 >= len(self.rungs):
            raise e  # eager itself fails: a real error, with its traceback
        there = rung_name(*self.rungs[self.rung + 1])
        if self.requested.strict_engine:
            raise EngineFallbackError(
                f"the engine's {here} failed ({cause}); {param('strict_engine')} forbids "
                f"falling back to {there}"
            ) from e
        self.fallbacks.append({"from": here, "to": there, "reason": cause})
        self.warn(f"warning: {here} failed ({cause}); falling back to {there}")
        self.rung += 1
        self.prepared.clear()  # every batch size moves down together


# ---------------------------------------------------------------------- snapshots


def snapshot(step: TrainStep) -> dict:
    """Everything a step changes (weights, a batch normalisation's running statistics,
    momentum, average, counters, random states): what the ladder restores after each
    preparation, so a run computes as if none had run."""
    params = list(step.model.parameters())
    cuda = step.device.type == "cuda"
    return {
        "params": [p.detach().clone() for p in params],
        "buffers": [b.clone() for b in step.model.buffers()],
        "bufs": [step.optimizer.state[p]["momentum_buffer"].clone() for p in params],
        "ema": step.ema.snapshot(),
        "acc": [t.clone() for t in step.accumulators()],
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(step.device) if cuda else None,
    }


@torch.no_grad()
def restore(step: TrainStep, snap: dict) -> None:
    """Put back what :func:`snapshot` took, into the step's own tensors."""
    for p, v in zip(step.model.parameters(), snap["params"]):
        p.copy_(v)
    for b, v in zip(step.model.buffers(), snap["buffers"]):
        b.copy_(v)
    for p, v in zip(step.model.parameters(), snap["bufs"]):
        step.optimizer.state[p]["momentum_buffer"].copy_(v)
    step.ema.restore(snap["ema"])
    for t, v in zip(step.accumulators(), snap["acc"]):
        t.copy_(v)
    torch.set_rng_state(snap["rng_cpu"])
    if snap["rng_cuda"] is not None:
        torch.cuda.set_rng_state(snap["rng_cuda"], step.device)
