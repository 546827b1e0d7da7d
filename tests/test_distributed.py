"""Data parallel on PyTorch's own machinery: two gloo ranks under torchrun compute what one
process computes, and a distributed run resumes."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from alexnet_cifar import load_model
from alexnet_cifar.distributed import shard

# 5 steps an epoch, 2 epochs; fp32, where splitting a batch over ranks changes only the order of
# sums (bf16 rounds each rank's half-batch products differently)
# fmt: off
ARGS = ["alexnet_thinner_4", "--batch-size", "32", "--limit-train", "160", "--limit-test", "60",
        "--epochs", "2", "--device", "cpu", "--seed", "3", "--no-progress", "--no-verify",
        "--checkpoint-every", "0", "--precision", "fp32"]
# fmt: on


def _env(cifar10_dir):
    return dict(os.environ, CIFAR10_DIR=str(cifar10_dir), OMP_NUM_THREADS="1")


def _single(cifar10_dir, out, *extra):
    """One process: this one (the reference needs no interpreter of its own)."""
    from alexnet_cifar.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs under torchrun: the same float arithmetic
    try:
        code = main(
            ["train", *ARGS, *extra, "--out", str(out), "--quiet", "--data-dir", str(cifar10_dir)]
        )
    finally:
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess([], code, "", "")


def _torchrun(cifar10_dir, out, *extra, popen=False):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "alexnet_cifar",
        "train",
        *ARGS,
        *extra,
        "--out",
        str(out),
    ]
    if popen:
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(cifar10_dir)
        )
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(cifar10_dir), timeout=600)


def _rows(out):
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _close_params(a, b, rtol, atol):
    for (n, p), q in zip(a.items(), b.values()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=n)


def _close_rows(a, b, rel):
    ra, rb = _rows(a), _rows(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert float(x[k]) == pytest.approx(float(y[k]), rel=rel, abs=1e-6), k


def test_shards_cover_the_batch_evenly():
    for batch in (1, 2, 7, 16, 64):
        for world in (1, 2, 3, 8):
            parts = [shard(batch, world, r) for r in range(world)]
            assert sum(size for _, size in parts) == batch
            assert [o for o, _ in parts] == [sum(s for _, s in parts[:r]) for r in range(world)]
            assert max(s for _, s in parts) - min(s for _, s in parts) <= 1


@pytest.fixture(scope="module")
def single_run(cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    p = _single(cifar10_dir, out)
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="module")
def ddp_run(cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    p = _torchrun(cifar10_dir, out)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stdout.count("final test accuracy") == 1  # only rank 0 speaks ...
    assert len(list(out.glob("events.out.tfevents*"))) == 1  # ... and writes
    return out


@pytest.mark.real_data
@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(single_run, ddp_run):
    from alexnet_cifar.training.checkpoint import read_state

    # after the first epoch's 5 steps: the same parameters to float tolerance
    one = read_state(single_run / "checkpoint.prev.pt")
    two = read_state(ddp_run / "checkpoint.prev.pt")
    assert one["epoch"] == two["epoch"] == 1
    _close_params(one["model"], two["model"], rtol=1e-4, atol=1e-6)
    first = float(_rows(single_run)[0]["loss"]), float(_rows(ddp_run)[0]["loss"])
    assert first[0] == pytest.approx(first[1], rel=1e-6)
    # later, float rounding compounds (max-pool ties, ReLU edges) but stays small
    _close_rows(single_run, ddp_run, rel=5e-3)


@pytest.mark.real_data
@pytest.mark.slow
def test_distributed_run_interrupted_and_resumed(cifar10_dir, ddp_run, tmp_path):
    out = tmp_path / "ddp"
    proc = _torchrun(cifar10_dir, out, popen=True)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, err
    assert "Resume with" in err
    p = _torchrun(cifar10_dir, out, "--resume")
    assert p.returncode == 0, p.stderr
    # the same ranks, the same steps: what the uninterrupted distributed run computed
    _close_rows(out, ddp_run, rel=1e-9)
    _close_params(load_model(out).state_dict(), load_model(ddp_run).state_dict(), 0, 0)


def test_the_ranks_agree_on_a_stop_every_few_steps_and_at_each_epoch_end():
    """What a data-parallel run reads back inside an epoch for a Ctrl-C: one all-reduce every
    5 steps on the CPU, every 50 on CUDA (the README says so), and one at each epoch's end; a
    single process reads nothing for it."""
    from alexnet_cifar.distributed import DistContext
    from alexnet_cifar.training.stop_signals import StopProtocol, StopSignals

    class Ranks(DistContext):  # two ranks, as far as the stop protocol looks
        calls = 0

        def agreed_signal(self, signum, device):
            Ranks.calls += 1
            return signum

    for device, every in (("cpu", 5), ("cuda", 50)):
        Ranks.calls = 0
        stop = StopProtocol(StopSignals(), Ranks(world_size=2), torch.device(device))
        assert not any(stop.requested(step, last=False) for step in range(100))
        assert Ranks.calls == 100 // every
        stop.requested(99, last=True)
        assert Ranks.calls == 100 // every + 1
    alone = StopProtocol(StopSignals(), DistContext(), torch.device("cpu"))
    assert not any(alone.requested(step, last=False) for step in range(10))
