"""Hostile files and arguments: every command answers each with one clear line and exit 2.

The hostile set is built here, file by file: what an attacker or an accident puts where the
tool expects its own files. Each command that takes such a file is run over it; none may end
in a traceback, print more than one line on stderr, or change a file it was not asked to.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import markdown
import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_cifar.models import AlexNet, get_config
from alexnet_cifar.training.checkpoint import save_model_file

from .fs_helpers import read_only_folder
from .helpers import confident_model, make_run, metric_rows, run_main, train_options

THINNER = "alexnet_thinner_4"


def _keras_file(path: Path, kernel_dtype="float32", kernel_shape=(3, 3, 3, 24)):
    """A Keras 3 ``.weights.h5`` layout with one conv layer whose kernel is hostile."""
    with h5py.File(path, "w") as f:
        v = f.create_group("layers").create_group("conv2d").create_group("vars")
        if kernel_dtype == "S8":
            v.create_dataset("0", data=np.full(kernel_shape, b"x", dtype="S8"))
        else:
            v.create_dataset("0", data=np.zeros(kernel_shape, dtype=kernel_dtype))
        v.create_dataset("1", data=np.zeros(kernel_shape[-1], dtype="float32"))
    return path


def _huge_keras_file(run: Path, path: Path) -> Path:
    """A whole Keras file of the preset whose first kernel declares 360 GB (never written)."""
    assert run_main("export-keras", run, "--out", path).returncode == 0
    with h5py.File(path, "a") as f:
        v = f["layers/conv2d/vars"]
        del v["0"]
        v.create_dataset("0", shape=(99999, 99999, 3, 24), dtype="float32", chunks=(8, 8, 3, 24))
    return path


def _three_class_run(root: Path) -> Path:
    torch.manual_seed(0)
    model = AlexNet(get_config(THINNER, num_classes=3))
    return make_run(root / "three-classes", model, classes=["a", "b", "c"])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Name -> a hostile path (or a folder holding one)."""
    root = tmp_path_factory.mktemp("hostile")
    h: dict[str, Path] = {}
    h["missing"] = root / "no-such-file"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "picture.png")
    h["picture"] = root / "picture.png"
    (root / "garbage.pt").write_bytes(os.urandom(4096))
    h["garbage"] = root / "garbage.pt"
    good = make_run(root / "good", confident_model(THINNER))
    data = (good / "model.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    h["truncated"] = root / "truncated.pt"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'pwned'}",))

    torch.save({"format": "alexnet-cifar-model", "x": Payload()}, root / "malicious.pt")
    h["malicious"] = root / "malicious.pt"
    bad_keys = root / "bad-keys.pt"
    save_model_file(
        bad_keys, get_config(THINNER).to_dict(), {"layers.conv1.weight": torch.ones(2)}, {}
    )
    h["bad_keys"] = bad_keys
    h["empty_folder"] = root / "empty"
    h["empty_folder"].mkdir()
    os.mkfifo(root / "fifo.png")
    h["fifo"] = root / "fifo.png"
    h["keras_strings"] = _keras_file(root / "strings.weights.h5", kernel_dtype="S8")
    h["keras_huge"] = _huge_keras_file(good, root / "huge.weights.h5")
    h["keras_text"] = root / "notes.h5"
    h["keras_text"].write_text("not an HDF5 file")
    return h


@pytest.fixture(scope="module")
def run_folders(tmp_path_factory):
    """Run folders damaged in the ways a resume reads them."""
    root = tmp_path_factory.mktemp("runs")
    r: dict[str, Path] = {}

    def run_with(name: str, config) -> Path:
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_text(
            config if isinstance(config, str) else json.dumps(config)
        )
        return folder

    r["config_a_list"] = run_with("config-list", [1, 2, 3])
    r["config_not_json"] = run_with("config-garbage", "{ this is not json")
    r["seed_a_string"] = run_with("seed-string", {"model": THINNER, "seed": "five", "recipe": {}})
    r["recipe_a_list"] = run_with("recipe-list", {"model": THINNER, "seed": 1, "recipe": ["x"]})
    r["recipe_bad_lr"] = run_with("recipe-lr", {"model": THINNER, "seed": 1, "recipe": {"lr": "x"}})
    r["lock_is_a_folder"] = root / "lock-folder"
    (r["lock_is_a_folder"] / ".lock").mkdir(parents=True)
    ckpt_bad = root / "checkpoints-incomplete"
    ckpt_bad.mkdir()
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        torch.save(
            {"format": "alexnet-cifar-checkpoint", "version": 1, "epoch": 1}, ckpt_bad / name
        )
    r["checkpoints_incomplete"] = ckpt_bad
    return r


# ---------------------------------------------------------------------- the matrix


MODEL_COMMANDS = {
    "evaluate": lambda p, tmp: ["evaluate", p, "--no-verify", "--limit-test", "20"],
    "predict": lambda p, tmp: ["predict", p, tmp / "img.png"],
    "export": lambda p, tmp: ["export", p, "--format", "torchscript", "--out", tmp / "m.pt"],
    "export-keras": lambda p, tmp: ["export-keras", p, "--out", tmp / "m.h5"],
}
MODEL_FILES = [
    "missing",
    "picture",
    "garbage",
    "truncated",
    "malicious",
    "bad_keys",
    "empty_folder",
    "fifo",
]


def _assert_one_clear_line(p: subprocess.CompletedProcess):
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(("error:", "alexnet-cifar")), p.stderr
    assert "Traceback" not in p.stderr and "weights_only" not in p.stderr


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
@pytest.mark.parametrize("name", MODEL_FILES)
def test_model_commands_refuse_hostile_files_in_one_line(hostile, tmp_path, command, name):
    Image.new("RGB", (32, 32)).save(tmp_path / "img.png")
    p = run_main(*MODEL_COMMANDS[command](hostile[name], tmp_path))
    _assert_one_clear_line(p)
    assert not (hostile["picture"].parent / "pwned").exists()


@pytest.mark.parametrize(
    "name", ["keras_strings", "keras_huge", "keras_text", "picture", "missing"]
)
def test_import_keras_refuses_hostile_files_in_one_line(hostile, tmp_path, name):
    p = run_main("import-keras", hostile[name], "--out", tmp_path / "run")
    _assert_one_clear_line(p)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name",
    [
        "config_a_list",
        "config_not_json",
        "seed_a_string",
        "recipe_a_list",
        "recipe_bad_lr",
        "lock_is_a_folder",
        "checkpoints_incomplete",
    ],
)
def test_train_resume_refuses_damaged_run_folders_in_one_line(run_folders, name, tmp_path):
    folder = run_folders[name]
    before = sorted(p.name for p in folder.iterdir())
    p = run_main(
        "train",
        THINNER,
        "--out",
        folder,
        "--resume",
        "--device",
        "cpu",
        env={"CIFAR10_DIR": str(tmp_path)},
    )
    _assert_one_clear_line(p)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing lost, nothing added


def test_report_of_nothing_reportable_is_one_line(hostile, run_folders):
    p = run_main(
        "report", hostile["empty_folder"], run_folders["config_a_list"], hostile["missing"]
    )
    _assert_one_clear_line(p)


def test_study_with_a_damaged_study_file_is_one_line(tmp_path):
    for content in ('{"models": [1, 2]}', "[]", '{"seed": "x"}', '{"recipe": {"epochs": "many"}}'):
        (tmp_path / "study.json").write_text(content)
        p = run_main("study", "--out", tmp_path, "--device", "cpu")
        _assert_one_clear_line(p)
        assert "study.json" in p.stderr


# ---------------------------------------------------------------------- single items


def test_lock_folder_is_named(run_folders, tmp_path):
    # (with --resume the folder is refused first: it holds no run to continue)
    p = run_main("train", THINNER, "--out", run_folders["lock_is_a_folder"], "--device", "cpu")
    assert ".lock is a folder" in p.stderr


def test_damaged_config_names_the_file_and_the_field(run_folders):
    p = run_main(
        "train", THINNER, "--out", run_folders["seed_a_string"], "--resume", "--device", "cpu"
    )
    assert "config.json" in p.stderr and "'seed' should be a whole number" in p.stderr
    p = run_main(
        "train", THINNER, "--out", run_folders["recipe_bad_lr"], "--resume", "--device", "cpu"
    )
    assert "'lr' should be a finite number" in p.stderr


def test_a_picture_is_not_a_checkpoint_and_a_missing_path_does_not_exist(hostile):
    p = run_main("evaluate", hostile["picture"])
    assert p.stderr.strip() == f"error: not a checkpoint or run folder: {hostile['picture']}"
    p = run_main("evaluate", hostile["missing"])
    assert "does not exist" in p.stderr


def test_keras_file_declaring_gigabytes_is_refused_before_reading(hostile, tmp_path):
    import tracemalloc

    tracemalloc.start()
    p = run_main("import-keras", hostile["keras_huge"], "--model", THINNER, "--out", tmp_path / "r")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert p.returncode == 2 and "(99999, 99999, 3, 24)" in p.stderr
    assert peak < 50e6  # the declared 360 GB were never allocated
    p = run_main("import-keras", hostile["keras_strings"], "--out", tmp_path / "r")
    assert "not floating-point weights" in p.stderr


@pytest.mark.slow
def test_a_model_of_three_classes_is_not_evaluated_on_ten(cifar10_dir, tmp_path):
    run = _three_class_run(tmp_path)
    p = run_main(
        "evaluate", run, "--no-verify", "--limit-test", "30", env={"CIFAR10_DIR": str(cifar10_dir)}
    )
    _assert_one_clear_line(p)
    assert "predicts 3 classes but the data has 10" in p.stderr


def test_import_keras_and_export_into_a_read_only_place(tmp_path, hostile):
    run = make_run(tmp_path / "run", confident_model(THINNER))
    src = tmp_path / "x.weights.h5"
    assert run_main("export-keras", run, "--out", src).returncode == 0
    with read_only_folder(tmp_path / "ro") as ro:
        p = run_main("import-keras", src, "--out", ro / "run")
        _assert_one_clear_line(p)
        p = run_main("export", run, "--format", "torchscript", "--out", ro / "model.ts")
        _assert_one_clear_line(p)
        assert "could not write the TorchScript file" in p.stderr
        assert "checkpoint" not in p.stderr and "resume" not in p.stderr


def test_export_never_overwrites_a_file_of_a_run(tmp_path):
    run = make_run(tmp_path / "run", confident_model(THINNER))
    before = (run / "model.pt").read_bytes()
    for fmt in ("torchscript", "onnx"):
        p = run_main("export", run, "--format", fmt, "--out", run / "model.pt")
        _assert_one_clear_line(p)
        assert "is a file of the run" in p.stderr
    p = run_main("export-keras", run, "--out", run / "result.json")
    assert p.returncode == 2
    assert (run / "model.pt").read_bytes() == before
    assert run_main("evaluate", run, "--help").returncode == 0


def test_empty_out_and_force_without_resume_are_refused(tmp_path):
    p = run_main("train", THINNER, "--out", "", "--device", "cpu")
    _assert_one_clear_line(p)
    p = run_main("train", THINNER, "--force", "--out", tmp_path / "r", "--device", "cpu")
    _assert_one_clear_line(p)
    assert "--resume" in p.stderr and not (tmp_path / "r").exists()


def test_predict_on_a_fifo_does_not_block(hostile, tmp_path):
    run = make_run(tmp_path / "run", confident_model(THINNER))
    p = subprocess.run(
        [sys.executable, "-m", "alexnet_cifar", "predict", str(run), str(hostile["fifo"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    _assert_one_clear_line(p)
    assert "not a regular file" in p.stderr


def test_argument_errors_are_one_line_and_point_to_help():
    p = run_main("train", THINNER, "--epochs", "0")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "--epochs must be at least 1" in lines[0] and "--help" in lines[0]
    assert "usage:" not in p.stderr


# ---------------------------------------------------------------------- run folders in trouble

TINY_RUN = [THINNER, "--epochs", "2", "--batch-size", "32", "--limit-train", "64"]
TINY_RUN += ["--limit-test", "50", "--seed", "1", "--device", "cpu", "--no-verify"]


def _refuse_constant(token: str):
    pytest.fail(f"a file holds the non-JSON token {token}")


@pytest.fixture(scope="module")
def trained_run(cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    p = run_main("train", *TINY_RUN, "--out", out, env={"CIFAR10_DIR": str(cifar10_dir)})
    assert p.returncode == 0, p.stderr
    return out


@pytest.mark.slow
@pytest.mark.real_data
def test_a_real_full_disk_is_one_line_and_leaves_no_temporary_file(cifar10_dir, tmp_path):
    from .fs_helpers import small_filesystem

    with small_filesystem(tmp_path / "small", size="4m") as (disk, preexec):
        out = disk / "run"
        p = subprocess.run(
            [sys.executable, "-m", "alexnet_cifar", "train", *TINY_RUN, "--out", str(out)],
            capture_output=True,
            text=True,
            env=dict(os.environ, CIFAR10_DIR=str(cifar10_dir)),
            preexec_fn=preexec,
            timeout=300,
        )
        _assert_one_clear_line(p)
        assert "the disk is full" in p.stderr or "too large" in p.stderr
        assert "could not write the checkpoint" in p.stderr
        assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.real_data
def test_weights_broken_by_the_last_update_are_not_a_success(cifar10, tmp_path):
    from alexnet_cifar.errors import NonFiniteLossError
    from alexnet_cifar.training.trainer import train

    out = tmp_path / "run"

    def break_after_the_last_step(trainer, epoch, step):
        if (epoch, step) == (2, 4):  # the loss of this step was finite; the update is not
            with torch.no_grad():
                trainer.run.model.layers.fc3.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="epoch 3"):
        train(train_options(out), data=cifar10, on_step=break_after_the_last_step)
    assert not (out / "model.pt").exists() and not (out / "result.json").exists()
    for f in out.glob("*.json"):  # no NaN or Infinity tokens, which JSON readers refuse
        json.loads(f.read_text(), parse_constant=_refuse_constant)


@pytest.mark.slow
@pytest.mark.real_data
def test_stale_temporary_files_are_removed_at_the_next_start(cifar10_dir, trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    stale = [out / f".checkpoint.pt.{i}abc.tmp" for i in range(3)] + [out / ".metrics.csv.x.tmp"]
    for f in stale:
        f.write_bytes(b"\0" * 1000)
    keep = out / "notes.tmp"  # not ours
    keep.write_text("mine")
    p = run_main(
        "train", *TINY_RUN, "--out", out, "--resume", env={"CIFAR10_DIR": str(cifar10_dir)}
    )
    assert p.returncode == 0, p.stderr
    assert not any(f.exists() for f in stale) and keep.exists()


@pytest.mark.slow
@pytest.mark.real_data
def test_a_deleted_config_is_rewritten_on_resume(cifar10_dir, trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    (out / "config.json").unlink()
    (out / "result.json").unlink()
    (out / "model.pt").unlink()
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    p = run_main("train", THINNER, "--out", out, "--resume", "--device", "cpu", env=env)
    assert p.returncode == 0, p.stderr  # the settings came from the checkpoint
    config = json.loads((out / "config.json").read_text())
    assert (config["seed"], config["limit_train"], config["recipe"]["epochs"]) == (1, 64, 2)


@pytest.mark.slow
@pytest.mark.real_data
def test_a_newest_checkpoint_with_the_wrong_tensors_falls_back(cifar10_dir, tmp_path):
    out = tmp_path / "run"
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    # a checkpoint every epoch, so that the one before the last is there to fall back to
    every_epoch = ("--checkpoint-every", "0")
    assert run_main("train", *TINY_RUN, *every_epoch, "--out", out, env=env).returncode == 0
    ref = metric_rows(out)
    (out / "result.json").unlink()
    state = torch.load(out / "checkpoint.prev.pt", weights_only=True)
    state["epoch"] = 1
    del state["model"]["layers.fc3.bias"]
    state.pop("digest", None)
    torch.save(state, out / "checkpoint.pt")  # a whole zip archive, the wrong tensors inside
    p = run_main("train", *TINY_RUN, "--out", out, "--resume", env=env)
    assert p.returncode == 0, p.stderr
    assert "falling back to the previous checkpoint" in p.stderr
    assert metric_rows(out) == ref


@pytest.mark.slow
@pytest.mark.real_data
def test_an_extended_run_interrupted_is_not_taken_for_finished(cifar10_dir, trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet_cifar", "train", *TINY_RUN, "--out", str(out)]
        + ["--resume", "--force", "--epochs", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **env),
    )
    while not proc.stdout.readline().startswith("epoch 3/40"):
        assert proc.poll() is None, proc.communicate()
    proc.send_signal(2)
    proc.communicate(timeout=120)
    assert not (out / "result.json").exists() and not (out / "model.pt").exists()
    p = run_main("report", out, "--out", tmp_path / "report")
    assert p.returncode == 0 and "unfinished" in (tmp_path / "report" / "report.md").read_text()


# ---------------------------------------------------------------------- report inputs


def _with_metrics(run: Path, folder: Path, change) -> Path:
    import csv

    shutil.copytree(run, folder)
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    change(rows)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


@pytest.mark.slow
@pytest.mark.real_data
def test_a_diverged_run_is_reportable(trained_run, tmp_path):
    def diverge(rows):
        rows[-1].update(val_loss="nan", val_accuracy="nan", seconds="nan", loss="inf")

    run = _with_metrics(trained_run, tmp_path / "diverged", diverge)
    p = run_main("report", run, "--out", tmp_path / "report")
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| diverged |" in md and "run diverged" in md
    assert not re.search(r"nan(%| pts|\s*\|)", md, re.IGNORECASE)
    summary = (tmp_path / "report" / "summary.json").read_text()
    json.loads(summary, parse_constant=_refuse_constant)


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("name", ["$x$ run", "back\\slash", "<img src=x onerror=alert(1)>`|*"])
def test_hostile_run_names_are_shown_as_typed(trained_run, tmp_path, name):
    run = tmp_path / name
    shutil.copytree(trained_run, run)
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    p = run_main("report", run, other, "--out", tmp_path / "report")
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    html_text = (tmp_path / "report" / "report.html").read_text()
    # A Markdown renderer shows the name as text (in code spans or escaped), never as HTML.
    rendered = markdown.markdown(md, extensions=["tables"])
    assert "<img src=x" not in rendered and "<img src=x" not in html_text


@pytest.mark.slow
@pytest.mark.real_data
def test_a_run_folder_with_a_wrong_config_is_left_out_with_a_warning(trained_run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(trained_run, bad)
    config = json.loads((bad / "config.json").read_text())
    config["model"], config["recipe"]["lr"] = "resnet", "fast"
    (bad / "config.json").write_text(json.dumps(config))
    p = run_main("report", trained_run, bad, "--out", tmp_path / "report")
    assert p.returncode == 0, p.stderr
    assert p.stderr.startswith("warning: left out of the report:") and "'model'" in p.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert len(summary["runs"]) == 1
    config["model"] = THINNER
    (bad / "config.json").write_text(json.dumps(config))
    p = run_main("report", bad, "--out", tmp_path / "report2")
    _assert_one_clear_line(p)
    assert "config.json" in p.stderr and "'lr' should be a finite number" in p.stderr
