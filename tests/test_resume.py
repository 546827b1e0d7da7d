"""resume: a run continues only with the settings it was started with (each difference named,
the checkpoint's value and the one asked for); --force extends --epochs and nothing else.

Each test names the fault of docs/reliability.md it proves.
"""

import pytest

from alexnet_cifar.training.checkpoint import CheckpointError
from alexnet_cifar.training.trainer import RunSetupError, train

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
@pytest.mark.slow
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
@pytest.mark.slow
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


# ---------------------------------------------------------------------- settings kept on resume
# A run's device, data folder, md5 check and evaluation batch: the printed resume command
# restores each, with CIFAR10_DIR unset and an empty cache (so nothing falls back on them).

TINY_ARGS = "alexnet_thinner_4 --epochs 2 --batch-size 32 --limit-train 64 --limit-test 100"
TINY_ARGS = [*TINY_ARGS.split(), "--seed", "3", "--no-progress"]


def _bare_env(tmp_path) -> dict:
    """No CIFAR10_DIR, an empty home and cache."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "CIFAR10_DIR"}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    return env


def _interrupted_after_epoch_1(args: list[str], env: dict, cwd) -> str:
    """Start ``train ARGS`` and Ctrl-C it after its first epoch: the printed resume command."""
    import re
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet_cifar", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    first = proc.stdout.readline()  # the engine it runs, then the first epoch
    assert " engine " in first, (first, proc.stderr.read() if not first else "")
    line = proc.stdout.readline()
    assert line.startswith("epoch 1/2"), (line, proc.stderr.read() if not line else "")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    return re.search(r"^Resume with: (.*)$", err, re.M).group(1)


def _unverifiable_copy(cifar10_dir, root):
    """The real CIFAR-10 files, but with one pixel of the test batch changed: the md5 check
    fails on it (only --no-verify reads it)."""
    src = cifar10_dir / "cifar-10-batches-bin"
    dst = root / "cifar-10-batches-bin"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name == "test_batch.bin":
            data = bytearray(f.read_bytes())
            data[-1] ^= 1
            (dst / f.name).write_bytes(bytes(data))
        else:
            (dst / f.name).symlink_to(f)
    return root


@pytest.mark.real_data
@pytest.mark.slow
def test_the_printed_resume_command_keeps_device_data_verify_and_eval_batch(
    cifar10_dir, tmp_path
):
    """Started with --device cpu --data-dir D --no-verify --eval-batch-size 7 (D's test batch
    fails the md5 check), stopped after epoch 1, resumed by the printed command alone: it
    finds D, does not verify, evaluates in batches of 7, and ends as the uninterrupted run."""
    import json
    import subprocess

    env = _bare_env(tmp_path)
    data = _unverifiable_copy(cifar10_dir, tmp_path / "data")
    kept = ["--device", "cpu", "--data-dir", "data", "--no-verify", "--eval-batch-size", "7"]
    resume = _interrupted_after_epoch_1([*TINY_ARGS, *kept, "--out", "run"], env, tmp_path)
    assert "--data-dir" not in resume and "--device" not in resume  # the run keeps them
    p = subprocess.run(resume, shell=True, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, (resume, p.stderr)
    whole = subprocess.run(
        [*resume.split()[:-5], "train", *TINY_ARGS, *kept, "--out", "whole"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert whole.returncode == 0, whole.stderr
    assert len(metric_rows(tmp_path / "run")) == 2
    assert metric_rows(tmp_path / "run") == metric_rows(tmp_path / "whole")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["device_requested"] == "cpu" and config["eval_batch_size"] == 7
    assert config["data_dir"] == str(data) and config["verify"] is False

    # a flag given that differs is refused in one line, before anything trains
    base = resume.split()[:-5]  # the command's interpreter and module
    for flags, named in [
        (["--device", "cuda"], "--device cuda: the run has --device cpu"),
        (["--eval-batch-size", "9"], "--eval-batch-size 9: the run has --eval-batch-size 7"),
        (["--data-dir", str(cifar10_dir)], f"--data-dir {cifar10_dir}: without the md5 check"),
    ]:
        p = subprocess.run(
            [*base, "train", "alexnet_thinner_4", "--out", "run", "--resume", *flags],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and named in p.stderr, p.stderr


@pytest.mark.real_data
@pytest.mark.slow
def test_a_new_data_folder_with_the_same_checked_files_is_accepted_and_recorded(
    cifar10_dir, tmp_path
):
    import json
    import subprocess

    env = _bare_env(tmp_path)
    resume = _interrupted_after_epoch_1(
        [*TINY_ARGS, "--data-dir", str(cifar10_dir), "--out", "run"], env, tmp_path
    )
    moved = tmp_path / "moved" / "cifar-10-batches-bin"
    moved.mkdir(parents=True)
    for f in (cifar10_dir / "cifar-10-batches-bin").iterdir():
        (moved / f.name).symlink_to(f)
    p = subprocess.run(
        f"{resume} --data-dir moved", shell=True, env=env, cwd=tmp_path, capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data_dir"] == str(tmp_path / "moved")
    assert config["changes"][-1]["data_dir"] == [str(cifar10_dir), str(tmp_path / "moved")]


# ---------------------------------------------------------------------- numerics and cadence
# Small made-up data (100 training and 20 test images) through the command line, in-process.


def _fake_run(tmp_path, *flags) -> tuple[dict, list[str]]:
    """A one-epoch run of made-up data in ``tmp_path/run`` with ``flags``: (its config.json,
    the arguments that name the run and its data for a resume)."""
    import json

    from .helpers import write_binary_folder

    if not (tmp_path / "data").exists():
        write_binary_folder(tmp_path / "data")
    where = ["--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"), "--no-verify"]
    args = ["alexnet_thinner_4", "--epochs", "1", "--batch-size", "50", "--device", "cpu"]
    p = run_main("train", *args, *where, "--quiet", "--no-tensorboard", *flags)
    assert p.returncode == 0, p.stderr
    return json.loads((tmp_path / "run" / "config.json").read_text()), ["alexnet_thinner_4", *where]


@pytest.mark.parametrize(
    "started, asked, named",
    [
        (["--precision", "bf16"], ["--precision", "fp32"], "precision: checkpoint has 'bf16'"),
        (["--precision", "fp32"], ["--channels-last"], "channels_last: checkpoint has False"),
    ],
)
@pytest.mark.slow
def test_a_resume_that_would_change_the_numerics_is_refused(tmp_path, started, asked, named):
    """Precision and memory layout change the numbers a step computes: a resume that changes
    either is refused naming it, like any other field of the run's identity (evaluate follows
    config.json, which records the engine the run used, so the two must not part)."""
    import json

    _, run = _fake_run(tmp_path, *started)
    p = run_main("train", *run, "--resume", "--force", "--epochs", "2", *asked)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert named in p.stderr, p.stderr
    # without the change, the same resume trains on, and evaluate gives the run's own figures
    p = run_main("train", *run, "--resume", "--force", "--epochs", "2", "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    ev = run_main("evaluate", run[2], *run[3:], "--json")
    assert ev.returncode == 0, ev.stderr
    figures = json.loads(ev.stdout)
    assert (figures["loss"], figures["accuracy"]) == (result["test_loss"], result["test_accuracy"])
    assert figures["precision"] == result["engine_used"]["precision"] == started[1]


@pytest.mark.slow
def test_a_checkpoint_from_before_the_numerics_were_recorded_is_judged_by_its_config(tmp_path):
    """A run started by an earlier version holds no precision in its checkpoint: its
    config.json's engine says which it used, and a resume in another precision is refused."""
    from alexnet_cifar.training.checkpoint import read_state, save_checkpoint

    _, run = _fake_run(tmp_path, "--precision", "bf16")
    state = read_state(tmp_path / "run" / "checkpoint.pt")
    for name in ("precision", "channels_last"):
        del state["run_identity"][name]
    save_checkpoint(tmp_path / "run", {k: v for k, v in state.items() if k != "format"})
    p = run_main("train", *run, "--resume", "--force", "--epochs", "2", "--precision", "fp32")
    assert p.returncode == 2 and "precision: checkpoint has 'bf16'" in p.stderr, p.stderr
    p = run_main("train", *run, "--resume", "--force", "--epochs", "2", "--quiet")
    assert p.returncode == 0, p.stderr


@pytest.mark.slow
def test_a_resume_keeps_the_checkpoint_cadence_and_records_a_new_one(tmp_path):
    """--checkpoint-every left out on resume is the run's own (recorded in config.json, as the
    other kept settings are); one given is accepted (nothing computed changes) and recorded."""
    import json

    from alexnet_cifar.training.checkpoint import read_state

    config, run = _fake_run(tmp_path, "--checkpoint-every", "0")
    assert config["checkpoint_every"] == 0
    p = run_main("train", *run, "--resume", "--force", "--epochs", "3", "--quiet")
    assert p.returncode == 0, p.stderr
    # every epoch checkpointed: the one before the last is epoch 2's (by time: epoch 1's)
    assert read_state(tmp_path / "run" / "checkpoint.prev.pt")["epoch"] == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["checkpoint_every"] == 0  # only the epochs changed
    assert [list(c)[0] for c in config["changes"]] == ["recipe.epochs"]
    p = run_main(
        "train", *run, "--resume", "--force", "--epochs", "4", "--checkpoint-every", "5", "--quiet"
    )
    assert p.returncode == 0, p.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["checkpoint_every"] == 5
    assert config["changes"][-1]["checkpoint_every"] == [0, 5]


# ---------------------------------------------------------------------- nothing to resume


@pytest.mark.parametrize("kind", ["missing", "empty", "a model without checkpoint"])
def test_resume_of_a_folder_without_a_checkpoint_is_refused_in_one_line(tmp_path, kind):
    """A mistyped or empty --out with --resume would start a whole new run: refused, naming
    the folder and what it lacks, before anything is written."""
    folder = tmp_path / "runs" / "alexnet"
    if kind != "missing":
        folder.mkdir(parents=True)
    if kind == "a model without checkpoint":  # as import-keras leaves a folder
        for name, text in (("config.json", "{}"), ("result.json", "{}"), ("model.pt", "")):
            (folder / name).write_text(text)
    before = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    no_data = {"CIFAR10_DIR": str(tmp_path / "no-data")}  # a run that starts stops at once
    argv = ["train", "alexnet", "--out", folder, "--resume", "--quiet", "--device", "cpu"]
    p = run_main(*argv, env=no_data)
    assert p.returncode == 2, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("error: cannot resume") and str(folder) in line
    lacks = {
        "missing": "the folder does not exist",
        "empty": "it holds no checkpoint.pt and no config.json of a run",
        "a model without checkpoint": "it holds a model but no checkpoint.pt",
    }[kind]
    assert lacks in line
    assert ("leave --resume out" in line) == (kind != "a model without checkpoint")
    assert (sorted(q.name for q in folder.iterdir()) if folder.exists() else None) == before


class _Killed(Exception):
    """A stand-in for kill -9: the run stops with no checkpoint and no clean-up of its own."""


def _killed_before_the_first_checkpoint(cifar10, out) -> None:
    def kill(trainer, epoch, step):
        if (epoch, step) == (0, 2):
            raise _Killed

    with pytest.raises(_Killed):
        train(train_options(out), data=cifar10, on_step=kill)
    assert (out / "config.json").is_file() and not (out / "checkpoint.pt").exists()


@pytest.mark.real_data
@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_restarts_and_says_so_even_quiet(
    cifar10, cifar10_dir, reference_run, tmp_path
):
    from .helpers import REF_ARGS

    out = tmp_path / "run"
    _killed_before_the_first_checkpoint(cifar10, out)
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    p = run_main("train", *REF_ARGS, "--out", out, "--resume", "--quiet", env=env)
    assert p.returncode == 0, p.stderr
    notice = [line for line in p.stderr.splitlines() if "epoch 1" in line]
    assert len(notice) == 1 and "restart" in notice[0] and str(out) in notice[0], p.stderr
    assert "before its first checkpoint" in notice[0]
    assert notice[0] in (out / "train.log").read_text()
    assert metric_rows(out) == metric_rows(reference_run)  # a whole new run, from epoch 1


@pytest.mark.real_data
def test_a_missing_recorded_data_folder_is_named_as_recorded(cifar10_dir, interrupted_run):
    import json

    config = json.loads((interrupted_run / "config.json").read_text())
    gone = str(interrupted_run.parent / "data-moved-away")
    config["data_dir"] = gone
    (interrupted_run / "config.json").write_text(json.dumps(config))
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    p = run_main("train", "alexnet_thinner_4", "--out", interrupted_run, "--resume", env=env)
    assert p.returncode == 2, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert gone in line and "--data-dir" in line and "config.json" in line, line
    assert "(from --data-dir)" not in line
