"""selection: the epoch chosen on a validation split keeps the weights that were evaluated,
the first best one wins, and the test set is used once at the end on the final and the kept
weights."""

from __future__ import annotations

import pytest
import torch

from alexnet_cifar.engine.core import Engine
from alexnet_cifar.engine.options import EngineOptions
from alexnet_cifar.models import AlexNet
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.training.selection import BestEpoch

from .helpers import TINY


def _engine(ema_decay: float) -> Engine:
    torch.manual_seed(0)
    model = AlexNet(TINY)
    x = torch.zeros((8, 32, 32, 3), dtype=torch.uint8)
    y = torch.arange(8) % 10
    recipe = Recipe(epochs=1, batch_size=4, ema_decay=ema_decay)
    options = EngineOptions(precision="fp32", compile=False, cuda_graphs=False)
    return Engine(model, recipe, torch.device("cpu"), options, x, y)


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_first_best_epoch_is_kept():
    engine = _engine(0.0)
    best = BestEpoch()
    kept = {}
    for epoch, acc in [(1, 0.3), (2, 0.3), (3, 0.5), (4, 0.2), (5, 0.5)]:
        with torch.no_grad():
            for p in engine.model.parameters():
                p.add_(1.0)  # each epoch's weights differ
        kept[epoch] = _weights(engine.model)
        best.offer({"epoch": epoch, "val_accuracy": acc}, engine)
        want = {1: 1, 2: 1, 3: 3, 4: 3, 5: 3}[epoch]  # a tie does not replace the first best
        assert best.state["epoch"] == want and best.state["val_accuracy"] == {1: 0.3, 3: 0.5}[want]
        assert _equal(best.state["model"], kept[want])


def test_with_weight_averaging_the_average_is_kept():
    engine = _engine(0.9)  # the average starts as the weights; then the weights move
    average = _weights(engine.model)
    with torch.no_grad():
        for p in engine.model.parameters():
            p.mul_(-2.0)
    trained = _weights(engine.model)
    best = BestEpoch()
    best.offer({"epoch": 1, "val_accuracy": 0.4}, engine)
    kept = best.state["model"]
    for name, _ in engine.model.named_parameters():
        assert torch.equal(kept[name], average[name]), name
    assert _equal(_weights(engine.model), trained)  # the model keeps training on its own


def test_loaded_swaps_in_the_kept_weights_and_back():
    engine = _engine(0.0)
    best = BestEpoch()
    best.offer({"epoch": 1, "val_accuracy": 0.1}, engine)
    kept = _weights(engine.model)
    with torch.no_grad():
        for p in engine.model.parameters():
            p.zero_()
    final = _weights(engine.model)
    with best.loaded(engine.model) as model:
        assert _equal(_weights(model), kept)
    assert _equal(_weights(engine.model), final)
    with pytest.raises(RuntimeError), best.loaded(engine.model):
        raise RuntimeError("an evaluation that fails")
    assert _equal(_weights(engine.model), final)  # restored all the same


@pytest.mark.parametrize("kept_epoch, last_epoch, calls", [(3, 3, 1), (2, 3, 2)])
def test_the_test_set_at_the_end(kept_epoch, last_epoch, calls):
    engine = _engine(0.0)
    best = BestEpoch()
    best.offer({"epoch": kept_epoch, "val_accuracy": 0.7}, engine)
    kept = _weights(engine.model)
    with torch.no_grad():
        for p in engine.model.parameters():
            p.add_(0.5)
    final = _weights(engine.model)
    seen = []

    def evaluate(description, averaged):
        # what the test set would see: the weights the model holds at the time
        seen.append((description, averaged, _weights(engine.model)))
        return f"result {len(seen)}"

    at_end, at_best = best.test_at_the_end(engine.model, last_epoch, evaluate)
    assert len(seen) == calls
    assert seen[0][:2] == ("test: final weights", True) and _equal(seen[0][2], final)
    if calls == 1:  # the kept epoch is the last: one evaluation serves both
        assert at_end == at_best == "result 1"
    else:
        assert seen[1][:2] == ("test: best epoch", False) and _equal(seen[1][2], kept)
        assert (at_end, at_best) == ("result 1", "result 2")
    assert _equal(_weights(engine.model), final)
