"""--stop-after: a run trained in slices on its full schedule ends exactly as a run trained in
one go, and until then it is shown everywhere as unfinished, "epoch E of N"."""

from __future__ import annotations

import json

import pytest
import torch

from alexnet_cifar import load_model
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.training.trainer import TrainOptions

from .helpers import REF_ARGS, metric_rows, run_main


def _same_weights(a, b) -> None:
    theirs = load_model(b).state_dict().values()
    for (name, p), q in zip(load_model(a).state_dict().items(), theirs):
        assert torch.equal(p, q), name


def test_stop_after_is_not_part_of_the_run():
    # a run started without it can be resumed with it, and the other way round
    plain = TrainOptions("alexnet", "run", recipe=Recipe(epochs=300))
    sliced = TrainOptions("alexnet", "run", recipe=Recipe(epochs=300), stop_after=60)
    assert sliced.run_identity() == plain.run_identity()


@pytest.mark.real_data
@pytest.mark.slow
def test_a_run_in_slices_ends_as_the_run_in_one_go(cifar10_dir, reference_run, tmp_path):
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    out = tmp_path / "run"
    first = run_main("train", *REF_ARGS, "--out", out, "--stop-after", "1", env=env)
    assert first.returncode == 0, first.stderr
    last = first.stdout.strip().splitlines()
    assert last[-2].startswith("alexnet_thinner_4: stopped after epoch 1 of 3 (unfinished)")
    assert last[-1].endswith(f"train alexnet_thinner_4 --out {out} --resume [--stop-after EPOCH]")
    # the folder of a stopped run: its checkpoint and records, no result and no final model
    assert {"checkpoint.pt", "config.json", "metrics.csv"} <= {p.name for p in out.iterdir()}
    assert not (out / "result.json").exists() and not (out / "model.pt").exists()
    assert len(metric_rows(out)) == 1

    resume = ("train", "alexnet_thinner_4", "--out", out, "--resume")
    second = run_main(*resume, "--stop-after", "2", "--json", env=env)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert (result["status"], result["epochs"], result["epochs_planned"]) == ("stopped", 2, 3)
    assert result["note"].startswith("stopped after epoch 2 of 3")
    assert metric_rows(out) == metric_rows(reference_run)[:2]

    # evaluate and the report say where it stands; the overfitting verdict says on what
    evaluated = run_main("evaluate", out, "--limit-test", "100", env=env)
    assert "(unfinished run: epoch 2 of 3)" in evaluated.stdout
    report = run_main("report", out, "--out", tmp_path / "report", "--json")
    summary = json.loads(report.stdout)["runs"][0]
    where = (summary["status"], summary["epochs"], summary["epochs_planned"])
    assert where == ("unfinished", 2, 3)
    note = summary["overfitting_note"]
    assert note.endswith("(on the 2 epochs done of 3: the run is unfinished)")
    assert "unfinished (epoch 2 of 3)" in (tmp_path / "report" / "report.md").read_text()

    # an earlier stop than where the run stands trains nothing and says so
    again = json.loads(run_main(*resume, "--stop-after", "1", "--json", env=env).stdout)
    assert again["note"].endswith("(nothing trained: the run was already past epoch 1)")
    assert len(metric_rows(out)) == 2

    final = run_main(*resume, env=env)
    assert final.returncode == 0, final.stderr
    assert "after 3 epochs" in final.stdout
    assert metric_rows(out) == metric_rows(reference_run)
    _same_weights(out, reference_run)
    assert json.loads((out / "result.json").read_text())["epochs"] == 3


@pytest.mark.real_data
@pytest.mark.slow
def test_a_run_started_without_it_stops_where_a_resume_says(
    cifar10_dir, reference_run, interrupted_run
):
    # interrupted in its second epoch by a signal, with no --stop-after given
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    args = ("train", "alexnet_thinner_4", "--out", interrupted_run, "--resume")
    sliced = run_main(*args, "--stop-after", "2", env=env)
    assert sliced.returncode == 0, sliced.stderr
    assert "stopped after epoch 2 of 3" in sliced.stdout
    assert torch.load(interrupted_run / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert run_main(*args, env=env).returncode == 0
    assert metric_rows(interrupted_run) == metric_rows(reference_run)
    _same_weights(interrupted_run, reference_run)
