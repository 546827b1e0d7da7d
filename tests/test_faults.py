"""Faults injected on purpose: kills, signals, damaged files, full disks, locks, bad arguments.

Each test names the fault of docs/reliability.md it proves.
"""

import contextlib
import errno
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alexnet_cifar import load_model
from alexnet_cifar.checkpoint import (
    CheckpointError,
    RunLock,
    load_checkpoint,
    read_state,
    save_model_file,
)
from alexnet_cifar.cli import main
from alexnet_cifar.errors import FileWriteError
from alexnet_cifar.models import PRESETS, build_model
from alexnet_cifar.train import NonFiniteLossError, TrainingInterrupted, train

from .helpers import (
    REF_ARGS,
    interrupt_at,
    metric_rows,
    run_cli,
    run_main,
    train_options,
    write_binary_folder,
)


def _start(args, cifar10_dir):
    env = dict(os.environ, CIFAR10_DIR=str(cifar10_dir))
    return subprocess.Popen(
        [sys.executable, "-m", "alexnet_cifar", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# ---------------------------------------------------------------------- 1. kill -9


@pytest.mark.real_data
def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_metrics(
    cifar10_dir, reference_run, tmp_path
):
    out = tmp_path / "run"
    proc = _start([*REF_ARGS, "--out", str(out)], cifar10_dir)
    _wait_for(out / "checkpoint.pt", proc)
    delay = random.uniform(0.0, 2.0)  # somewhere in epoch 2 or 3 (about 1.5 s each)
    time.sleep(delay)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.communicate()
    finished_anyway = proc.returncode == 0
    # whatever the moment, the newest checkpoint on disk is whole
    state, _ = load_checkpoint(out, warn=lambda m: pytest.fail(m))
    assert state["epoch"] >= 1

    p = run_main(
        "train", *REF_ARGS, "--out", str(out), "--resume", env={"CIFAR10_DIR": str(cifar10_dir)}
    )
    assert p.returncode == 0, (delay, p.stderr)
    assert metric_rows(out) == metric_rows(reference_run), (
        f"killed after {delay:.2f}s ({finished_anyway=})"
    )
    a, b = load_model(out), load_model(reference_run)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------- 2. SIGTERM


@pytest.mark.real_data
def test_sigterm_saves_says_how_to_resume_and_exits_nonzero(cifar10_dir, reference_run, tmp_path):
    out = tmp_path / "run"
    proc = _start([*REF_ARGS, "--out", str(out)], cifar10_dir)
    _wait_for(out / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "Resume with: " in err and " train alexnet_thinner_4 " in err
    assert "Traceback" not in err
    p = run_main(
        "train", *REF_ARGS, "--out", str(out), "--resume", env={"CIFAR10_DIR": str(cifar10_dir)}
    )
    assert p.returncode == 0, p.stderr
    assert metric_rows(out) == metric_rows(reference_run)


# ---------------------------------------------------------------------- 3. damaged checkpoints


@pytest.fixture
def interrupted_run(cifar10, tmp_path):
    """A run stopped in epoch 2: checkpoint.pt mid-epoch, checkpoint.prev.pt at epoch 1's end."""
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(train_options(out), data=cifar10, on_step=interrupt_at(1, 2))
    assert read_state(out / "checkpoint.pt")["step"] == 3
    assert read_state(out / "checkpoint.prev.pt")["epoch"] == 1
    return out


def _flip_byte(path: Path, where: float = 0.6) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * where)] ^= 0x55
    path.write_bytes(bytes(raw))


@pytest.mark.real_data
@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    cifar10, reference_run, interrupted_run, damage, capsys
):
    out = interrupted_run
    ckpt = out / "checkpoint.pt"
    if damage == "flipped byte":
        _flip_byte(ckpt)  # a byte inside the tensors: torch.load alone would not notice
    else:
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is damaged"):
        read_state(ckpt)
    train(train_options(out, resume=True), data=cifar10)
    err = capsys.readouterr().err
    assert "falling back to the previous checkpoint" in err and "checkpoint.prev.pt" in err
    assert metric_rows(out) == metric_rows(reference_run)


@pytest.mark.real_data
def test_both_checkpoints_damaged_is_a_clear_error(cifar10_dir, interrupted_run):
    out = interrupted_run
    _flip_byte(out / "checkpoint.pt")
    (out / "checkpoint.prev.pt").write_bytes(b"garbage")
    p = run_main(
        "train", *REF_ARGS, "--out", str(out), "--resume", env={"CIFAR10_DIR": str(cifar10_dir)}
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "no usable checkpoint" in p.stderr
    assert "checkpoint.pt is damaged" in p.stderr and "checkpoint.prev.pt" in p.stderr


# ---------------------------------------------------------------------- 4. wrong checkpoint


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


def test_model_file_of_another_shape_is_refused(tmp_path):
    torch.manual_seed(0)
    alexnet = build_model("alexnet")
    path = tmp_path / "model.pt"
    save_model_file(path, PRESETS["alexnet_thinner_4"].to_dict(), alexnet.state_dict(), {})
    with pytest.raises(CheckpointError, match="does not hold a usable alexnet-cifar model"):
        load_model(path)


def test_checkpoints_load_without_running_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "alexnet-cifar-checkpoint", "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="damaged or not a checkpoint"):
        read_state(path)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------- 5. non-finite loss


@pytest.mark.real_data
def test_nonfinite_loss_stops_keeps_last_good_checkpoint(cifar10, tmp_path):
    out = tmp_path / "run"

    def poison(trainer, epoch, step):
        if (epoch, step) == (1, 2):
            with torch.no_grad():
                trainer.model.layers.conv3.weight.fill_(float("inf"))

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 4") as e:
        train(train_options(out), data=cifar10, on_step=poison)
    assert "end of epoch 1" in str(e.value)
    state = read_state(out / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.real_data
def test_nonfinite_loss_exit_code(cifar10_dir, tmp_path):
    p = run_main(
        "train",
        "alexnet_thinner_4",
        "--lr",
        "1e9",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--limit-train",
        "96",
        "--limit-test",
        "20",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
        env={"CIFAR10_DIR": str(cifar10_dir)},
    )
    assert p.returncode == 3, p.stderr
    assert "NaN or infinite in epoch 1, step" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ---------------------------------------------------------------------- 6. full disk


@pytest.mark.real_data
def test_full_disk_fails_clearly_and_leaves_nothing_half_written(
    cifar10, reference_run, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def save_then_fill_the_disk(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint after epoch 2
            f.write(b"\0" * 4096)  # some bytes land, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    with pytest.raises(FileWriteError, match="checkpoint .*: the disk is full") as e:
        train(train_options(out), data=cifar10)
    assert "intact" in str(e.value)
    monkeypatch.setattr(torch, "save", real_save)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert read_state(out / "checkpoint.pt")["epoch"] == 1  # the good one survived
    train(train_options(out, resume=True), data=cifar10)
    assert metric_rows(out) == metric_rows(reference_run)


def test_unwritable_metrics_file_is_a_clear_error(tmp_path, monkeypatch):
    from alexnet_cifar import files

    def refuse(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(FileWriteError, match="could not write the metrics .*Read-only file system"):
        files.atomic_write_text(tmp_path / "metrics.csv", "x", what="the metrics")
    assert not (tmp_path / "metrics.csv").exists()


# ---------------------------------------------------------------------- 7. two runs, one folder


@pytest.mark.real_data
def test_second_trainer_on_the_same_folder_is_refused(cifar10_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        p = run_cli("train", *REF_ARGS, "--out", str(out), env={"CIFAR10_DIR": str(cifar10_dir)})
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"another trainer (pid {os.getpid()}) is using" in p.stderr


def test_stale_lock_of_a_dead_process_does_not_block(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (tmp_path / ".lock").write_text(f"{dead}\n")  # left behind, nobody holds it
    with RunLock(tmp_path) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
    # a lock held by a process that then dies is released by the kernel
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from alexnet_cifar.checkpoint import RunLock; "
            f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match="another trainer"):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    RunLock(tmp_path).acquire().release()


# ---------------------------------------------------------------------- 8. bad data via the CLI


def test_bad_data_files_are_named_by_the_cli(tmp_path):
    write_binary_folder(tmp_path, n_per_file=5)
    f = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    f.write_bytes(f.read_bytes()[:-7])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(
            [
                "train",
                "alexnet",
                "--data-dir",
                str(tmp_path),
                "--no-verify",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    assert code == 2 and "data_batch_3.bin is truncated" in err.getvalue()


# ---------------------------------------------------------------------- 9. bad arguments


def _run_main(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return code, err.getvalue()


def _clean_failure(code, err):
    assert code not in (0, None), err
    assert "Traceback" not in err
    assert err.strip(), "a failure must say something"


bad_counts = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=10**9 + 1, max_value=10**30),
    st.text(min_size=1, max_size=8).filter(lambda t: not t.strip().lstrip("+").isdigit()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flag=st.sampled_from(
        ["--epochs", "--batch-size", "--limit-train", "--limit-test", "--eval-batch-size", "--seed"]
    ),
    value=bad_counts,
)
def test_bad_numbers_never_trace_back(flag, value):
    if flag == "--seed" and isinstance(value, int) and value == 0:
        value = -1  # seed 0 is valid
    code, err = _run_main(["train", "alexnet", flag, str(value), "--device", "cpu"])
    _clean_failure(code, err)
    assert flag in err or "argument" in err


@settings(max_examples=40, deadline=None)
@given(
    device=st.text(max_size=12).filter(
        lambda d: (
            d.strip().lower() not in ("auto", "cpu", "cuda")
            and not (d.strip().lower().startswith("cuda:") and d.strip()[5:].isdigit())
        )
    )
)
def test_unknown_devices_never_trace_back(device):
    code, err = _run_main(["train", "alexnet", "--device", device])
    _clean_failure(code, err)


@settings(max_examples=40, deadline=None)
@given(model=st.text(max_size=24).filter(lambda m: m not in PRESETS))
def test_unknown_models_never_trace_back(model):
    for cmd in (["train", model], ["summary", model], ["bench", "--models", model or ","]):
        code, err = _run_main([*cmd, "--device", "cpu"] if cmd[0] != "summary" else cmd)
        _clean_failure(code, err)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(limit=st.integers(min_value=101, max_value=10**9), which=st.sampled_from(["train", "test"]))
def test_absurd_limits_never_trace_back(tmp_path_factory, limit, which):
    root = tmp_path_factory.mktemp("data")
    write_binary_folder(root, n_per_file=20)  # 100 train and 20 test images
    if which == "test":
        limit = max(limit, 21)
    code, err = _run_main(
        [
            "train",
            "alexnet",
            f"--limit-{which}",
            str(limit),
            "--data-dir",
            str(root),
            "--no-verify",
            "--device",
            "cpu",
            "--out",
            str(root / "run"),
        ]
    )
    _clean_failure(code, err)
    assert f"--limit-{which} must lie between 1 and" in err


def test_checkpoint_is_a_snapshot_even_while_written_in_the_background(tmp_path):
    from alexnet_cifar.checkpoint import BackgroundWriter, save_checkpoint

    w = torch.ones(1000)
    writer = BackgroundWriter()
    save_checkpoint(tmp_path, {"epoch": 1, "step": 0, "model": {"w": w}}, writer=writer)
    w.fill_(7.0)  # training goes on while the file is written
    writer.wait()
    assert torch.equal(read_state(tmp_path / "checkpoint.pt")["model"]["w"], torch.ones(1000))

    def fail():
        raise OSError(errno.ENOSPC, "No space left on device")

    writer.submit(fail)
    with pytest.raises(OSError):
        writer.wait()  # a failed background write is never silent
    writer.wait()  # and is reported once
