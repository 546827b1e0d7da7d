from dataclasses import replace

import numpy as np
import pytest
import torch

from alexnet_cifar import build_model
from alexnet_cifar.models import AlexNet
from alexnet_cifar.optim import (
    keras_crossentropy,
    make_optimizer,
    set_learning_rate,
)
from alexnet_cifar.recipe import Recipe

from .helpers import TINY


def keras_sgd_numpy(w0, grads, lrs, momentum=0.9):
    """Keras 2 SGD(momentum, nesterov=True), transcribed: v = m v - lr g; w = w + m v - lr g."""
    w = w0.astype(np.float64).copy()
    v = np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        v = momentum * v - lr * g
        w = w + momentum * v - lr * g
    return w


def test_optimizer_matches_keras_over_a_changing_schedule():
    rng = np.random.default_rng(0)
    recipe = Recipe(epochs=9, lr=0.01)  # drops after epochs 3 and 6
    steps_per_epoch = 4
    lrs = [recipe.lr_at(e) for e in range(recipe.epochs) for _ in range(steps_per_epoch)]
    assert sorted(set(lrs), reverse=True) == pytest.approx([0.01, 0.001, 0.0001])
    w0 = rng.normal(size=(50,))
    grads = [rng.normal(size=(50,)) for _ in lrs]
    want = keras_sgd_numpy(w0, grads, lrs)

    def run(rescale: bool):
        p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
        opt = torch.optim.SGD([p], lr=lrs[0], momentum=0.9, nesterov=True)
        for g, lr in zip(grads, lrs):
            if rescale:
                set_learning_rate(opt, lr)
            else:
                opt.param_groups[0]["lr"] = lr
            p.grad = torch.tensor(g)
            opt.step()
        return p.detach().numpy()

    np.testing.assert_allclose(run(rescale=True), want, rtol=1e-12, atol=1e-12)
    # Without the rescale, torch's plain SGD is *not* Keras' once lr changes.
    assert np.abs(run(rescale=False) - want).max() > 1e-4


def test_lr_set_before_first_step_needs_no_rescale():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)  # the seed's lr=0.1 ...
    set_learning_rate(opt, 0.01)  # ... is overwritten before the first step
    p.grad = torch.ones(3)
    opt.step()
    # Keras: v = -0.01 g; w = w + 0.9 v - 0.01 g = 1 - 0.019
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 0.019))


def test_seed_schedule():
    r = Recipe()
    assert r.epochs == 300 and r.milestones == (100, 200)
    assert [r.lr_at(e) for e in (0, 99, 100, 199, 200, 299)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]
    )
    assert Recipe(epochs=1).lr_at(0) == 0.01
    assert Recipe(epochs=10).milestones == (4, 7)


def test_l2_gradient_equals_weight_decay_group():
    """Keras' loss + 1e-4 sum(w^2) on conv kernels == our SGD weight_decay=2e-4 on them (on the
    smallest model of the same construction, with the thinner variants' L2)."""
    torch.manual_seed(0)
    regular = replace(TINY, l2=build_model("alexnet_thinner_4").config.l2)
    ref = AlexNet(regular).double()
    ours = AlexNet(regular).double()
    ours.load_state_dict(ref.state_dict())
    ref.eval(), ours.eval()  # no dropout: same function
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    recipe = Recipe()

    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    our_opt = make_optimizer(ours, recipe)
    for _ in range(3):
        ref_opt.zero_grad()
        loss = keras_crossentropy(ref(x).double(), y).mean() + ref.l2_penalty()
        loss.backward()
        # the penalty's gradient is 2e-4 * w on the kernels
        ref_opt.step()

        our_opt.zero_grad()
        keras_crossentropy(ours(x).double(), y).mean().backward()
        our_opt.step()
    for (n, a), b in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=n)
    groups = {g["name"]: g for g in our_opt.param_groups}
    assert groups["l2_kernels"]["weight_decay"] == pytest.approx(2e-4)
    assert groups["plain"]["weight_decay"] == 0


def test_l2_penalty_gradient_is_2e4_w():
    torch.manual_seed(1)
    model = build_model("alexnet_thinner_4")
    model.l2_penalty().backward()
    for conv in model.convs():
        torch.testing.assert_close(conv.weight.grad, 2e-4 * conv.weight.detach())
    assert all(d.weight.grad is None for d in model.denses())


def keras_cce_numpy(probs, target, eps=1e-7):
    """Keras 2's categorical_crossentropy on float32 softmax outputs (TF backend, numpy form)."""
    p = probs / probs.sum(axis=-1, keepdims=True)
    p = np.clip(p, np.float32(eps), np.float32(1) - np.float32(eps))
    return -np.log(p[np.arange(len(target)), target])


def test_keras_crossentropy_matches_keras_formula():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(64, 10)) * 3
    logits[0] = [40, -40, 0, 0, 0, 0, 0, 0, 0, 0]  # p(true=1) underflows below 1e-7: clipped
    logits[1] = [60, -5, 0, 0, 0, 0, 0, 0, 0, 0]  # p(true=0) rounds to 1 in float32: clipped
    target = rng.integers(0, 10, 64)
    target[0], target[1] = 1, 0
    z = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    got = keras_crossentropy(z, torch.tensor(target))
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float32), 1).numpy()
    np.testing.assert_allclose(
        got.detach().numpy(), keras_cce_numpy(probs, target), rtol=1e-5, atol=1e-7
    )
    assert float(got[0].detach()) == pytest.approx(-np.log(1e-7), rel=1e-5)
    got.sum().backward()
    # a clipped sample sends no gradient, as in Keras
    assert torch.count_nonzero(z.grad[0]) == 0
    assert torch.count_nonzero(z.grad[2]) > 0
    # eps=0 is torch's ordinary cross-entropy
    plain = keras_crossentropy(z.detach()[2:], torch.tensor(target[2:]), eps=0)
    torch.testing.assert_close(
        plain,
        torch.nn.functional.cross_entropy(
            z.detach()[2:], torch.tensor(target[2:]), reduction="none"
        ),
    )
