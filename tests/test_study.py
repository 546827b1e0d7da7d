"""A tiny real study on CPU: two variants, one epoch each, on a subset of the real CIFAR-10."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest

from alexnet_cifar.cli import main
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.train import TrainingInterrupted, TrainOptions, train

from .test_train import run_cli

# 160 training images in batches of 32 (5 steps), 100 test images: a few seconds a variant.
SUBSET = ["--limit-train", "160", "--limit-test", "100", "--batch-size", "32"]
STUDY = ["--models", "alexnet,alexnet_thinner_4", "--epochs", "1", *SUBSET, "--device", "cpu"]


def _options(out, model="alexnet_thinner_4") -> TrainOptions:
    """What the study above asks for one variant, as train() options."""
    return TrainOptions(
        model=model,
        out=out,
        recipe=Recipe(epochs=1, batch_size=32),
        seed=0,
        device="cpu",
        limit_train=160,
        limit_test=100,
        quiet=True,
        progress=False,
    )


def _metrics(folder) -> list[dict]:
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _interrupt_at_step(step: int):
    def hook(trainer, epoch, s):
        if s == step:
            os.kill(os.getpid(), signal.SIGINT)

    return hook


@pytest.fixture(scope="module")
def study(cifar10, cifar10_dir, tmp_path_factory):
    """The study from the shell, its alexnet_thinner_4 run interrupted mid-epoch beforehand.

    (That a resumed run ends with exactly an uninterrupted run's metrics is test_train's.)
    """
    out = tmp_path_factory.mktemp("study") / "study"
    with pytest.raises(TrainingInterrupted):
        train(
            _options(out / "runs" / "alexnet_thinner_4"),
            data=cifar10,
            on_step=_interrupt_at_step(2),
        )
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    first = run_cli("study", *STUDY, "--out", str(out), "--no-progress", env=env)
    return out, first


@pytest.mark.real_data
@pytest.mark.slow
def test_study_trains_resumes_and_reports(study):
    out, p = study
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert "[1/2] alexnet: training in" in p.stdout
    assert "[2/2] alexnet_thinner_4: resuming in" in p.stdout
    assert "resuming" in p.stdout and "step 3" in p.stdout  # from the saved step, not anew

    for name in ("alexnet", "alexnet_thinner_4"):
        run = out / "runs" / name
        assert (run / "result.json").is_file() and (run / "model.pt").is_file()
    assert len(_metrics(out / "runs" / "alexnet_thinner_4")) == 1

    summary = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["alexnet", "alexnet_thinner_4"]
    assert {r["run_dir"] for r in summary["runs"]} == {
        "runs/alexnet",
        "runs/alexnet_thinner_4",
    }
    for r in summary["runs"]:
        assert r["epochs"] == 1 and r["status"] == "finished"
        assert r["n_train"] == 160 and r["n_test"] == 100
        result = json.loads((out / r["run_dir"] / "result.json").read_text())
        assert r["final_test_accuracy"] == result["test_accuracy"]
        assert r["params"] == result["params"]
    for name in ("report.md", "report.html", *summary["figures"].values()):
        assert (out / name).is_file(), name
    assert summary["best"]["model"] in ("alexnet", "alexnet_thinner_4")
    assert json.loads((out / "study.json").read_text())["models"] == [
        "alexnet",
        "alexnet_thinner_4",
    ]


@pytest.mark.real_data
@pytest.mark.slow
def test_tensorboard_sees_every_run_under_the_study(study):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    out, p = study
    assert p.returncode == 0, p.stderr
    mux = EventMultiplexer().AddRunsFromDirectory(str(out))
    mux.Reload()
    runs = mux.Runs()
    assert {"runs/alexnet", "runs/alexnet_thinner_4"} <= set(runs)
    for run in ("runs/alexnet", "runs/alexnet_thinner_4"):
        assert [e.step for e in mux.Scalars(run, "val_accuracy")] == [1]


@pytest.mark.real_data
@pytest.mark.slow
def test_rerun_skips_finished_runs_and_other_settings_are_refused(study, capsys):
    out, p = study
    assert p.returncode == 0, p.stderr
    metrics = out / "runs" / "alexnet" / "metrics.csv"
    before = metrics.stat().st_mtime_ns
    (out / "report.html").unlink()

    # the same study again, flags left out (taken from study.json): nothing trains, the
    # report is written anew
    assert main(["study", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "[1/2] alexnet: finished earlier, skipped" in printed
    assert "[2/2] alexnet_thinner_4: finished earlier, skipped" in printed
    assert "epoch 1/1" not in printed
    assert metrics.stat().st_mtime_ns == before
    assert (out / "report.html").is_file()

    # asking the same folder for more epochs is refused before anything trains
    assert main(["study", "--out", str(out), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "epochs: run has 1, this study asks 2" in err
    assert metrics.stat().st_mtime_ns == before


def test_unknown_models_are_refused(tmp_path, capsys):
    for models, says in (
        ("alexnet,alexnet_thin", "unknown model 'alexnet_thin'"),
        ("all,alexnet", "'all' alone"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["study", "--models", models, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --models:" in err and says in err
        assert len(err.strip().splitlines()) == 1 and "--help" in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------- a validation split

SPLIT = 40  # held-out training images; the test subset has 100, so the two are told apart


@pytest.fixture(scope="module")
def split_run(cifar10, tmp_path_factory):
    """A run with a validation split, with every evaluation and every step recorded in order."""
    from alexnet_cifar.engine import Engine

    from .conftest import train_options

    out = tmp_path_factory.mktemp("split") / "run"
    events: list[tuple] = []
    evaluate = Engine.evaluate

    def spy(self, images, labels, *args, **kwargs):
        events.append(("evaluate", len(labels)))
        return evaluate(self, images, labels, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Engine, "evaluate", spy)
        result = train(
            train_options(out, val_split=SPLIT),
            data=cifar10,
            on_step=lambda t, epoch, step: events.append(("step", epoch, step)),
        )
    return out, result, events


@pytest.mark.real_data
@pytest.mark.slow
def test_val_split_looks_at_the_test_set_only_at_the_end(split_run, cifar10):
    out, result, events = split_run
    last_step = max(i for i, e in enumerate(events) if e[0] == "step")
    evaluations = [(i, e[1]) for i, e in enumerate(events) if e[0] == "evaluate"]
    on_validation = [i for i, n in evaluations if n == SPLIT]
    on_test = [i for i, n in evaluations if n == 100]
    assert len(on_validation) == 3  # once per epoch
    assert 1 <= len(on_test) <= 2 and all(i > last_step for i in on_test)
    assert len(on_validation) + len(on_test) == len(evaluations)

    rows = _metrics(out)
    best = max(range(len(rows)), key=lambda i: float(rows[i]["val_accuracy"]))  # first best
    assert result["best_epoch"] == best + 1
    assert result["best_val_accuracy"] == float(rows[best]["val_accuracy"])
    assert result["val_split"] == SPLIT
    assert result["test_accuracy"] == result["test_accuracy_final"]
    assert result["best_test_accuracy"] == result["test_accuracy_at_best_val"]
    config = json.loads((out / "config.json").read_text())
    assert config["val_split"] == SPLIT and config["n_val"] == SPLIT
    assert config["n_train"] == 160 and config["n_test"] == 100

    # the two test accuracies, recomputed from the saved weights on the same test images
    import torch

    from alexnet_cifar import load_model
    from alexnet_cifar.checkpoint import load_checkpoint
    from alexnet_cifar.evaluate import evaluate_model

    test = cifar10.subset(160, 100, 5, SPLIT)
    x, y = torch.from_numpy(test.x_test), torch.from_numpy(test.y_test)
    final = evaluate_model(load_model(out), x, y, batch_size=500)
    assert final.accuracy == result["test_accuracy_final"]
    state, _ = load_checkpoint(out)
    assert state["best_val"]["epoch"] == best + 1
    model = load_model(out)
    model.load_state_dict(state["best_val"]["model"])
    assert (
        evaluate_model(model, x, y, batch_size=500).accuracy == result["test_accuracy_at_best_val"]
    )


@pytest.mark.real_data
@pytest.mark.slow
def test_val_split_is_part_of_the_run_identity(split_run, reference_run, cifar10):
    from alexnet_cifar.checkpoint import CheckpointError

    from .conftest import train_options

    out, _, _ = split_run
    with pytest.raises(CheckpointError, match="val_split: checkpoint has 40, this run asks 50"):
        train(train_options(out, resume=True, val_split=50), data=cifar10)
    with pytest.raises(CheckpointError, match="val_split: checkpoint has 40, this run asks None"):
        train(train_options(out, resume=True), data=cifar10)
    # a run without a split is what it was before splits existed
    config = json.loads((reference_run / "config.json").read_text())
    result = json.loads((reference_run / "result.json").read_text())
    assert "val_split" not in config and "n_val" not in config
    assert not {k for k in result if "val" in k}
    from alexnet_cifar.checkpoint import load_checkpoint

    state, _ = load_checkpoint(reference_run)
    assert "best_val" not in state and "val_split" not in state["run_identity"]


@pytest.mark.real_data
@pytest.mark.slow
def test_interrupted_split_run_resumes_to_the_same_results(split_run, cifar10, tmp_path):
    from .conftest import interrupt_at, train_options

    ref, expect, _ = split_run
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(train_options(out, val_split=SPLIT), data=cifar10, on_step=interrupt_at(1, 2))
    got = train(train_options(out, resume=True, val_split=SPLIT), data=cifar10)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_metrics(out)) == strip(_metrics(ref))
    for key in ("test_accuracy_final", "test_accuracy_at_best_val", "best_epoch", "test_loss"):
        assert got[key] == expect[key], key
