"""resume: a run continues only with the settings it was started with (each difference named,
the checkpoint's value and the one asked for); --force extends --epochs and nothing else.

Each test names the fault of docs/reliability.md it proves.
"""

import pytest

from alexnet_cifar.checkpoint import CheckpointError
from alexnet_cifar.train import RunSetupError, train

from .helpers import metric_rows, run_main, train_options


@pytest.mark.real_data
@pytest.mark.slow
def test_existing_run_needs_resume_and_matching_settings(cifar10, reference_run, tmp_path):
    with pytest.raises(RunSetupError, match="already holds a run. Add resume=True"):
        train(train_options(reference_run), data=cifar10)
    with pytest.raises(CheckpointError, match=r"seed: checkpoint has 5, this run asks 6"):
        train(train_options(reference_run, resume=True, seed=6), data=cifar10)
    # a finished run resumed is a no-op that still reports its result
    r = train(train_options(reference_run, resume=True), data=cifar10)
    assert r["epochs"] == 3


@pytest.mark.real_data
def test_resume_with_another_model_or_recipe_is_refused_naming_both(cifar10_dir, interrupted_run):
    out = interrupted_run
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    p = run_main("train", "alexnet", "--out", str(out), "--resume", "--device", "cpu", env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "model: checkpoint has 'alexnet_thinner_4', this run asks 'alexnet'" in p.stderr
    p = run_main(
        "train",
        "alexnet_thinner_4",
        "--out",
        str(out),
        "--resume",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        env=env,
    )
    assert p.returncode == 2
    assert "recipe.batch_size: checkpoint has 32, this run asks 16" in p.stderr
    # --force does not make an unsafe change safe
    p = run_main(
        "train",
        "alexnet_thinner_4",
        "--out",
        str(out),
        "--resume",
        "--force",
        "--lr",
        "0.1",
        "--device",
        "cpu",
        env=env,
    )
    assert p.returncode == 2 and "recipe.lr: checkpoint has 0.01" in p.stderr


@pytest.mark.real_data
def test_other_class_count_is_refused(cifar10, interrupted_run):
    with pytest.raises(CheckpointError, match="num_classes: checkpoint has 10, this run asks 5"):
        train(train_options(interrupted_run, resume=True, num_classes=5), data=cifar10)


@pytest.mark.real_data
@pytest.mark.slow
def test_force_allows_more_epochs_and_keeps_the_drops(cifar10_dir, interrupted_run):
    out = interrupted_run
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    p = run_main(
        "train",
        "alexnet_thinner_4",
        "--out",
        str(out),
        "--resume",
        "--epochs",
        "4",
        "--device",
        "cpu",
        env=env,
    )
    assert p.returncode == 2 and "recipe.epochs: checkpoint has 3, this run asks 4" in p.stderr
    assert "--force" in p.stderr
    p = run_main(
        "train",
        "alexnet_thinner_4",
        "--out",
        str(out),
        "--resume",
        "--epochs",
        "4",
        "--force",
        "--device",
        "cpu",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    lrs = [float(r["lr"]) for r in metric_rows(out)]
    assert lrs == pytest.approx([0.01, 0.001, 0.0001, 0.0001])  # drops stayed at 1 and 2
    # a later plain resume takes the extended settings from the run
    p = run_main(
        "train", "alexnet_thinner_4", "--out", str(out), "--resume", "--device", "cpu", env=env
    )
    assert p.returncode == 0, p.stderr
    assert "nothing to train" in p.stdout
