"""study --jobs: runs side by side on this machine, each in a process of its own, end with the
metrics of the same runs one after another; Ctrl-C stops them all, each with its checkpoint,
and the same command continues them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from alexnet_cifar.cli import main
from alexnet_cifar.cli.flags import flag_name
from alexnet_cifar.errors import SettingError
from alexnet_cifar.study.pool import available_cores, check_jobs, plan_processes

from .helpers import metric_rows, run_cli, run_main

# Two runs of alexnet_thinner_4 (seeds 0 and 1): 128 images in batches of 32, 4 epochs, fp32.
RUNS = ["alexnet_thinner_4/seed-0", "alexnet_thinner_4/seed-1"]
STUDY = [
    "--models", "alexnet_thinner_4", "--seeds", "2", "--epochs", "4", "--limit-train", "128",
    "--limit-test", "100", "--batch-size", "32", "--device", "cpu", "--precision", "fp32",
    "--checkpoint-every", "0", "--no-tensorboard", "--no-progress",
]  # fmt: skip


@pytest.mark.parametrize(
    "jobs, runs, cores, device, planned",
    [
        ("auto", 5, 2, "cpu", (1, 2)),  # 2 cores: one run on both, as --jobs 1
        ("auto", 5, 7, "cpu", (1, 7)),
        ("auto", 5, 8, "cpu", (2, 4)),  # at least 4 threads a run
        ("auto", 5, 16, "cpu", (4, 4)),
        ("auto", 2, 16, "cpu", (2, 8)),  # never more processes than runs
        ("auto", 1, 2, "cpu", (1, 2)),
        ("auto", 3, 8, "cuda", (1, 8)),  # one card: one run at a time
        (4, 2, 8, "cpu", (2, 4)),
        (2, 5, 1, "cpu", (2, 1)),  # at least one thread
        (1, 5, 4, "cpu", (1, 4)),
    ],
)
def test_processes_and_threads(jobs, runs, cores, device, planned):
    assert plan_processes(jobs, runs, cores, device) == planned


@pytest.mark.parametrize("jobs", [0, -1, "two", 1.5, True])
def test_a_bad_jobs_count_is_refused(jobs):
    with pytest.raises(SettingError) as e:
        check_jobs(jobs)
    assert e.value.render(flag_name).startswith("--jobs must be auto or a whole number")


def test_jobs_flag(tmp_path):
    bad = run_main("study", "--jobs", "0", "--out", tmp_path / "s")
    assert bad.returncode == 2 and "--jobs must be at least 1, not 0" in bad.stderr
    ray = run_main("study", "--jobs", "2", "--executor", "ray", "--out", tmp_path / "s")
    assert ray.returncode == 2
    assert "--jobs is for the runs on this machine; on Ray, --gpus-per-run" in ray.stderr
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def one_after_another(cifar10_dir, tmp_path_factory):
    """The study with --jobs 1, in this process, at the thread count each run of --jobs 2
    gets (CPU results are the same number for number at the same thread count)."""
    import torch

    out = tmp_path_factory.mktemp("jobs1") / "study"
    threads = torch.get_num_threads()
    torch.set_num_threads(plan_processes(2, 2, available_cores())[1])
    printed = io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
            mp.setenv("CIFAR10_DIR", str(cifar10_dir))
            code = main(["study", *STUDY, "--out", str(out), "--jobs", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, printed.getvalue()
    return out


def _same_runs(a, b) -> None:
    for run in RUNS:
        assert metric_rows(a / run) == metric_rows(b / run), run
        ra, rb = (json.loads((d / run / "result.json").read_text()) for d in (a, b))
        for key in ("test_accuracy", "test_loss", "best_test_accuracy", "confusion_matrix"):
            assert ra[key] == rb[key], (run, key)


@pytest.mark.real_data
@pytest.mark.slow
def test_two_at_once_end_as_one_after_another(one_after_another, cifar10_dir, tmp_path):
    out = tmp_path / "study"
    p = run_cli("study", *STUDY, "--out", out, "--jobs", "2", env={"CIFAR10_DIR": cifar10_dir})
    assert p.returncode == 0, p.stderr
    threads = plan_processes(2, 2, available_cores())[1]
    assert f"2 runs, 2 at a time, each in a process of its own with {threads} torch thread" in (
        p.stdout
    )
    # each line of a run, its epochs among them, names the run
    for i, seed in ((1, 0), (2, 1)):
        tag = f"[{i}/2] alexnet_thinner_4 seed {seed}: "
        assert sum(line.startswith(tag + "epoch ") for line in p.stdout.splitlines()) == 4
        assert tag + "best test accuracy" in p.stdout
    assert "2 of 2 done" in p.stdout
    _same_runs(out, one_after_another)
    for run in RUNS:  # each run's config.json records the study's command, not the worker's
        assert json.loads((out / run / "config.json").read_text())["command"][1:3] == [
            "study", "--models"]  # fmt: skip


def _start(args: list, cifar10_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "alexnet_cifar", "study", *map(str, args)],
        env=dict(os.environ, CIFAR10_DIR=str(cifar10_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of the study's own, as a terminal gives it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.real_data
@pytest.mark.slow
def test_ctrl_c_stops_every_run_and_the_same_command_continues_them(
    one_after_another, cifar10_dir, tmp_path
):
    out = tmp_path / "study"
    args = [*STUDY, "--out", out, "--jobs", "2"]
    p = _start(args, cifar10_dir)
    deadline = time.monotonic() + 300
    while not all((out / run / "metrics.csv").exists() for run in RUNS):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the study's process group
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 130, (stdout[-2000:], stderr)
    assert "SIGINT: the study stopped; every unfinished run kept its last checkpoint" in stderr
    assert f"study --out {out} --jobs 2" in stderr and "Traceback" not in stderr
    for run in RUNS:  # both stopped, each with a checkpoint
        assert (out / run / "checkpoint.pt").is_file() and not (out / run / "result.json").exists()
    assert stdout.count("stopped (SIGINT: stopped ") == 2

    # the same command, sliced: both go on to epoch 3 and stop there, unfinished
    sliced = run_cli("study", *args, "--stop-after", "3", env={"CIFAR10_DIR": cifar10_dir})
    assert sliced.returncode == 0, sliced.stderr
    assert sliced.stdout.count("stopped after epoch 3 of 4 (unfinished)") == 2
    assert "resuming" in sliced.stdout
    for run in RUNS:
        assert len(metric_rows(out / run)) == 3 and not (out / run / "result.json").exists()
    assert "unfinished (epoch 3 of 4)" in (out / "report.md").read_text()

    # the command printed at the stop (the study's own flags, the engine's among them, are
    # taken from its study.json)
    again = run_cli("study", "--out", out, "--jobs", "2", env={"CIFAR10_DIR": cifar10_dir})
    assert again.returncode == 0, again.stderr
    _same_runs(out, one_after_another)


@pytest.mark.real_data
@pytest.mark.slow
def test_a_signal_while_a_worker_starts_stops_the_runs_cleanly(cifar10_dir, tmp_path, monkeypatch):
    # SIGINT lands in the middle of starting the first worker, between its process and the
    # threads that listen to it: the study still signals every worker, waits for it and stops
    import alexnet_cifar.study.pool as pool

    started, real_popen = [], subprocess.Popen

    def popen_then_sigint(*args, **kw):
        proc = real_popen(*args, **kw)
        started.append(proc)
        if len(started) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return proc

    monkeypatch.setattr(pool.subprocess, "Popen", popen_then_sigint)
    out = tmp_path / "study"
    p = run_main(
        "study", *STUDY, "--out", out, "--jobs", "2", env={"CIFAR10_DIR": str(cifar10_dir)}
    )
    assert p.returncode == 130, (p.stdout[-2000:], p.stderr)
    assert "SIGINT: the study stopped" in p.stderr and "Traceback" not in p.stdout + p.stderr
    assert started and all(proc.poll() is not None for proc in started)  # none left running
    assert not any((out / run / "result.json").exists() for run in RUNS)


def test_auto_on_a_few_cores_trains_one_run_at_a_time_and_says_so(monkeypatch):
    import alexnet_cifar.study.pool as pool
    from alexnet_cifar.study.executors import Job
    from alexnet_cifar.training.run import TrainOptions

    ran, said = [], []
    monkeypatch.setattr(pool.Sequential, "run", lambda self, jobs, say: ran.append(jobs))
    monkeypatch.setattr(pool, "_Driver", None)  # no worker process may start
    jobs = [Job(f"[{i}/3]", TrainOptions("alexnet", f"s{i}", device="cpu")) for i in (1, 2, 3)]
    pool.LocalPool("auto", cores=2).run(jobs, said.append)
    assert ran == [jobs]
    assert said == ["3 runs, one at a time in this process on all 2 cores (auto gives each run "
                    "at least 4 threads)"]  # fmt: skip
    said.clear()
    pool.LocalPool(1, cores=2).run(jobs, said.append)
    assert said == []
