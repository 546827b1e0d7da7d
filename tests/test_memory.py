"""memory: a run whose memory cannot be had is refused in one line before anything is written,
and the estimate never refuses the runs people make (CPU, full data, batch 64 or 512)."""

from __future__ import annotations

import pytest
import torch

from alexnet_cifar.engine import memory
from alexnet_cifar.errors import SettingError
from alexnet_cifar.models import PRESETS, get_config

from .helpers import run_main

GIB = 2**30
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _check(model, batch, eval_batch, device=CPU, n_train=50_000, n_test=10_000, has=24 * GIB):
    memory.check_run_memory(
        get_config(model), batch, eval_batch, n_train, n_test, device, machine_bytes=has
    )


@pytest.mark.parametrize("model", sorted(PRESETS))
def test_the_runs_people_make_are_never_refused(model):
    for batch in (64, 512):
        _check(model, batch, 500)  # a 24 GiB machine, the whole data set
        _check(model, batch, 2000, CUDA, has=16 * GIB)  # a GPU of 16 GiB, CUDA's eval batch


def test_a_batch_or_an_evaluation_batch_that_cannot_fit_is_one_line_naming_both_sizes():
    with pytest.raises(SettingError) as refused:
        _check("alexnet_slim", 10**9, 500)
    text = str(refused.value)
    assert "\n" not in text and "batch_size=1000000000" in text
    assert "50,000 images a step" in text and "24.0 GiB" in text and "GiB" in text.split("needs")[1]
    with pytest.raises(SettingError, match="eval_batch_size=1000000000"):
        _check("alexnet_slim", 64, 10**9, has=4 * GIB)  # the whole test set at once
    _check("alexnet_slim", 64, 500, has=4 * GIB)
    # the batch is the data set at most: a huge batch on a small subset fits
    _check("alexnet_slim", 10**9, 10**9, n_train=1000, n_test=1000)


def test_what_the_machine_has_is_named_from_the_machine():
    has, words = memory.machine_memory(CPU)
    assert 2**27 < has < 2**50 and "memory" in words


@pytest.mark.real_data
@pytest.mark.slow
def test_train_with_a_batch_of_a_billion_is_refused_before_anything_is_written(
    cifar10_dir, tmp_path
):
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    out = tmp_path / "run"
    argv = ["train", "alexnet_slim", "--batch-size", "1000000000", "--device", "cpu"]
    p = run_main(*argv, "--no-verify", "--out", out, env=env)
    assert p.returncode == 2, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert "--batch-size 1000000000 (50,000 images a step) needs at least" in line
    assert "GiB" in line.split("more than")[1] and "choose a smaller --batch-size" in line
    assert not out.exists()
