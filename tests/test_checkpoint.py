"""checkpoint: checksummed saves and loads, damage and the fall-back to the previous checkpoint,
the background writer, model files, loading without running code, and the run lock.

Each test names the fault of docs/reliability.md it proves.
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet_cifar import load_model
from alexnet_cifar.models import PRESETS, build_model
from alexnet_cifar.training.checkpoint import (
    CheckpointError,
    RunLock,
    read_state,
    save_model_file,
)
from alexnet_cifar.training.trainer import train

from .helpers import REF_ARGS, metric_rows, run_cli, run_main, train_options

# ---------------------------------------------------------------------- damage, background writes


def _flip_byte(path: Path, where: float = 0.6) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * where)] ^= 0x55
    path.write_bytes(bytes(raw))


@pytest.mark.real_data
@pytest.mark.slow
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
@pytest.mark.slow
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


def test_checkpoint_is_a_snapshot_even_while_written_in_the_background(tmp_path):
    from alexnet_cifar.training.checkpoint import BackgroundWriter, save_checkpoint

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


# ---------------------------------------------------------------------- model files, unpickling


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
    with pytest.raises(CheckpointError, match="not a checkpoint of this tool") as e:
        read_state(path)
    assert not (tmp_path / "pwned").exists()
    assert "weights_only" not in str(e.value)  # no advice to switch the safety off


# ---------------------------------------------------------------------- two runs, one folder


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
            "import sys, time; from alexnet_cifar.training.checkpoint import RunLock; "
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


def test_checkpoints_and_model_files_are_sealed_by_one_function(tmp_path, monkeypatch):
    # One function writes the digest read_state checks, for both kinds of file (a second copy
    # of it inside save_checkpoint could drift).
    import alexnet_cifar.training.checkpoint as ckpt

    sealed = []
    real = ckpt._seal

    def spy(body):
        sealed.append(body["format"])
        return real(body)

    monkeypatch.setattr(ckpt, "_seal", spy)
    model = build_model("alexnet_thinner_4")
    ckpt.save_checkpoint(tmp_path, {"epoch": 1, "model": model.state_dict()})
    ckpt.save_model_file(tmp_path / "model.pt", model.config.to_dict(), model.state_dict(), {})
    assert sealed == [ckpt.CHECKPOINT_FORMAT, ckpt.MODEL_FORMAT]
    # read_state checks the digest each was sealed with
    assert read_state(tmp_path / "checkpoint.pt")["format"] == ckpt.CHECKPOINT_FORMAT
    assert read_state(tmp_path / "model.pt")["format"] == ckpt.MODEL_FORMAT


class _Injected(BaseException):
    """Stands for the exception a second Ctrl-C raises in the main thread."""


def _interrupt_at_line(k: int):
    """A trace function raising _Injected at the k-th stage of the writer's life: each line
    of its own code, the call of Thread.start (the thread made, not started) and the wait
    inside it (the thread started, start() not yet returned). A signal handler runs at such
    points; deeper in the threading module's lock bookkeeping an exception would break
    CPython itself, not the writer."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        code = frame.f_code
        ours = code.co_filename.endswith("checkpoint.py")
        in_start = (
            code.co_filename.endswith("threading.py")
            and event == "call"
            and (code.co_name == "start" or frame.f_back.f_code.co_name == "start")
        )
        if (ours and event == "line") or in_start:
            count += 1
            if count == k:
                raise _Injected
        return trace if ours else None

    return trace


def test_a_signal_at_any_line_of_the_writers_life_never_joins_an_unstarted_thread():
    """The second Ctrl-C race: an exception at each line of submit (thread made, being
    started, started) and of wait; afterwards wait() as the trainer's cleanup calls it raises
    no RuntimeError, and every write that began is finished."""
    import threading

    from alexnet_cifar.training.checkpoint import BackgroundWriter

    k, cut_at_least_once = 1, False
    while True:
        writer, done = BackgroundWriter(), []
        writer.submit(lambda done=done: done.append("first"))
        before = set(threading.enumerate())
        sys.settrace(_interrupt_at_line(k))
        try:
            writer.submit(lambda done=done: done.append("second"))
            writer.wait()
            interrupted = False
        except _Injected:
            interrupted = cut_at_least_once = True
        finally:
            sys.settrace(None)
        writer.wait(quietly=True)  # the trainer's cleanup: never "cannot join thread ..."
        for t in set(threading.enumerate()) - before:
            if t._started.wait(2):  # made before start() was cut: it still runs to the end
                t.join(5)
        assert done[0] == "first" and done.count("second") <= 1, (k, done)
        if not interrupted:
            assert done == ["first", "second"]
            break
        k += 1
    assert cut_at_least_once and k > 8  # the trace did reach into Thread.start


def test_a_second_signal_while_held_stops_when_the_held_step_is_done():
    import signal as signals

    from alexnet_cifar.errors import TrainingInterrupted
    from alexnet_cifar.training.stop_signals import StopSignals

    with StopSignals() as stop:
        os.kill(os.getpid(), signals.SIGINT)
        assert stop.signum == signals.SIGINT  # the first: a flag, checked at safe points
        steps = []
        with pytest.raises(TrainingInterrupted) as e:
            with stop.held():
                os.kill(os.getpid(), signals.SIGINT)
                steps.append("the held step goes on")
        assert steps == ["the held step goes on"] and e.value.exit_code == 130
        with pytest.raises(TrainingInterrupted):  # outside held: at once
            os.kill(os.getpid(), signals.SIGINT)
            for _ in range(100):
                pass


def test_trained_engine_is_the_run_folders_record_or_none(tmp_path):
    from alexnet_cifar.training.checkpoint import trained_engine

    run = tmp_path / "run"
    run.mkdir()
    assert trained_engine(run) is None  # no config.json: nothing recorded
    used = {"precision": "bf16", "channels_last": True}
    record = {"engine": {"precision": "fp32"}, "engine_used": used}
    (run / "config.json").write_text(json.dumps(record))
    assert trained_engine(run) == used
    assert trained_engine(run / "model.pt") == used  # a file inside the run folder
    (run / "config.json").write_text(json.dumps({"engine": {"precision": "fp32"}}))
    assert trained_engine(run)["precision"] == "fp32"  # an older run's record
    (run / "config.json").write_text("{not json")
    assert trained_engine(run) is None  # damaged: the caller's default
    (run / "config.json").write_text(json.dumps({"engine_used": {"precision": "fp16"}}))
    assert trained_engine(run) is None  # not a precision this package trains in
