"""The engine computes what the plain step computes; its preparation leaves no trace; its
weight average follows its definition."""

from dataclasses import replace

import pytest
import torch

from alexnet_cifar import build_model
from alexnet_cifar.augment import draw_seed_augmentation, hflip, normalize, translate
from alexnet_cifar.engine import step as step_module
from alexnet_cifar.engine.core import Engine, EngineOptions, EpochSums
from alexnet_cifar.errors import SettingError
from alexnet_cifar.models import PRESETS, AlexNet, config_of
from alexnet_cifar.optim import make_optimizer, plain_step, set_learning_rate
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.training.trainer import TrainingInterrupted, TrainOptions, train

from .helpers import interrupt_at, metric_rows, train_options

CPU = torch.device("cpu")
# A variant of one's own: alexnet_thinner_4 with a batch normalisation after each convolution.
THINNER_4_BN = replace(PRESETS["alexnet_thinner_4"], name="thinner_4_bn", batch_norm=True)


def _trained_state(model):
    """What training changes in a model: its parameters and its buffers (running statistics)."""
    return [*model.named_parameters(), *model.named_buffers()]


def _dataset(n, seed=0):
    # Mid-grey noise: normalised values stay small, so a few steps stay in a tame regime where
    # float rounding cannot be amplified into different clipping decisions of the loss.
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(64, 192, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _epoch_draws(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    return (perm, *draw_seed_augmentation(n, g))


@pytest.mark.parametrize("name", ["alexnet_thinner_4", THINNER_4_BN])
@pytest.mark.parametrize(
    "channels_last, fused",
    [
        (False, True),  # the quick tier's case; the other layouts and SGDs in the slow tier
        pytest.param(True, True, marks=pytest.mark.slow),
        pytest.param(False, False, marks=pytest.mark.slow),
        pytest.param(True, False, marks=pytest.mark.slow),
    ],
)
def test_engine_step_equals_plain_step(name, channels_last, fused):
    bs = 8
    n = 2 * bs + 5  # two full batches and a short last one
    x_u8, y = _dataset(n)
    perm, dy, dx, flip = _epoch_draws(n)
    recipe = Recipe(epochs=3, batch_size=bs, lr=0.003)

    torch.manual_seed(0)
    ref = AlexNet(config_of(name))
    torch.manual_seed(0)
    model = AlexNet(config_of(name))
    if channels_last:
        # The same layout on both sides: max-pool ties may break differently across layouts,
        # which a few steps amplify; the layouts' equality is tested in test_models.
        ref = ref.to(memory_format=torch.channels_last)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.003, momentum=0.9, nesterov=True)
    opts = EngineOptions(precision="fp32", channels_last=channels_last, fused_optimizer=fused)
    engine = Engine(model, recipe, CPU, opts, x_u8, y)
    engine.begin_epoch(0, (perm, dy, dx, flip))

    losses = []
    for step in range(engine.steps_per_epoch):
        if step == 2:  # a learning-rate change with Keras' momentum rescale, on both sides
            engine.set_lr(0.001)
            set_learning_rate(ref_opt, 0.001)
        sl = slice(step * bs, min((step + 1) * bs, n))
        idx = perm[sl]
        xb = hflip(translate(normalize(x_u8[idx]), dy[sl], dx[sl]), flip[sl])
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        torch.manual_seed(100 + step)  # the same dropout masks on both sides
        losses.append(float(plain_step(ref, ref_opt, xb, y[idx])) * len(idx))
        torch.manual_seed(100 + step)
        engine.step(step)

    sums, bad = engine.read_metrics()
    assert bad == -1 and sums.seen == n
    assert sums.loss_sum == pytest.approx(sum(losses), rel=1e-5)
    # the weights, and a batch normalisation's running statistics
    for (name_, a), (_, b) in zip(_trained_state(ref), _trained_state(model)):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-5, atol=1e-7, msg=name_)
    # and they did move
    torch.manual_seed(0)
    fresh = AlexNet(config_of(name))
    assert not torch.allclose(fresh.layers.fc3.weight, model.layers.fc3.weight)
    for bn, moved in zip(fresh.batch_norms(), model.batch_norms()):
        assert not torch.allclose(bn.running_mean, moved.running_mean)


def test_device_side_batch_is_translate_plus_flip(monkeypatch):
    name, bs, n = "alexnet", 8, 20
    x_u8, y = _dataset(n, seed=3)
    perm, dy, dx, flip = _epoch_draws(n, seed=4)
    model = build_model(name)
    engine = Engine(model, Recipe(batch_size=bs), CPU, EngineOptions(precision="fp32"), x_u8, y)
    engine.begin_epoch(0, (perm, dy, dx, flip), start_step=2)
    seen = []  # what the model is given, and the labels the loss is computed against
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    loss = step_module.recipe_loss
    monkeypatch.setattr(
        step_module, "recipe_loss", lambda z, y, r: seen.append(y.clone()) or loss(z, y, r)
    )
    engine.step(2)  # the short last batch
    xb, yb = seen
    sl = slice(2 * bs, n)
    want = hflip(translate(normalize(x_u8[perm[sl]]), dy[sl], dx[sl]), flip[sl])
    torch.testing.assert_close(xb, want, rtol=0, atol=1e-6)
    assert torch.equal(yb, y[perm[sl]])


@pytest.mark.slow
def test_tensor_learning_rate_matches_float_learning_rate():
    torch.manual_seed(1)
    a = build_model("alexnet_thinner_4")
    b = build_model("alexnet_thinner_4")
    b.load_state_dict(a.state_dict())
    oa = make_optimizer(a, Recipe(), fused=True)
    ob = make_optimizer(b, Recipe(), fused=True, lr_tensor_device=CPU)
    assert isinstance(ob.param_groups[1]["lr"], torch.Tensor)
    g = torch.Generator().manual_seed(2)
    grads = [[torch.randn(p.shape, generator=g) for p in a.parameters()] for _ in range(4)]
    for k, gs in enumerate(grads):
        if k == 2:
            set_learning_rate(oa, 0.001)
            set_learning_rate(ob, 0.001)
        for pa, pb, gr in zip(a.parameters(), b.parameters(), gs):
            pa.grad, pb.grad = gr.clone(), gr.clone()
        oa.step()
        ob.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet_thinner_4", THINNER_4_BN])
def test_preparation_leaves_no_trace(name):
    bs, n = 16, 40
    x_u8, y = _dataset(n)
    perm, dy, dx, flip = _epoch_draws(n)
    torch.manual_seed(0)
    model = AlexNet(config_of(name))
    opts = EngineOptions(compile=True, compile_backend="eager")
    engine = Engine(model, Recipe(batch_size=bs), CPU, opts, x_u8, y)
    engine.begin_epoch(0, (perm, dy, dx, flip), start_step=1, resumed=EpochSums(2.5, 3, 16))
    before = [t.detach().clone() for _, t in _trained_state(model)]
    rng = torch.get_rng_state()
    engine.ladder.prepare(bs)
    assert engine.setup_seconds > 0
    for (_, p), q in zip(_trained_state(model), before):
        assert torch.equal(p, q)  # running statistics and their batch count too
    assert torch.equal(torch.get_rng_state(), rng)
    sums, bad = engine.read_metrics()
    assert int(engine.step_t) == 1 and (sums.loss_sum, sums.correct, sums.seen, bad) == (
        2.5,
        3,
        16,
        -1,
    )
    assert all(
        int(torch.count_nonzero(engine.optimizer.state[p]["momentum_buffer"])) == 0
        for p in model.parameters()
    )


@pytest.mark.real_data
@pytest.mark.slow
def test_compiled_run_resumed_equals_plain_uninterrupted_run(cifar10, reference_run, tmp_path):
    """torch.compile (its eager backend here, for speed) with warm-up and an interruption."""
    out = tmp_path / "run"
    eng = EngineOptions(compile=True, compile_backend="eager")
    with pytest.raises(TrainingInterrupted, match="SIGINT: stopped in epoch 2"):
        train(train_options(out, engine=eng), data=cifar10, on_step=interrupt_at(1, 1))
    train(train_options(out, engine=eng, resume=True), data=cifar10)
    assert metric_rows(out) == metric_rows(reference_run)


def test_weight_average_follows_its_definition():
    torch.manual_seed(0)
    model = build_model("alexnet_thinner_4")
    recipe = Recipe(batch_size=8, ema_decay=0.9, momentum_form="torch")
    g = torch.Generator().manual_seed(1)
    x = torch.randint(64, 192, (24, 32, 32, 3), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (24,), generator=g)
    engine = Engine(model, recipe, torch.device("cpu"), EngineOptions(), x, y)
    engine.begin_epoch(
        0, (torch.arange(24), torch.zeros(24), torch.zeros(24), torch.zeros(24, dtype=torch.bool))
    )
    want = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        engine.step(step)
        d = min(0.9, (1 + (step + 1)) / (10 + (step + 1)))
        want = [d * w + (1 - d) * p.detach() for w, p in zip(want, model.parameters())]
    for a, b in zip(engine.ema, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    current = [p.detach().clone() for p in model.parameters()]
    with engine.evaluated_weights():
        for p, e in zip(model.parameters(), engine.ema):
            assert torch.equal(p, e)
    for p, c in zip(model.parameters(), current):
        assert torch.equal(p, c)  # put back


def test_weight_average_averages_running_statistics_with_the_weights():
    """With batch_norm the running mean and variance are averaged at the weights' decay,
    evaluated with the averaged weights, and put back after."""
    torch.manual_seed(0)
    model = AlexNet(replace(THINNER_4_BN, dropout=0.0))
    recipe = Recipe(batch_size=8, ema_decay=0.9, momentum_form="torch")
    x, y = _dataset(24, seed=1)
    engine = Engine(model, recipe, CPU, EngineOptions(precision="fp32"), x, y)
    engine.begin_epoch(0, _epoch_draws(24))
    stats = [b for b in model.buffers() if b.is_floating_point()]
    assert len(engine.ema) == len(list(model.parameters())) + len(stats) == 21 + 10
    want = [b.clone() for b in stats]
    for step in range(3):
        engine.step(step)
        d = min(0.9, (1 + (step + 1)) / (10 + (step + 1)))
        want = [d * w + (1 - d) * b for w, b in zip(want, stats)]
    averaged = engine.ema[-len(stats) :]
    for a, b in zip(averaged, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    live = [b.clone() for b in stats]
    assert not all(torch.equal(a, b) for a, b in zip(averaged, live))
    with engine.evaluated_weights():
        assert all(torch.equal(b, a) for b, a in zip(stats, averaged))
    assert all(torch.equal(b, c) for b, c in zip(stats, live))  # put back


def test_batch_norm_under_data_parallelism_needs_cuda():
    from alexnet_cifar.engine.core import _synchronise_batch_norm

    with pytest.raises(SettingError, match="batch_norm trains data-parallel only on CUDA"):
        _synchronise_batch_norm(AlexNet(THINNER_4_BN), CPU)
    _synchronise_batch_norm(build_model("alexnet_thinner_4"), CPU)  # nothing to synchronise


def _old_ema_update(avg, params, t, decay):
    """The weight average's update as it was first written: avg * d + p * (1 - d)."""
    t.add_(1)
    d = torch.clamp((1 + t) / (10 + t), max=decay)
    torch._foreach_mul_(avg, d)
    torch._foreach_add_(avg, torch._foreach_mul(params, 1 - d))


@pytest.mark.parametrize("decay", [0.9, 0.999])
def test_weight_average_update_computes_what_it_computed_before(decay):
    """The in-place lerp gives the values of the first form (multiply, multiply, add) over the
    ramp and past it, and a trace of it (what a captured step replays) follows the ramp."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from alexnet_cifar.engine.ema import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(5, 7))
    ema = WeightAverage(model, decay, CPU)
    traced = WeightAverage(model, decay, CPU)
    replay = make_fx(lambda: traced.update())()  # traced on its first step, which it runs
    old = [p.detach().clone() for p in model.parameters()]
    old_t = torch.zeros(())
    _old_ema_update(old, [p.detach() for p in model.parameters()], old_t, decay)
    ema.update()
    for _ in range(1, 120):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ema.update()
        replay()
        _old_ema_update(old, [p.detach() for p in model.parameters()], old_t, decay)
    assert float(ema.t) == float(traced.t) == 120.0
    for mine, theirs, before in zip(ema.avg, traced.avg, old):
        torch.testing.assert_close(mine, before, rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(theirs, before, rtol=2e-6, atol=1e-7)


def _fake_data():
    from alexnet_cifar.data import CIFAR10

    x, y = _dataset(40)
    return CIFAR10(
        x.numpy(), y.numpy(), x.numpy()[:20], y.numpy()[:20], [str(i) for i in range(10)]
    )


@pytest.mark.slow
def test_nonfinite_loss_is_caught_at_its_step(tmp_path):
    """A NaN in the weights shows as a non-finite loss at the very step it appears."""
    from alexnet_cifar.training.trainer import NonFiniteLossError

    def poison(trainer, epoch, step):
        if (epoch, step) == (0, 1):
            with torch.no_grad():
                trainer.run.model.layers.fc3.bias.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3"):
        train(
            TrainOptions(
                model="alexnet_thinner_4",
                out=tmp_path / "r",
                device="cpu",
                recipe=Recipe(epochs=2, batch_size=8),
                quiet=True,
                tensorboard=False,
            ),
            data=_fake_data(),
            on_step=poison,
        )
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
