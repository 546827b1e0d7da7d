"""How the engine runs a step: each speed-up as an option, and what ``auto`` means per device.

``precision="fp32"`` with no compile and no CUDA graphs is the plain computation; the defaults
are the fast configuration for the device:

- CUDA: bf16 autocast, channels_last, ``torch.compile`` and CUDA graphs;
- a CPU with native bf16 arithmetic (AVX512-BF16 or AMX, detected): bf16 autocast and
  channels_last, several times faster than the fp32 step on the thin variants (measured in
  docs/performance.md);
- any other CPU: fp32, where bf16 would be emulated and slower.

Fused SGD is on everywhere, and CUDA graphs need it: PyTorch's other SGD reads a tensor learning
rate back to the host, which a capture forbids. ``precision="bf16"`` is accepted on any CPU.

The fields of :class:`EngineOptions` are the one list of engine settings: the command-line flags
(``engine_flag_specs``) and the kinds config.json is checked against on resume
(``engine_setting_kinds``) are derived from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import torch

from ..errors import SettingError, param

__all__ = [
    "COMPILE_MODES",
    "PRECISIONS",
    "EngineOptions",
    "compile_backends",
    "cpu_has_native_bf16",
    "engine_flag_specs",
    "engine_setting_kinds",
    "set_process_flags",
]

#: The precisions a step runs in: fp32, the exact computation, and bf16 autocast.
PRECISIONS = ("fp32", "bf16")

#: torch.compile modes, and what each becomes inside our own CUDA graph: a mode that captures
#: graphs itself would nest a second capture inside ours.
COMPILE_MODES = {
    None: None,
    "default": None,
    "reduce-overhead": None,
    "max-autotune": "max-autotune-no-cudagraphs",
    "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs",
}


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


def _opt(default, kind: str, flag: str | None, help: str, choices=None):
    """A field of EngineOptions with what the command line and config.json need of it."""
    meta = {"kind": kind, "flag": flag, "help": help, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class EngineOptions:
    """How a step is run. ``None`` / ``"auto"`` means: the fast choice for the device."""

    precision: str = _opt(
        "auto",
        "str",
        "precision",
        "bf16 autocast, or fp32: the exact, Keras-faithful computation; auto (default): bf16 "
        "on CUDA and on a CPU with native bf16 (AVX512-BF16 or AMX, where it trains several "
        "times faster: docs/performance.md), else fp32 (where bf16 would be emulated and "
        "slower)",
        ["auto", *PRECISIONS],
    )
    channels_last: bool | None = _opt(
        None,
        "bool?",
        "channels-last",
        "channels_last memory format (auto: on CUDA, and on the CPU with bf16)",
    )
    compile: bool | None = _opt(
        None, "bool?", "compile", "torch.compile of the model (auto: on CUDA)"
    )
    compile_mode: str | None = _opt(
        None,
        "str?",
        "compile-mode",
        "torch.compile mode, for a run that compiles (refused without it); inside CUDA graphs "
        "the modes that capture graphs themselves are mapped to their variants without "
        "(reduce-overhead -> default, max-autotune -> max-autotune-no-cudagraphs)",
        [m for m in COMPILE_MODES if m],
    )
    compile_backend: str = _opt(
        "inductor",
        "str",
        "compile-backend",
        "torch.compile backend (default inductor); a name torch does not know is refused with "
        "the list of those it knows",
    )
    cuda_graphs: bool | None = _opt(
        None, "bool?", "cuda-graphs", "one CUDA graph per step (auto: on CUDA, one process)"
    )
    fused_optimizer: bool | None = _opt(
        None, "bool?", "fused-optimizer", "fused SGD kernel of torch (auto: on; graphs need it)"
    )
    strict_engine: bool = _opt(
        False,
        "bool",
        "strict-engine",
        "a fallback of the engine (compile or CUDA graphs failing at set-up) is an error, not a "
        "warning: for benchmarks",
    )

    def resolve(
        self, device: torch.device, world_size: int = 1, graphs_available: bool | None = None
    ) -> EngineOptions:
        """Every auto made concrete for ``device``; a combination that cannot run is refused.
        ``graphs_available``: whether step graphs can be captured (default: on CUDA)."""
        cuda = device.type == "cuda"
        graphs_ok = cuda if graphs_available is None else graphs_available
        numerics = self.numerics(device)
        graphs = self.cuda_graphs
        if graphs is None:  # auto: where they can run, and not against an explicit non-fused SGD
            graphs = graphs_ok and world_size == 1 and self.fused_optimizer is not False
        if graphs and not graphs_ok:
            raise SettingError(f"CUDA graphs need a CUDA device: use {param('cuda_graphs', False)}")
        if graphs and world_size > 1:
            raise SettingError(
                "CUDA graphs are not used with data-parallel training; use "
                f"{param('cuda_graphs', False)}"
            )
        if graphs and self.fused_optimizer is False:
            raise SettingError(
                f"CUDA graphs need the fused SGD kernel (the other one reads the learning rate "
                f"back to the host, which a capture forbids): drop "
                f"{param('fused_optimizer', False)} or add {param('cuda_graphs', False)}"
            )
        if self.compile_mode not in COMPILE_MODES:
            modes = ", ".join(m for m in COMPILE_MODES if m)
            raise SettingError(
                f"{param('compile_mode')} must be one of {modes}, not {self.compile_mode!r}"
            )
        compile_ = self.compile if self.compile is not None else cuda
        _check_compile_settings(self, compile_)
        mode = COMPILE_MODES[self.compile_mode] if graphs else self.compile_mode
        return replace(
            self,
            **numerics,
            compile=compile_,
            compile_mode=mode,
            cuda_graphs=graphs,
            fused_optimizer=True if graphs else (self.fused_optimizer is not False),
        )

    def numerics(self, device: torch.device) -> dict:
        """``{"precision", "channels_last"}`` on ``device``, each auto made concrete: the two
        settings that change the numbers a step computes (the others change only how fast),
        so they are part of a run's identity."""
        cuda = device.type == "cuda"
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if cuda or cpu_has_native_bf16() else "fp32"
        if precision not in PRECISIONS:
            raise SettingError(
                f"{param('precision')} must be auto, {' or '.join(PRECISIONS)}, not {precision!r}"
            )
        channels_last = self.channels_last
        if channels_last is None:
            # On the CPU channels_last pays with bf16 (oneDNN's bf16 kernels are NHWC), not
            # reliably in fp32 (docs/performance.md).
            channels_last = cuda or precision == "bf16"
        return {"precision": precision, "channels_last": bool(channels_last)}

    def compile_kwargs(self) -> dict:
        """torch.compile's arguments. Under our CUDA graphs, inductor is told not to capture
        graphs of its own (a nested capture), whatever its global configuration says."""
        args: dict = {"backend": self.compile_backend, "dynamic": False}
        if self.cuda_graphs and self.compile_backend == "inductor":
            args["options"] = {"triton.cudagraphs": False}
            if self.compile_mode == "max-autotune-no-cudagraphs":
                args["options"]["max_autotune"] = True
        elif self.compile_mode:
            args["mode"] = self.compile_mode
        return args

    def describe(self) -> str:
        """One line: ``bf16, channels_last, compile + CUDA graphs, fused SGD``."""
        parts = [self.precision, "channels_last" if self.channels_last else "contiguous"]
        parts.append(rung_name(bool(self.compile), bool(self.cuda_graphs)))
        parts.append("fused SGD" if self.fused_optimizer else "foreach SGD")
        return ", ".join(str(p) for p in parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EngineOptions:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def compile_backends() -> list[str]:
    """The names torch.compile accepts as a backend here, its debugging ones included."""
    return torch.compiler.list_backends(exclude_tags=())


def _check_compile_settings(options: EngineOptions, compile_: bool) -> None:
    """Refuse a compile backend that does not exist (whether compile runs or not: the name is
    a mistake), and a compile mode for a run that does not compile (it would be recorded and
    never run)."""
    backend = options.compile_backend
    if backend != "inductor" and backend not in compile_backends():  # the default is there
        raise SettingError(
            f"{param('compile_backend')} {backend!r} is not a torch.compile backend here; "
            f"available: {', '.join(torch.compiler.list_backends())} (and, for debugging, "
            "eager, aot_eager and the others of torch.compiler.list_backends(exclude_tags=()))"
        )
    if options.compile_mode is not None and not compile_:
        raise SettingError(
            f"{param('compile_mode')} {options.compile_mode} is a mode of torch.compile, which "
            f"this run does not use (off unless {param('compile', True)} is given, except on "
            f"CUDA): add {param('compile', True)} or leave {param('compile_mode')} out"
        )


def rung_name(compile: bool, graphs: bool) -> str:
    """A rung of the ladder by what it uses: ``compile + CUDA graphs`` ... ``eager``."""
    names = ["compile"] * compile + ["CUDA graphs"] * graphs
    return " + ".join(names) or "eager"


def engine_flag_specs() -> list[dict]:
    """Each engine setting a command-line flag sets: name, flag, kind, help, choices."""
    return [{"name": f.name, **f.metadata} for f in fields(EngineOptions) if f.metadata["flag"]]


def engine_setting_kinds() -> dict[str, str]:
    """The kind of each engine setting, as config.json holds it (files.check_fields)."""
    return {f.name: f.metadata["kind"] for f in fields(EngineOptions)}


def set_process_flags(device: torch.device) -> None:
    """The process-wide settings the engine relies on, set once at the start of a command
    (never by an engine, which would change the steps measured before it existed).

    fp32 means fp32: no TF32 in matmuls or convolutions, through the float32-precision API
    alone where this PyTorch has it (mixing it with the older ``allow_tf32`` flags makes
    ``torch.get_float32_matmul_precision()`` raise); cuDNN picks its fastest kernels.
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv"):
        matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    else:  # an older PyTorch: the older flags, and only them
        matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
