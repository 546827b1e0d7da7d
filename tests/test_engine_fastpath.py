"""The CUDA fast path, rehearsed on the CPU: its option rules, the layout of a resumed state,
the fallback ladder (each rung forced), graph emulation, host reads, the process-wide flags,
and the progress bar of a resumed epoch. The sections name the risks of the CUDA path they cover:
1 fused SGD and a tensor learning rate, 2 the layout of a resumed state, 5 the process-wide
flags, 6 a capture nested in ours, 7 the cost of checkpoints; (a)-(f) the rehearsals on the CPU."""

from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from alexnet_cifar.engine import capture as engine_capture
from alexnet_cifar.engine.capture import EmulatedGraphs, EngineFallbackError, root_cause
from alexnet_cifar.engine.core import Engine, EngineOptions, EpochSums
from alexnet_cifar.engine.options import (
    engine_flag_specs,
    engine_setting_kinds,
    set_process_flags,
)
from alexnet_cifar.errors import SettingError
from alexnet_cifar.models import AlexNet
from alexnet_cifar.recipe import Recipe, get_recipe

from .helpers import TINY

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
N, BS = 20, 8  # two full batches and a short one of 4


def _data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(64, 192, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
    return x, torch.randint(0, 10, (n,), generator=g)


def _engine(options, graphs=None, recipe=None, warn=None, dropout=0.5, seed=0, bn=False):
    torch.manual_seed(seed)
    model = AlexNet(replace(TINY, dropout=dropout, batch_norm=bn))
    recipe = recipe or get_recipe("fast", epochs=2, batch_size=BS)  # EMA, warm-up, decay
    x, y = _data()
    return Engine(model, recipe, CPU, options, x, y, graphs=graphs, warn=warn or (lambda m: None))


def _train(engine, epochs=2, seed=1):
    """``epochs`` epochs with the per-step lr schedule; the final weights and average."""
    gen = torch.Generator().manual_seed(seed)
    engine.prepare()
    for epoch in range(epochs):
        engine.begin_epoch(epoch, engine.draw_epoch(gen))
        engine.model.train()
        for s in range(engine.steps_per_epoch):
            engine.step(s)
    sums, _ = engine.read_metrics()
    state = [p.detach().clone() for p in engine.model.parameters()]
    state += [b.clone() for b in engine.model.buffers()]  # running statistics, with batch_norm
    return state + [t.clone() for t in (engine.ema or [])], sums


FP32 = EngineOptions(precision="fp32", channels_last=False)


# ---------------------------------------------------------------------- risk 1: fused SGD


def test_graphs_imply_fused_sgd_and_refuse_the_other():
    assert EngineOptions().resolve(CUDA).fused_optimizer is True
    # auto graphs give way to an explicit non-fused SGD; explicit graphs refuse it
    assert EngineOptions(fused_optimizer=False).resolve(CUDA).cuda_graphs is False
    with pytest.raises(SettingError, match="fused SGD"):
        EngineOptions(cuda_graphs=True, fused_optimizer=False).resolve(CUDA)
    plain = EngineOptions(cuda_graphs=False, fused_optimizer=False).resolve(CUDA)
    assert plain.fused_optimizer is False


class HostReads(TorchDispatchMode):
    """Fails on any operation that reads a device value back to the host."""

    FORBIDDEN = ("_local_scalar_dense", "nonzero", "is_nonzero", "equal")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in self.FORBIDDEN:
            raise AssertionError(f"host read in the step: {func}")
        return func(*args, **(kwargs or {}))


def _graphed_step_under(mode, options, recipe=None, dropout=0.5):
    engine = _engine(options, EmulatedGraphs(), recipe=recipe, dropout=dropout)
    engine.begin_epoch(0, engine.draw_epoch(torch.Generator().manual_seed(1)))
    engine.set_lr(0.02)  # a tensor lr that is not the first one
    with mode:
        engine.core.eager(BS)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("recipe", ["seed", "fast"])
def test_captured_step_reads_nothing_back(precision, channels_last, recipe):
    """(b): every configuration that would be captured (graphs on, so fused SGD)."""
    opts = EngineOptions(precision=precision, channels_last=channels_last, cuda_graphs=True)
    r = get_recipe(recipe, epochs=2, batch_size=BS)
    _graphed_step_under(HostReads(), opts, r)


def test_non_fused_sgd_with_a_tensor_lr_reads_it_back():
    """Why risk 1 is one: the other SGD would make every capture fail."""
    torch.manual_seed(0)
    model = AlexNet(TINY)
    opt = torch.optim.SGD(
        model.parameters(), lr=torch.tensor(0.01), momentum=0.9, nesterov=True, foreach=True
    )
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(AssertionError, match="_local_scalar_dense"), HostReads():
        opt.step()


# ---------------------------------------------------------------------- risk 6: nested capture


def test_compile_modes_that_capture_are_mapped_inside_our_graphs():
    ro = EngineOptions(compile_mode="reduce-overhead").resolve(CUDA)
    assert ro.compile_mode is None
    assert ro.compile_kwargs()["options"] == {"triton.cudagraphs": False}
    assert "mode" not in ro.compile_kwargs()
    ma = EngineOptions(compile_mode="max-autotune").resolve(CUDA)
    assert ma.compile_mode == "max-autotune-no-cudagraphs"
    assert ma.compile_kwargs()["options"] == {"triton.cudagraphs": False, "max_autotune": True}
    # without our graphs a mode is the user's to choose
    own = EngineOptions(compile_mode="reduce-overhead", cuda_graphs=False).resolve(CUDA)
    assert own.compile_kwargs()["mode"] == "reduce-overhead"
    with pytest.raises(SettingError, match="compile_mode"):
        EngineOptions(compile_mode="fastest").resolve(CUDA)


def test_every_engine_setting_is_a_flag_and_a_resumable_field(tmp_path):
    """Each field of EngineOptions with a flag is set by its flag on the command line, and a
    run's config.json holding every field is read back on resume."""
    import argparse
    import json

    from alexnet_cifar.cli.flags import add_engine_flags, engine_options
    from alexnet_cifar.training.resume import run_settings

    p = argparse.ArgumentParser()
    add_engine_flags(p)
    for spec in engine_flag_specs():
        default = getattr(EngineOptions(), spec["name"])
        if spec["kind"] == "bool":
            args, want = [f"--{spec['flag']}"], True
        elif spec["kind"] == "bool?":
            args, want = [f"--no-{spec['flag']}"], False
        else:  # a choice, or a free name (the compile backend)
            want = next(c for c in spec["choices"] or ["a-backend"] if c != default)
            args = [f"--{spec['flag']}", want]
        assert getattr(engine_options(p.parse_args(args)), spec["name"]) == want, spec
    requested = EngineOptions(compile=True, compile_mode="max-autotune").to_dict()
    (tmp_path / "config.json").write_text(json.dumps({"engine_requested": requested}))
    assert run_settings(tmp_path)["engine_requested"] == requested
    assert set(requested) == set(engine_setting_kinds())


# ---------------------------------------------------------------------- risk 2 / (f): layout


@pytest.mark.parametrize("first, then", [(False, True), (True, False)])
def test_resume_across_layouts_lays_state_out_like_parameters(first, then):
    a = _engine(replace(FP32, channels_last=first))
    _train(a, epochs=1)
    state = a.state_dict()
    b = _engine(replace(FP32, channels_last=then), seed=7)
    b.load_state_dict(state)
    fmt = torch.channels_last if then else torch.contiguous_format
    conv = [p for p in b.model.parameters() if p.dim() == 4]
    assert conv and all(p.is_contiguous(memory_format=fmt) for p in conv)
    for p, q, avg in zip(b.model.parameters(), a.model.parameters(), b.ema):
        buf = b.optimizer.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride() and avg.stride() == p.stride()
        assert torch.equal(buf, a.optimizer.state[q]["momentum_buffer"])
    for avg, saved in zip(b.ema, a.ema):
        assert torch.equal(avg, saved)


# ---------------------------------------------------------------------- (a): graph emulation


@pytest.mark.slow
@pytest.mark.parametrize("bn", [False, True])
def test_emulated_graph_replays_equal_eager_steps(bn):
    """Two epochs (short last batch, per-step lr, EMA, dropout): exact with the tensor lr;
    with batch_norm, its running statistics and their average too."""
    eager, eager_sums = _train(_engine(FP32, bn=bn))
    graphed_engine = _engine(replace(FP32, cuda_graphs=True), EmulatedGraphs(), bn=bn)
    graphed, graphed_sums = _train(graphed_engine)
    assert graphed_engine.used_options.cuda_graphs is True
    assert set(graphed_engine.ladder.prepared) == {BS, N % BS}
    assert all(graphed_engine.ladder.prepared.values())
    assert eager_sums.loss_sum == graphed_sums.loss_sum
    for a, b in zip(eager, graphed):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_emulated_graph_bakes_in_a_float_learning_rate():
    """The reason for the tensor lr: a float is read once, at capture, and never again."""
    engine = _engine(replace(FP32, cuda_graphs=True), EmulatedGraphs())
    for g in engine.optimizer.param_groups:
        g["lr"] = float(g["lr"])  # what the optimiser would hold without the tensor lr
    graphed, _ = _train(engine)
    eager, _ = _train(_engine(FP32))
    drift = max(float((a - b).abs().max()) for a, b in zip(eager, graphed))
    assert drift > 1e-6


# ---------------------------------------------------------------------- (e): the ladder


def _fail_compile(gm, example_inputs):
    raise RuntimeError("no compiler here")


@pytest.fixture
def failing_backend():
    torch._dynamo.reset()
    torch._dynamo.register_backend(_fail_compile, "alexnet_cifar_test_failing")
    yield "alexnet_cifar_test_failing"
    torch._dynamo.reset()


def _rungs(engine):
    return [(f["from"], f["to"]) for f in engine.engine_record()["fallbacks"]]


@pytest.mark.slow
def test_each_rung_of_the_ladder_trains_like_the_plain_step(failing_backend):
    plain, _ = _train(_engine(FP32, dropout=0.0))
    said = []
    cases = [
        # (compile backend, graphs backend): the rung that is used, the fallbacks on the way
        ("eager", EmulatedGraphs(RuntimeError("capture refused")), (True, False), 2),
        (failing_backend, EmulatedGraphs(), (False, True), 1),
        (failing_backend, EmulatedGraphs(RuntimeError("capture refused")), (False, False), 3),
    ]
    for backend, graphs, used, falls in cases:
        opts = replace(FP32, compile=True, compile_backend=backend, cuda_graphs=True)
        engine = _engine(opts, graphs, warn=said.append, dropout=0.0)
        state, _ = _train(engine)
        assert (engine.used_options.compile, engine.used_options.cuda_graphs) == used
        assert len(engine.engine_record()["fallbacks"]) == falls
        for a, b in zip(plain, state):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(line.startswith("warning: ") and "\n" not in line for line in said)
    assert any("RuntimeError: capture refused" in line for line in said)
    assert any("no compiler here" in line for line in said)


def test_a_fallback_warns_once_with_its_root_cause_and_records_it():
    said = []
    graphs = EmulatedGraphs(RuntimeError("outer"))
    try:
        try:
            raise OSError("the first thing that went wrong")
        except OSError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as e:
        graphs.fail = e
    engine = _engine(replace(FP32, cuda_graphs=True), graphs, warn=said.append, dropout=0.0)
    plain, _ = _train(_engine(FP32, dropout=0.0))
    state, _ = _train(engine)
    assert said == [
        "warning: CUDA graphs failed (OSError: the first thing that went wrong); falling back "
        "to eager"
    ]
    assert _rungs(engine) == [("CUDA graphs", "eager")]
    assert engine.used_options.cuda_graphs is False
    assert engine.options.cuda_graphs is True  # the resolved request stays as asked
    for a, b in zip(plain, state):
        assert torch.equal(a, b)


def test_strict_engine_turns_a_fallback_into_an_error():
    opts = replace(FP32, cuda_graphs=True, strict_engine=True)
    engine = _engine(opts, EmulatedGraphs(RuntimeError("capture refused")))
    with pytest.raises(EngineFallbackError, match="strict_engine.*eager"):
        engine.prepare()


def test_a_failing_eager_probe_is_an_error_not_a_fallback(monkeypatch):
    """After a fallback the eager rung runs one probe step; when even that fails, the run
    stops with the real error."""
    engine = _engine(replace(FP32, cuda_graphs=True), EmulatedGraphs(RuntimeError("capture")))

    def broken(b):
        raise ValueError("the step itself is broken")

    monkeypatch.setattr(engine.core, "run", broken)
    with pytest.raises(ValueError, match="itself is broken"):
        engine.prepare()


def test_an_empty_graph_fails_the_self_check():
    """Risk 4: a replay that does nothing (a capture on the wrong device) is caught."""

    class EmptyGraphs(EmulatedGraphs):
        def capture(self, fn, before):
            return lambda: None

    said = []
    engine = _engine(replace(FP32, cuda_graphs=True), EmptyGraphs(), warn=said.append)
    engine.prepare()
    assert engine.used_options.cuda_graphs is False
    assert "step counter by 0" in said[0]


def test_a_wrong_graph_fails_the_self_check():
    class WrongGraphs(EmulatedGraphs):
        def capture(self, fn, before):
            replay = super().capture(fn, before)

            def wrong():
                replay()
                with torch.no_grad():
                    next(engine.model.parameters()).mul_(1.001)

            return wrong

    said = []
    engine = _engine(replace(FP32, cuda_graphs=True), WrongGraphs(), warn=said.append)
    engine.prepare()
    assert engine.used_options.cuda_graphs is False and "differs" in said[0]


def test_cuda_capture_uses_the_engines_device_and_its_own_stream(monkeypatch):
    """Risk 4: the capture stream is made on the engine's device (cuda:1 here), the device is
    current during the capture, and torch.cuda.graph is given that stream."""
    calls = []

    class Ctx:
        def __init__(self, *a, **k):
            calls.append((type(self).__name__, a, k))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class device(Ctx):
        pass

    class stream(Ctx):
        pass

    class graph(Ctx):
        pass

    class Stream:
        def __init__(self, dev=None):
            calls.append(("Stream", (dev,), {}))

        def wait_stream(self, other):
            pass

    class CUDAGraph:
        def pool(self):
            return "pool"

        def replay(self):
            pass

    for name, value in {
        "device": device,
        "stream": stream,
        "graph": graph,
        "Stream": Stream,
        "CUDAGraph": CUDAGraph,
        "current_stream": lambda dev=None: Stream(dev),
    }.items():
        monkeypatch.setattr(torch.cuda, name, value)
    dev1 = torch.device("cuda", 1)
    engine_capture.CudaGraphs(dev1).capture(lambda: None, lambda: None)
    assert calls[0] == ("device", (dev1,), {})
    made = [c for c in calls if c[0] == "Stream"]
    assert made and all(c[1] == (dev1,) for c in made)
    g = [c for c in calls if c[0] == "graph"][0]
    assert g[2].get("stream") is not None


def test_root_cause_is_the_first_exception_of_the_chain():
    try:
        try:
            raise KeyError("first")
        except KeyError:  # an implicit chain, as a failing compile leaves it
            raise RuntimeError("second\nmore lines")  # noqa: B904
    except RuntimeError as e:
        assert root_cause(e) == "KeyError: 'first'"


# ---------------------------------------------------------------------- risk 5: process flags


def test_process_flags_are_set_once_with_one_api():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv = cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision, cudnn.benchmark)
    # no engine sets them: building one, preparing and running its steps leaves them alone
    _train(_engine(FP32), 1)
    assert (matmul.fp32_precision, conv.fp32_precision, cudnn.benchmark) == before
    try:
        set_process_flags(CPU)
        assert (matmul.fp32_precision, conv.fp32_precision, cudnn.benchmark) == before
        set_process_flags(CUDA)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert cudnn.benchmark is True
        torch.get_float32_matmul_precision()  # raises when the two APIs are mixed
    finally:
        matmul.fp32_precision, conv.fp32_precision, cudnn.benchmark = before


# ---------------------------------------------------------------------- the progress bar


def test_progress_bar_of_a_resumed_epoch_counts_the_resumed_images():
    engine = _engine(FP32)
    draws = engine.draw_epoch(torch.Generator().manual_seed(1))
    resumed = EpochSums(loss_sum=20.0, correct=4, seen=8, seconds=1.0)
    engine.begin_epoch(0, draws, start_step=1, resumed=resumed)
    engine.model.train()
    engine.step(1)
    snap = engine.peek_metrics()
    sums, _ = engine.read_metrics()
    shown = engine.progress_postfix(snap)
    assert sums.seen == 16
    assert shown["loss"] == f"{sums.loss:.4f}" and shown["acc"] == f"{sums.accuracy:.4f}"


# ---------------------------------------------------------------------- risk 7 and the records


def _run(tmp_path, name, monkeypatch, **kw):
    from alexnet_cifar.data import CIFAR10
    from alexnet_cifar.training import checkpointer
    from alexnet_cifar.training.trainer import train

    from .helpers import train_options

    saves = []
    real = checkpointer.save_checkpoint

    def counted(run_dir, state, **k):
        saves.append(state["epoch"])
        return real(run_dir, state, **k)

    monkeypatch.setattr(checkpointer, "save_checkpoint", counted)
    x, y = _data(40)
    x, y, names = x.numpy(), y.numpy(), [str(i) for i in range(10)]
    data = CIFAR10(x, y, x[:20], y[:20], names)
    lines = []
    opts = train_options(
        tmp_path / name,
        recipe=Recipe(epochs=3, batch_size=16),
        limit_train=None,
        limit_test=None,
        quiet=False,
        **kw,
    )
    result = train(opts, data=data, log=lines.append)
    return result, saves, lines


@pytest.mark.slow
def test_checkpoints_are_written_by_time_and_always_at_the_end(tmp_path, monkeypatch):
    import json

    result, saves, lines = _run(tmp_path, "slow-cadence", monkeypatch, checkpoint_every=3600)
    assert saves == [3]  # only the end: an hour never passed
    _, every_epoch, _ = _run(tmp_path, "each-epoch", monkeypatch, checkpoint_every=0)
    assert every_epoch == [1, 2, 3]
    # the engine as used comes first in what train prints, and in both records
    assert lines[0].startswith("alexnet_thinner_4 on cpu: engine ")
    config = json.loads((tmp_path / "slow-cadence" / "config.json").read_text())
    for record in (config, result):
        assert record["engine_used"] == record["engine"]
        assert record["engine_used"]["compile"] is False
        assert record["engine_fallbacks"] == []
        assert record["engine_resolved"]["cuda_graphs"] is False
        assert "engine_requested" in record
    assert config["checkpoint_every"] == 3600


# ---------------------------------------------------------------------- (c): the meta device


class CpuTensors(TorchDispatchMode):
    """Fails on any operation that touches a CPU tensor of more than 0 dimensions."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = torch.utils._pytree.tree_leaves((args, kwargs or {}, out))
        for t in flat:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0:
                raise AssertionError(f"{func} touches a CPU tensor of shape {tuple(t.shape)}")
        return out


@pytest.mark.parametrize("recipe", ["seed", "fast"])
def test_the_step_on_the_meta_device_touches_no_cpu_tensor(recipe):
    meta = torch.device("meta")
    model = AlexNet(TINY).to(meta)
    x = torch.empty((N, 32, 32, 3), dtype=torch.uint8, device=meta)
    y = torch.empty((N,), dtype=torch.long, device=meta)
    r = get_recipe(recipe, epochs=2, batch_size=BS)
    # no autocast on meta, and no fused kernel: the arithmetic is not what this test is about
    opts = EngineOptions(precision="fp32", channels_last=True, fused_optimizer=False)
    engine = Engine(model, r, meta, opts, x, y)
    with CpuTensors():
        engine.core.eager(BS)
        engine.core.eager(N % BS)


# ---------------------------------------------------------------------- (d): inductor on the CPU


@pytest.mark.slow
def test_inductor_compiles_two_graphs_once_with_no_break():
    """Two epochs with a short last batch and an evaluation between them: one graph per batch
    size, compiled at set-up, then no recompile and no graph break."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    engine = _engine(replace(FP32, compile=True, compile_backend="inductor"), dropout=0.0)
    gen = torch.Generator().manual_seed(1)
    engine.prepare()
    after_setup = counters["stats"]["unique_graphs"]
    x, y = _data(12, seed=3)
    for epoch in range(2):
        engine.begin_epoch(epoch, engine.draw_epoch(gen))
        engine.model.train()
        for s in range(engine.steps_per_epoch):
            engine.step(s)
        engine.read_metrics()
        engine.evaluate(x, y, batch_size=5)
    assert after_setup == 2 == counters["stats"]["unique_graphs"]
    assert sum(counters["graph_break"].values()) == 0
    assert engine.used_options.compile is True
    torch._dynamo.reset()


# ---------------------------------------------------------------------- every failure reaches it


def test_a_failure_to_set_up_compile_reaches_the_ladder(monkeypatch):
    """torch.compile failing as it wraps the model (an unusable backend) is a rung failing,
    not a traceback: one warning, a record, and eager steps."""

    def refuse(*args, **kwargs):
        raise RuntimeError("this backend cannot be set up here")

    monkeypatch.setattr(torch, "compile", refuse)
    said = []
    engine = _engine(replace(FP32, compile=True), warn=said.append)
    engine.prepare()
    assert engine.used_options.compile is False
    assert len(said) == 1 and "cannot be set up here" in said[0]
    assert _rungs(engine) == [("compile", "eager")]
    with pytest.raises(EngineFallbackError, match="cannot be set up here"):
        _engine(replace(FP32, compile=True, strict_engine=True)).prepare()


# ---------------------------------------------------------------------- the test hook


@pytest.mark.parametrize(
    "named, asked, used",
    [
        ("CUDA graphs", dict(cuda_graphs=True), "eager"),
        ("cuda-graphs", dict(cuda_graphs=True), "eager"),
        ("Compile", dict(compile=True, cuda_graphs=False), "eager"),
    ],
)
def test_the_test_hook_makes_the_named_rung_fail(monkeypatch, named, asked, used):
    from alexnet_cifar.engine.options import rung_name

    monkeypatch.setenv(engine_capture.FAIL_RUNG_ENV, named)
    said = []
    asked = replace(FP32, compile_backend="eager", **asked)
    engine = _engine(asked, EmulatedGraphs(), warn=said.append)
    engine.prepare()
    assert rung_name(engine.used_options.compile, engine.used_options.cuda_graphs) == used
    (fallback,) = engine.engine_record()["fallbacks"]
    assert engine_capture.FAIL_RUNG_ENV in fallback["reason"] and len(said) == 1
    monkeypatch.delenv(engine_capture.FAIL_RUNG_ENV)
    engine = _engine(asked, EmulatedGraphs())
    engine.prepare()
    assert engine.engine_record()["fallbacks"] == []  # without the hook the rung works


def test_the_test_hook_refuses_a_rung_it_cannot_fail(monkeypatch):
    for wrong in ("eager", "graphs please"):
        monkeypatch.setenv(engine_capture.FAIL_RUNG_ENV, wrong)
        with pytest.raises(SettingError, match=engine_capture.FAIL_RUNG_ENV):
            _engine(replace(FP32, cuda_graphs=True), EmulatedGraphs())
