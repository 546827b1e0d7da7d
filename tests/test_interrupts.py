"""Real processes stopped the ways users stop them: Ctrl-C during the evaluation, twice, a
closed pipe, and the printed command that resumes, run as printed from where the user is."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch

from alexnet_cifar.cli import main

from .helpers import metric_rows

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

# 2 steps of 32 images an epoch
BASE = "alexnet_thinner_4 --batch-size 32 --limit-train 64 --seed 3 --device cpu --no-verify"
BASE = BASE.split()
# one epoch, on a test set large enough for its evaluation (seconds) to be caught in the act
ARGS = [*BASE, "--epochs", "1", "--limit-test", "1500"]
SMALL = [*BASE, "--epochs", "2", "--limit-test", "200"]


def _env(cifar10_dir, **extra) -> dict:
    return dict(os.environ, CIFAR10_DIR=str(cifar10_dir), **extra)


@pytest.fixture(scope="module")
def uninterrupted(cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    saved = os.environ.get("CIFAR10_DIR")
    os.environ["CIFAR10_DIR"] = str(cifar10_dir)
    try:
        assert main(["train", *ARGS, "--out", str(out), "--quiet"]) == 0
    finally:
        os.environ.pop("CIFAR10_DIR") if saved is None else os.environ.update(CIFAR10_DIR=saved)
    return out


def _terminal() -> tuple[int, int]:
    """(master, slave) of a pseudo-terminal 120 columns wide: the progress bars are drawn."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    return master, slave


def _read_until(fd: int, needle: bytes, proc, timeout: float = 120) -> bytes:
    """Read a pseudo-terminal until ``needle`` shows (the process still running)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert proc.poll() is None, seen.decode(errors="replace")
        assert time.monotonic() < deadline, seen.decode(errors="replace")
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            seen += os.read(fd, 4096)
    return seen


def _signals_during_the_evaluation(cifar10_dir, out: Path, count: int) -> tuple[int, float]:
    """Start a run, send ``count`` SIGINTs as soon as its evaluation's progress bar shows:
    (exit status, seconds from the first signal to the exit)."""
    master, slave = _terminal()
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet_cifar", "train", *ARGS, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=_env(cifar10_dir),
    )
    os.close(slave)
    try:
        _read_until(master, b"epoch 1/1: test", proc)  # the evaluation's own bar
        t0 = time.monotonic()
        for _ in range(count):
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        return proc.returncode, time.monotonic() - t0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_during_the_evaluation_stops_in_seconds_and_resumes_exactly(
    cifar10_dir, uninterrupted, tmp_path
):
    out = tmp_path / "run"
    returncode, stopped_after = _signals_during_the_evaluation(cifar10_dir, out, 1)
    assert returncode == 128 + signal.SIGINT
    assert stopped_after < 10, stopped_after
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (0, 2)  # trained, saved, not yet evaluated
    p = subprocess.run(
        [sys.executable, "-m", "alexnet_cifar", "train", *ARGS, "--out", str(out), "--resume"],
        capture_output=True,
        text=True,
        env=_env(cifar10_dir),
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert metric_rows(out) == metric_rows(uninterrupted)


def test_a_second_ctrl_c_stops_at_once_with_exit_130(cifar10_dir, tmp_path):
    returncode, _ = _signals_during_the_evaluation(cifar10_dir, tmp_path / "run", 2)
    assert returncode == 130  # an exit status, not death by the signal (-2)


def test_the_printed_resume_command_runs_as_printed(cifar10_dir, tmp_path):
    """The console script of the environment, called by its path (not on PATH); engine flags,
    a folder name with a space and non-ASCII letters: the printed command, run by a shell from
    the same folder, continues the run to the metrics of an uninterrupted one."""
    script = Path(sys.executable).parent / "alexnet-cifar"
    assert script.is_file()
    args = [*SMALL, "--channels-last"]
    env = _env(cifar10_dir, PATH="/usr/bin:/bin")
    out = tmp_path / "run ünï"
    proc = subprocess.Popen(
        [str(script), "train", *args, "--out", str(out), "--epochs", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    first = proc.stdout.readline()
    assert first.startswith("alexnet_thinner_4 on cpu: engine "), first  # the engine it runs
    line = proc.stdout.readline()
    assert line.startswith("epoch 1/3"), line  # after the first epoch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    resume = re.search(r"^Resume with: (.*)$", err, re.M).group(1)
    p = subprocess.run(resume, shell=True, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, (resume, p.stderr)
    whole = tmp_path / "whole"
    cmd = [str(script), "train", *args, "--out", str(whole), "--epochs", "3"]
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert len(metric_rows(out)) == 3
    assert metric_rows(out) == metric_rows(whole)  # channels_last was restored on resume


def test_a_closed_output_does_not_end_the_run(cifar10_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet_cifar", "train", *SMALL, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(cifar10_dir),
    )
    proc.stdout.readline()  # `... | head -1`: one line read, then the pipe is closed
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert (out / "model.pt").is_file() and (out / "result.json").is_file()
    log = (out / "train.log").read_text()
    assert "epoch 2/2" in log  # what could not be printed is in the run's log
