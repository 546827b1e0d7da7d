"""executors: a study's runs one after another (stopped and continued, each ends as an
uninterrupted run), and what the Ray executor checks before anything starts."""

from __future__ import annotations

import json
import re
import sys

import pytest

from alexnet_cifar.cli.flags import flag_name
from alexnet_cifar.engine.options import EngineOptions
from alexnet_cifar.errors import ExecutorError, SettingError, TrainingInterrupted
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.study.executors import Job, RayExecutor, Sequential
from alexnet_cifar.training.trainer import TrainOptions

from .helpers import interrupt_at, metric_rows, write_binary_folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_binary_folder(root, n_per_file=20, seed=6)
    return root


def _job(i: int, n: int, out, data_dir) -> Job:
    opts = TrainOptions(
        model="alexnet_thinner_4",
        out=out,
        recipe=Recipe(epochs=2, batch_size=32),
        seed=1,
        device="cpu",
        data_dir=str(data_dir),
        verify=False,
        quiet=True,
        progress=False,
        tensorboard=False,
        resume=True,  # as a study runs them: a run with a checkpoint continues
        engine=EngineOptions(precision="fp32"),
    )
    return Job(f"[{i}/{n}] alexnet_thinner_4", opts)


@pytest.mark.slow
def test_sequential_runs_stop_and_continue_as_if_never_stopped(tmp_path, data_dir):
    # Two runs of the same settings: the first is stopped in its second epoch, the study is
    # run again, and the first ends exactly as the second, which was never stopped.
    jobs = [_job(i, 2, tmp_path / f"run{i}", data_dir) for i in (1, 2)]
    said = []
    with pytest.raises(TrainingInterrupted):
        Sequential(on_step=interrupt_at(1, 1)).run(jobs, said.append)
    assert said == [f"[1/2] alexnet_thinner_4: training in {tmp_path / 'run1'}"]
    assert (tmp_path / "run1" / "checkpoint.pt").is_file()
    assert not (tmp_path / "run2").exists()  # the next run never started

    said.clear()
    Sequential().run(jobs, said.append)
    assert said[0] == f"[1/2] alexnet_thinner_4: resuming in {tmp_path / 'run1'}"
    assert said[2] == f"[2/2] alexnet_thinner_4: training in {tmp_path / 'run2'}"
    for i, line in ((1, said[1]), (2, said[3])):
        result = json.loads((tmp_path / f"run{i}" / "result.json").read_text())
        assert line.startswith(
            f"[{i}/2] alexnet_thinner_4: best test accuracy {result['best_test_accuracy']:.4f} "
            f"at epoch {result['best_epoch']} (chosen by the test set, optimistic); final test "
            f"accuracy {result['test_accuracy']:.4f}, "
        )
        assert re.search(r", \d+\.\d s$", line)
    assert len(said) == 4
    assert metric_rows(tmp_path / "run1") == metric_rows(tmp_path / "run2")


@pytest.mark.parametrize("share", ["0", "-1", "1.5", "inf", "nan"])
def test_ray_refuses_a_gpu_share_before_anything_starts(share):
    with pytest.raises(SettingError) as e:
        RayExecutor(gpus_per_run=float(share))
    assert e.value.render(flag_name).startswith("--gpus-per-run must be a share of one GPU")


def test_ray_with_no_runs_starts_nothing():
    ray = pytest.importorskip("ray")
    executor = RayExecutor(gpus_per_run=0.5)  # a share is fine; so is a whole number
    RayExecutor(gpus_per_run=2)
    executor.run([], print)
    assert not ray.is_initialized()


def test_ray_missing_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without Ray
    with pytest.raises(ExecutorError) as e:
        RayExecutor()
    text = e.value.render(flag_name)
    assert text.startswith("--executor ray needs Ray, which is not installed")
    assert "pip install 'alexnet-cifar[ray]'" in text
