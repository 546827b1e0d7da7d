import csv
import json
import signal

import numpy as np
import pytest
import torch

from alexnet_cifar import load_model
from alexnet_cifar.checkpoint import CheckpointError
from alexnet_cifar.evaluate import evaluate_model
from alexnet_cifar.train import (
    METRIC_COLUMNS,
    RunSetupError,
    TrainingInterrupted,
    train,
)

from .helpers import interrupt_at, metric_rows, run_cli, train_options

# ---------------------------------------------------------------------- end to end, real data

# alexnet learns fastest of the five on 2 cores (0.3 s a step at batch 32). Two epochs of a
# 3,000-image balanced subset (188 steps, the second epoch at lr 0.001) take about a minute and
# reach about 29% test accuracy on 1,000 test images for seeds 0, 1, 2. Chance is 10% with a
# standard deviation of 0.95 points on 1,000 images, so 20% is ten deviations above chance and
# nine points below what training reaches.
E2E_THRESHOLD = 0.20
E2E_ARGS = [
    "alexnet",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--limit-train",
    "3000",
    "--limit-test",
    "1000",
    "--device",
    "cpu",
    "--seed",
    "0",
]


@pytest.fixture(scope="module")
def e2e_run(cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "run"
    p = run_cli(
        "train", *E2E_ARGS, "--out", str(out), "--json", env={"CIFAR10_DIR": str(cifar10_dir)}
    )
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    return out, json.loads(p.stdout)


@pytest.mark.real_data
@pytest.mark.slow
def test_cli_training_learns(e2e_run):
    out, result = e2e_run
    assert result["test_accuracy"] > E2E_THRESHOLD, result
    assert result["epochs"] == 2 and result["model"] == "alexnet"


@pytest.mark.real_data
@pytest.mark.slow
def test_run_folder_contents(e2e_run):
    out, result = e2e_run
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.csv", "checkpoint.pt", "model.pt", "result.json"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)

    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "alexnet" and config["seed"] == 0
    assert config["recipe"]["epochs"] == 2 and config["recipe"]["batch_size"] == 32
    assert config["recipe"]["lr_milestones"] == [1, 2]
    assert config["limit_train"] == 3000 and config["n_train"] == 3000
    assert config["model_config"]["stem"] == "imagenet"

    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.01, 0.001])
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(result["test_accuracy"])
    assert all(float(r["seconds"]) > 0 for r in rows)

    saved = json.loads((out / "result.json").read_text())
    cm = np.array(saved["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 1000
    assert np.trace(cm) / 1000 == pytest.approx(result["test_accuracy"])
    assert len(saved["per_class_accuracy"]) == 10

    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 0
    bufs = [s["momentum_buffer"] for s in ckpt["optimizer"]["state"].values()]
    assert len(bufs) == 16 and all(torch.count_nonzero(b) > 0 for b in bufs)


@pytest.mark.real_data
@pytest.mark.slow
def test_tensorboard_scalars(e2e_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, result = e2e_run
    acc = EventAccumulator(str(out))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= tags
    val = acc.Scalars("val_accuracy")
    assert [e.step for e in val] == [1, 2]
    assert val[-1].value == pytest.approx(result["test_accuracy"], abs=1e-6)


@pytest.mark.real_data
@pytest.mark.slow
def test_load_model_reproduces_the_logged_accuracy(e2e_run, cifar10):
    out, result = e2e_run
    model = load_model(out)
    assert not model.training
    test = cifar10.subset(None, 1000, seed=0)
    ev = evaluate_model(model, test.x_test, test.y_test)
    assert ev.accuracy == pytest.approx(result["test_accuracy"], abs=1e-9)
    assert ev.confusion.sum() == 1000
    # the same from the checkpoint file
    ev2 = evaluate_model(load_model(out / "checkpoint.pt"), test.x_test, test.y_test)
    assert ev2.accuracy == ev.accuracy


@pytest.mark.real_data
@pytest.mark.slow
def test_evaluate_cli_json(e2e_run, cifar10_dir):
    out, result = e2e_run
    p = run_cli(
        "evaluate",
        str(out),
        "--limit-test",
        "1000",
        "--json",
        "--device",
        "cpu",
        env={"CIFAR10_DIR": str(cifar10_dir)},
    )
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-9)
    assert len(rep["per_class_accuracy"]) == 10
    cm = np.array(rep["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 1000
    assert rep["accuracy"] == pytest.approx(np.trace(cm) / 1000)


# ---------------------------------------------------------------------- resume


@pytest.mark.real_data
@pytest.mark.parametrize(
    "epoch, step, sig",
    [(1, 2, signal.SIGINT), (0, 4, signal.SIGTERM), (1, 0, signal.SIGINT)],
    ids=["mid-epoch", "end-of-epoch-sigterm", "first-step"],
)
def test_interrupted_run_resumes_to_the_same_metrics(
    cifar10, reference_run, tmp_path, epoch, step, sig
):
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as e:
        train(train_options(out), data=cifar10, on_step=interrupt_at(epoch, step, sig))
    assert e.value.signum == sig
    assert (e.value.run_dir, e.value.model) == (out, "alexnet_thinner_4")
    assert str(out / "checkpoint.pt") in str(e.value)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    # 160 images / 32 = 5 steps an epoch; a signal at the last step stops before the epoch's
    # evaluation, which the resumed run does
    assert (ckpt["epoch"], ckpt["step"]) == (epoch, step + 1)

    train(train_options(out, resume=True), data=cifar10)
    assert metric_rows(out) == metric_rows(reference_run)
    a, b = load_model(out), load_model(reference_run)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


@pytest.mark.real_data
def test_existing_run_needs_resume_and_matching_settings(cifar10, reference_run, tmp_path):
    with pytest.raises(RunSetupError, match="already holds a run. Add resume=True"):
        train(train_options(reference_run), data=cifar10)
    with pytest.raises(CheckpointError, match=r"seed: checkpoint has 5, this run asks 6"):
        train(train_options(reference_run, resume=True, seed=6), data=cifar10)
    # a finished run resumed is a no-op that still reports its result
    r = train(train_options(reference_run, resume=True), data=cifar10)
    assert r["epochs"] == 3


def test_unwritable_out_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    p = run_cli(
        "train",
        "alexnet",
        "--out",
        str(blocker / "run"),
        "--device",
        "cpu",
        env={"CIFAR10_DIR": str(tmp_path / "nowhere")},
    )
    assert p.returncode == 2
    assert "cannot write to the run folder" in p.stderr and "Traceback" not in p.stderr
