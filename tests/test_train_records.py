"""train_records: what a finished run records of itself, checked against facts found
independently: the data it trained on, metrics.csv, and the saved weights evaluated again."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from alexnet_cifar.data import CLASSES, load_cifar10
from alexnet_cifar.engine.evaluate import evaluate_model
from alexnet_cifar.engine.options import EngineOptions
from alexnet_cifar.models import PRESETS, AlexNetConfig, build_model
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.training.checkpoint import load_model, read_state
from alexnet_cifar.training.runlog import read_metrics
from alexnet_cifar.training.trainer import TrainOptions, train

from .helpers import write_binary_folder

MODEL = "alexnet_thinner_4"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """100 random training and 20 random test images in CIFAR-10's binary layout."""
    root = tmp_path_factory.mktemp("data")
    write_binary_folder(root, n_per_file=20, seed=2)
    return root, load_cifar10(root, verify=False, progress=False)


def _train(folder, data, **kw) -> dict:
    opts = dict(
        model=MODEL,
        out=folder,
        recipe=Recipe(epochs=2, batch_size=32),
        seed=4,
        device="cpu",
        data_dir=str(data[0]),
        verify=False,
        quiet=True,
        progress=False,
        tensorboard=False,
        engine=EngineOptions(precision="fp32"),  # so that evaluating again is exact
    )
    opts.update(kw)
    return train(TrainOptions(**opts), data=data[1])


@pytest.fixture(scope="module")
def finished(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    returned = _train(out, synthetic)
    return out, returned


def _json(path):
    return json.loads(path.read_text())


def _evaluated_again(folder, data, weights=None):
    model = load_model(folder)
    if weights is not None:
        model.load_state_dict(weights)
    return evaluate_model(model, data.x_test, data.y_test, classes=list(data.classes))


@pytest.mark.slow
def test_config_records_what_the_run_was(finished, synthetic):
    out, _ = finished
    root, data = synthetic
    config = _json(out / "config.json")
    assert config["model"] == MODEL
    assert AlexNetConfig.from_dict(config["model_config"]) == PRESETS[MODEL]
    assert config["recipe"] == Recipe(epochs=2, batch_size=32).to_dict()
    assert (config["seed"], config["limit_train"], config["limit_test"]) == (4, None, None)
    assert (config["n_train"], config["n_test"]) == (len(data.y_train), len(data.y_test)) == (
        100,
        20,
    )
    assert config["classes"] == list(CLASSES)
    assert config["data_dir"] == str(root) and config["verify"] is False
    assert config["device"] == "cpu" and config["world_size"] == 1
    assert config["versions"]["torch"] == torch.__version__
    assert config["command"] == sys.argv
    assert "val_split" not in config


def test_result_agrees_with_the_metrics_and_the_weights(finished, synthetic):
    out, returned = finished
    _, data = synthetic
    result = _json(out / "result.json")
    assert result == json.loads(json.dumps(returned))  # what train() returns is what it wrote
    m = read_metrics(out)
    assert result["epochs"] == len(m["epoch"]) == 2
    assert result["test_accuracy"] == m["val_accuracy"][-1]
    assert result["test_loss"] == m["val_loss"][-1]
    first_best = int(np.argmax(m["val_accuracy"]))
    assert result["best_epoch"] == first_best + 1
    assert result["best_test_accuracy"] == m["val_accuracy"][first_best]
    assert result["train_seconds"] == pytest.approx(sum(m["seconds"]), abs=1e-3)
    assert result["final"]["lr"] == m["lr"][-1]
    assert result["params"] == sum(p.numel() for p in build_model(MODEL).parameters())
    assert result["recipe"] == "seed" and result["model_file"] == str(out / "model.pt")
    # the confusion matrix counts the test labels, and the model file reproduces it
    confusion = np.array(result["confusion_matrix"])
    assert np.array_equal(confusion.sum(axis=1), np.bincount(data.y_test, minlength=10))
    assert np.trace(confusion) / confusion.sum() == pytest.approx(result["test_accuracy"])
    again = _evaluated_again(out, data)
    assert np.array_equal(again.confusion, confusion)
    assert again.accuracy == pytest.approx(result["test_accuracy"])
    assert list(result["per_class_accuracy"]) == list(CLASSES)
    assert list(result["per_class_accuracy"].values()) == pytest.approx(
        list(again.per_class_accuracy)
    )


def test_checkpoint_holds_the_run_as_it_ended(finished):
    out, _ = finished
    state = read_state(out / "checkpoint.pt")
    m = read_metrics(out)
    assert state["epoch"] == 2 and state["model_name"] == MODEL
    assert [r["epoch"] for r in state["history"]] == m["epoch"]
    assert [r["val_accuracy"] for r in state["history"]] == m["val_accuracy"]
    assert AlexNetConfig.from_dict(state["model_config"]) == PRESETS[MODEL]
    assert state["run_identity"]["seed"] == 4
    final = read_state(out / "model.pt")
    assert final["meta"]["epochs"] == 2 and final["meta"]["classes"] == list(CLASSES)
    for k, v in final["model"].items():  # no weight average: the trained weights themselves
        assert torch.equal(v, state["model"][k]), k


@pytest.mark.slow
def test_a_split_run_records_both_test_evaluations(synthetic, tmp_path):
    _, data = synthetic
    out = tmp_path / "split"
    _train(out, synthetic, recipe=Recipe(epochs=3, batch_size=32), val_split=20)
    config, result = _json(out / "config.json"), _json(out / "result.json")
    assert (config["val_split"], config["n_val"], config["n_train"]) == (20, 20, 80)
    m = read_metrics(out)  # its val_ columns are the held-out images'
    best_at = int(np.argmax(m["val_accuracy"]))
    assert result["best_epoch"] == best_at + 1
    assert result["best_val_accuracy"] == m["val_accuracy"][best_at]
    state = read_state(out / "checkpoint.pt")
    assert state["best_val"]["epoch"] == best_at + 1
    # the test set once at the end: on the final weights, and on the kept epoch's
    final = _evaluated_again(out, data)
    at_best = _evaluated_again(out, data, state["best_val"]["model"])
    assert result["test_accuracy"] == result["test_accuracy_final"]
    assert result["test_accuracy_final"] == pytest.approx(final.accuracy)
    assert result["test_accuracy_at_best_val"] == pytest.approx(at_best.accuracy)
    assert result["best_test_accuracy"] == result["test_accuracy_at_best_val"]
    assert result["test_loss_at_best_val"] == pytest.approx(at_best.loss, rel=1e-5)
