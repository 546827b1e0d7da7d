"""A tiny real study on CPU: two variants, one epoch each, on a subset of the real CIFAR-10."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest

from alexnet_cifar.cli import main
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.training.trainer import TrainingInterrupted, TrainOptions, train

from .helpers import run_cli

# 160 training images in batches of 32 (5 steps), 100 test images: a few seconds a variant.
SUBSET = ["--limit-train", "160", "--limit-test", "100", "--batch-size", "32"]
STUDY = ["--models", "alexnet,alexnet_thinner_4", "--epochs", "1", *SUBSET, "--device", "cpu"]


def _options(out, model="alexnet_thinner_4") -> TrainOptions:
    """What the study above asks for one variant, as train() options."""
    return TrainOptions(
        model=model,
        out=out,
        recipe=Recipe(epochs=1, batch_size=32),
        seed=0,
        device="cpu",
        limit_train=160,
        limit_test=100,
        quiet=True,
        progress=False,
    )


def _metrics(folder) -> list[dict]:
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _interrupt_at_step(step: int):
    def hook(trainer, epoch, s):
        if s == step:
            os.kill(os.getpid(), signal.SIGINT)

    return hook


@pytest.fixture(scope="module")
def study(cifar10, cifar10_dir, tmp_path_factory):
    """The study from the shell, its alexnet_thinner_4 run interrupted mid-epoch beforehand.

    (That a resumed run ends with exactly an uninterrupted run's metrics is test_train's.)
    """
    out = tmp_path_factory.mktemp("study") / "study"
    with pytest.raises(TrainingInterrupted):
        train(
            _options(out / "runs" / "alexnet_thinner_4"),
            data=cifar10,
            on_step=_interrupt_at_step(2),
        )
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    first = run_cli("study", *STUDY, "--out", str(out), "--no-progress", env=env)
    return out, first


@pytest.mark.real_data
@pytest.mark.slow
def test_study_trains_resumes_and_reports(study):
    out, p = study
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert "[1/2] alexnet: training in" in p.stdout
    assert "[2/2] alexnet_thinner_4: resuming in" in p.stdout
    assert "resuming" in p.stdout and "step 3" in p.stdout  # from the saved step, not anew

    for name in ("alexnet", "alexnet_thinner_4"):
        run = out / "runs" / name
        assert (run / "result.json").is_file() and (run / "model.pt").is_file()
    assert len(_metrics(out / "runs" / "alexnet_thinner_4")) == 1

    summary = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["alexnet", "alexnet_thinner_4"]
    assert {r["run_dir"] for r in summary["runs"]} == {
        "runs/alexnet",
        "runs/alexnet_thinner_4",
    }
    for r in summary["runs"]:
        assert r["epochs"] == 1 and r["status"] == "finished"
        assert r["n_train"] == 160 and r["n_test"] == 100
        result = json.loads((out / r["run_dir"] / "result.json").read_text())
        assert r["final_test_accuracy"] == result["test_accuracy"]
        assert r["params"] == result["params"]
    for name in ("report.md", "report.html", *summary["figures"].values()):
        assert (out / name).is_file(), name
    assert summary["best"]["model"] in ("alexnet", "alexnet_thinner_4")
    assert json.loads((out / "study.json").read_text())["models"] == [
        "alexnet",
        "alexnet_thinner_4",
    ]


@pytest.mark.real_data
@pytest.mark.slow
def test_tensorboard_sees_every_run_under_the_study(study):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    out, p = study
    assert p.returncode == 0, p.stderr
    mux = EventMultiplexer().AddRunsFromDirectory(str(out))
    mux.Reload()
    runs = mux.Runs()
    assert {"runs/alexnet", "runs/alexnet_thinner_4"} <= set(runs)
    for run in ("runs/alexnet", "runs/alexnet_thinner_4"):
        assert [e.step for e in mux.Scalars(run, "val_accuracy")] == [1]


@pytest.mark.real_data
@pytest.mark.slow
def test_rerun_skips_finished_runs_and_other_settings_are_refused(study, capsys):
    out, p = study
    assert p.returncode == 0, p.stderr
    metrics = out / "runs" / "alexnet" / "metrics.csv"
    before = metrics.stat().st_mtime_ns
    (out / "report.html").unlink()

    # the same study again, flags left out (taken from study.json): nothing trains, the
    # report is written anew
    assert main(["study", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "[1/2] alexnet: finished earlier, skipped" in printed
    assert "[2/2] alexnet_thinner_4: finished earlier, skipped" in printed
    assert "epoch 1/1" not in printed
    assert metrics.stat().st_mtime_ns == before
    assert (out / "report.html").is_file()

    # asking the same folder for more epochs is refused before anything trains
    assert main(["study", "--out", str(out), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "epochs: run has 1, this study asks 2" in err
    assert metrics.stat().st_mtime_ns == before


def test_all_with_other_models_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["study", "--models", "all,alexnet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --models:" in err and "'all' alone" in err
    assert len(err.strip().splitlines()) == 1 and "--help" in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------- a validation split

SPLIT = 40  # held-out training images; the test subset has 100, so the two are told apart


@pytest.fixture(scope="module")
def split_run(cifar10, tmp_path_factory):
    """A run with a validation split, with every evaluation and every step recorded in order."""
    from alexnet_cifar.engine.core import Engine

    from .helpers import train_options

    out = tmp_path_factory.mktemp("split") / "run"
    events: list[tuple] = []
    evaluate = Engine.evaluate

    def spy(self, images, labels, *args, **kwargs):
        events.append(("evaluate", len(labels)))
        return evaluate(self, images, labels, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Engine, "evaluate", spy)
        result = train(
            train_options(out, val_split=SPLIT),
            data=cifar10,
            on_step=lambda t, epoch, step: events.append(("step", epoch, step)),
        )
    return out, result, events


@pytest.mark.real_data
@pytest.mark.slow
def test_val_split_looks_at_the_test_set_only_at_the_end(split_run, cifar10):
    out, result, events = split_run
    last_step = max(i for i, e in enumerate(events) if e[0] == "step")
    evaluations = [(i, e[1]) for i, e in enumerate(events) if e[0] == "evaluate"]
    on_validation = [i for i, n in evaluations if n == SPLIT]
    on_test = [i for i, n in evaluations if n == 100]
    assert len(on_validation) == 3  # once per epoch
    assert 1 <= len(on_test) <= 2 and all(i > last_step for i in on_test)
    assert len(on_validation) + len(on_test) == len(evaluations)

    rows = _metrics(out)
    best = max(range(len(rows)), key=lambda i: float(rows[i]["val_accuracy"]))  # first best
    assert result["best_epoch"] == best + 1
    assert result["best_val_accuracy"] == float(rows[best]["val_accuracy"])
    assert result["val_split"] == SPLIT
    assert result["test_accuracy"] == result["test_accuracy_final"]
    assert result["best_test_accuracy"] == result["test_accuracy_at_best_val"]
    config = json.loads((out / "config.json").read_text())
    assert config["val_split"] == SPLIT and config["n_val"] == SPLIT
    assert config["n_train"] == 160 and config["n_test"] == 100

    # the two test accuracies, recomputed from the saved weights on the same test images
    import torch

    from alexnet_cifar import load_model
    from alexnet_cifar.engine.evaluate import evaluate_model
    from alexnet_cifar.training.checkpoint import load_checkpoint, trained_engine

    test = cifar10.subset(160, 100, 5, SPLIT)
    x, y = torch.from_numpy(test.x_test), torch.from_numpy(test.y_test)
    engine = trained_engine(out)  # evaluated as the run trained: bf16 where the CPU has it
    how = dict(batch_size=500, precision=engine["precision"], channels_last=engine["channels_last"])
    final = evaluate_model(load_model(out), x, y, **how)
    assert final.accuracy == result["test_accuracy_final"]
    state, _ = load_checkpoint(out)
    assert state["best_val"]["epoch"] == best + 1
    model = load_model(out)
    model.load_state_dict(state["best_val"]["model"])
    assert (
        evaluate_model(model, x, y, **how).accuracy == result["test_accuracy_at_best_val"]
    )


@pytest.mark.real_data
@pytest.mark.slow
def test_val_split_is_part_of_the_run_identity(split_run, reference_run, cifar10):
    from alexnet_cifar.training.checkpoint import CheckpointError

    from .helpers import train_options

    out, _, _ = split_run
    with pytest.raises(CheckpointError, match="val_split: checkpoint has 40, this run asks 50"):
        train(train_options(out, resume=True, val_split=50), data=cifar10)
    with pytest.raises(CheckpointError, match="val_split: checkpoint has 40, this run asks None"):
        train(train_options(out, resume=True), data=cifar10)
    # a run without a split is what it was before splits existed
    config = json.loads((reference_run / "config.json").read_text())
    result = json.loads((reference_run / "result.json").read_text())
    assert "val_split" not in config and "n_val" not in config
    assert not {k for k in result if "val" in k}
    from alexnet_cifar.training.checkpoint import load_checkpoint

    state, _ = load_checkpoint(reference_run)
    assert "best_val" not in state and "val_split" not in state["run_identity"]


@pytest.mark.real_data
@pytest.mark.slow
def test_interrupted_split_run_resumes_to_the_same_results(split_run, cifar10, tmp_path):
    from .helpers import interrupt_at, train_options

    ref, expect, _ = split_run
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(train_options(out, val_split=SPLIT), data=cifar10, on_step=interrupt_at(1, 2))
    got = train(train_options(out, resume=True, val_split=SPLIT), data=cifar10)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_metrics(out)) == strip(_metrics(ref))
    for key in ("test_accuracy_final", "test_accuracy_at_best_val", "best_epoch", "test_loss"):
        assert got[key] == expect[key], key


# ---------------------------------------------------------------------- several seeds

MODELS = ["alexnet", "alexnet_thinner_4"]
# Two variants x two seeds, two epochs of 4 steps (128 images), 100 test images.
SEEDS_STUDY = [
    "--models",
    ",".join(MODELS),
    "--seeds",
    "2",
    "--epochs",
    "2",
    "--limit-train",
    "128",
    "--limit-test",
    "100",
    "--batch-size",
    "32",
    "--device",
    "cpu",
]
RUNS = [(model, seed) for model in MODELS for seed in (0, 1)]


@pytest.fixture(scope="module")
def seeds_study(cifar10_dir, tmp_path_factory):
    """The tiny study with two seeds, run one after another in this process with one torch
    thread: the thread count of each Ray task on a CPU, so that the two compare exactly."""
    import contextlib
    import io
    import time

    import torch

    out = tmp_path_factory.mktemp("seeds") / "study"
    threads, printed = torch.get_num_threads(), io.StringIO()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
            mp.setenv("CIFAR10_DIR", str(cifar10_dir))
            start = time.perf_counter()
            code = main(["study", *SEEDS_STUDY, "--out", str(out), "--no-progress"])
            seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert code == 0, printed.getvalue()
    return out, printed.getvalue(), seconds


def _same_runs(a, b) -> None:
    """Run for run, the same metrics (all but the seconds) and the same results."""
    for model, seed in RUNS:
        ra, rb = a / model / f"seed-{seed}", b / model / f"seed-{seed}"
        strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
        assert strip(_metrics(ra)) == strip(_metrics(rb)), (model, seed)
        ja = json.loads((ra / "result.json").read_text())
        jb = json.loads((rb / "result.json").read_text())
        for key in ("test_accuracy", "test_loss", "best_test_accuracy", "best_epoch"):
            assert ja[key] == jb[key], (model, seed, key)
        assert ja["confusion_matrix"] == jb["confusion_matrix"]


@pytest.mark.real_data
@pytest.mark.slow
def test_seeds_study_reports_mean_spread_and_welch_like_scipy(seeds_study):
    import numpy as np
    from scipy import stats

    out, printed, _ = seeds_study
    for model, seed in RUNS:
        assert f"{model} seed {seed}: best test accuracy" in printed
        assert (out / model / f"seed-{seed}" / "result.json").is_file()
    assert not (out / "runs").exists()
    settings = json.loads((out / "study.json").read_text())
    assert settings["seeds"] == [0, 1] and "seed" not in settings and "val_split" not in settings

    summary = json.loads((out / "summary.json").read_text())
    columns = {m: [_metrics(out / m / f"seed-{s}") for s in (0, 1)] for m in MODELS}
    best = {m: [max(float(r["val_accuracy"]) for r in rows) for rows in columns[m]] for m in MODELS}
    for v in summary["variants"]:
        rows = columns[v["label"]]
        for key, x in (
            ("best_test_accuracy", best[v["label"]]),
            ("final_test_accuracy", [float(r[-1]["val_accuracy"]) for r in rows]),
            ("lowest_test_loss", [min(float(e["val_loss"]) for e in r) for r in rows]),
            (
                "generalisation_gap",
                [float(r[-1]["accuracy"]) - float(r[-1]["val_accuracy"]) for r in rows],
            ),
            ("total_seconds", [sum(float(e["seconds"]) for e in r) for r in rows]),
        ):
            d = v[key]
            assert d["mean"] == pytest.approx(np.mean(x), rel=1e-12, abs=1e-15), key
            assert d["std"] == pytest.approx(np.std(x, ddof=1), rel=1e-12, abs=1e-15), key
            if d["std"] > 0:
                lo, hi = stats.t.interval(0.95, 1, loc=np.mean(x), scale=stats.sem(x))
                # an accuracy's interval is clipped to [0, 1], a loss's and a time's at 0
                top = 1.0 if key.endswith("accuracy") else float("inf")
                if key != "generalisation_gap":
                    assert d["ci_clipped"] == (lo < 0 or hi > top), key
                    lo, hi = max(lo, 0.0), min(hi, top)
                assert (d["ci_low"], d["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    (pair,) = summary["other_pairs"]
    assert summary["claims"] == [] and (pair["a"], pair["b"]) == tuple(MODELS)
    assert pair["difference"] == pytest.approx(np.mean(best[MODELS[0]]) - np.mean(best[MODELS[1]]))
    if pair["p_value"] is not None:  # None only if neither variant varies over its seeds
        t = stats.ttest_ind(best[MODELS[0]], best[MODELS[1]], equal_var=False)
        assert pair["p_value"] == pytest.approx(t.pvalue, rel=1e-9)

    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for text in (
        "## Across seeds",
        "| variant | measure | runs | mean | std | 95% CI |",
        "p (Welch)",
    ):
        assert text in md
    assert "Across seeds" in html and "p (Welch)" in html and "Traceback" not in printed
    assert "across seeds (best test accuracy" in printed


@pytest.mark.real_data
@pytest.mark.slow
def test_seeds_study_continued_without_flags_skips_its_runs(seeds_study, capsys):
    out, _, _ = seeds_study
    assert main(["study", "--out", str(out), "--no-progress"]) == 0  # seeds from study.json
    printed = capsys.readouterr().out
    for i, (model, seed) in enumerate(RUNS, start=1):
        assert f"[{i}/4] {model} seed {seed}: finished earlier, skipped" in printed
    assert "epoch 1/2" not in printed
    # a study keeps its layout: one seed in a folder of several is another study
    assert main(["study", "--out", str(out), "--seed", "3"]) == 2
    assert "several seeds per variant" in capsys.readouterr().err


def _kill_once(marker, model: str, seed: int):
    """A step hook that kills its own worker process, once, in the second epoch of one run,
    after the first epoch's checkpoint is on disk (a Ray task retried must resume from it)."""

    def hook(trainer, epoch, step):
        o = trainer.run.opts
        if (o.model, o.seed, epoch, step) == (model, seed, 1, 1) and not marker.exists():
            trainer.checkpoints.wait()
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _ray():
    if os.environ.get("CI"):
        import ray  # the test extra installs it: CI fails without it

        return ray
    return pytest.importorskip("ray")


@pytest.mark.real_data
@pytest.mark.slow
def test_ray_study_equals_the_sequential_one_and_retries_a_killed_worker(
    seeds_study, cifar10_dir, tmp_path, monkeypatch
):
    import logging
    import time

    from alexnet_cifar.study.executors import RayExecutor
    from alexnet_cifar.study.runner import plan_runs, run_study

    ray = _ray()
    monkeypatch.setenv("CIFAR10_DIR", str(cifar10_dir))
    out, marker = tmp_path / "ray", tmp_path / "killed"

    def options(model, run_dir):
        return TrainOptions(
            model=model,
            out=run_dir,
            recipe=Recipe(epochs=2, batch_size=32),
            device="cpu",
            limit_train=128,
            limit_test=100,
            resume=True,
            quiet=True,
            progress=False,
            checkpoint_every=0,  # the killed worker's retry resumes from epoch 1's checkpoint
        )

    lines: list[str] = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        start = time.perf_counter()
        summary = run_study(
            out,
            plan_runs(out, MODELS, [0, 1], options),
            say=lines.append,
            executor=RayExecutor(on_step=_kill_once(marker, "alexnet_thinner_4", 1)),
        )
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    print(f"tiny study: sequential {seeds_study[2]:.1f} s, Ray on 2 CPUs {seconds:.1f} s")
    assert marker.exists()  # the worker was killed
    _same_runs(out, seeds_study[0])
    assert len(summary["runs"]) == 4 and len(summary["variants"]) == 2
    text = "\n".join(lines)
    assert "4 runs on Ray (2 CPU), each asking for 1 CPU" in text
    assert "[4/4] alexnet_thinner_4 seed 1: started on" in text
    assert "alexnet_thinner_4 seed 1: started on" in text and "resuming after epoch 1" in text
    assert text.count("finished on") == 4 and "4 of 4 done" in text
    log = (out / "alexnet_thinner_4" / "seed-1" / "train.log").read_text()
    assert "at epoch 2, step 0" in log  # the retry trained no finished epoch again


@pytest.mark.real_data
@pytest.mark.slow
def test_ray_study_stopped_and_started_again_finishes_identically(
    seeds_study, cifar10_dir, tmp_path
):
    import subprocess
    import sys
    import time

    _ray()
    out = tmp_path / "again"
    args = ["study", *SEEDS_STUDY, "--out", str(out), "--no-progress", "--executor", "ray"]
    env = dict(os.environ, CIFAR10_DIR=str(cifar10_dir))
    p = subprocess.Popen(
        [sys.executable, "-m", "alexnet_cifar", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it: an ignored SIGINT left behind in this process (as
        # Ray's in-process driver of an earlier test can leave it) would be inherited
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while not list(out.glob("*/seed-*/metrics.csv")) and p.poll() is None:
        assert time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)  # Ctrl-C: the study stops, each run with a checkpoint
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 130, (stdout[-2000:], stderr)
    assert "the study stopped" in stderr and "Traceback" not in stderr
    assert f"study --out {out} --executor ray" in stderr  # the command that continues it
    assert not all((out / m / f"seed-{s}" / "result.json").exists() for m, s in RUNS)

    again = run_cli(*args, env={"CIFAR10_DIR": str(cifar10_dir)})
    assert again.returncode == 0, again.stderr
    _same_runs(out, seeds_study[0])


def test_seeds_flags(tmp_path, capsys):
    from alexnet_cifar.cli.studies import seed_list

    assert seed_list("3") == [0, 1, 2] and seed_list("0,4,7") == [0, 4, 7]
    for bad, says in (
        ("0", "at least 1"),
        ("1,1", "given twice"),
        ("a,b", "whole number"),
        ("abc", "whole number"),
        (",", "an empty seed"),
        ("5,", "an empty seed"),
        ("1,,2", "an empty seed"),
    ):
        with pytest.raises(SystemExit):
            main(["study", "--seeds", bad, "--out", str(tmp_path)])
        assert says in capsys.readouterr().err
    for argv, says in (
        (["--seed", "1", "--seeds", "2"], "give --seed or --seeds, not both"),
        (["--address", "auto"], "--address is for --executor ray"),
        (["--gpus-per-run", "0.5"], "--gpus-per-run is for --executor ray"),
    ):
        assert main(["study", *argv, "--out", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["study", "--executor", "ray", "--gpus-per-run", "1.5", "--out", str(tmp_path)])
    assert "a share of one GPU (0 to 1) or a whole number" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_missing_ray_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    assert main(["study", "--executor", "ray", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'alexnet-cifar[ray]'" in err and "--executor ray" in err
    assert not (tmp_path / "s").exists()


def test_a_second_study_on_the_same_folder_is_refused(tmp_path, capsys):
    from alexnet_cifar.training.checkpoint import RunLock

    out = tmp_path / "s"
    out.mkdir()
    with RunLock(out):  # a study running in the folder holds its lock
        assert main(["study", "--models", "alexnet", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and str(out) in err and "Traceback" not in err
    assert not (out / "study.json").exists() and not (out / "runs").exists()


def test_study_json_records_seeds_and_split_and_a_continued_study_takes_them(tmp_path, capsys):
    from alexnet_cifar.cli import build_parser
    from alexnet_cifar.cli.flags import train_options
    from alexnet_cifar.study.runner import (
        plan_runs,
        read_study_settings,
        study_seeds,
        study_settings,
    )

    out = tmp_path / "s"

    def planned(argv: list[str], prev: dict):
        args = build_parser().parse_args(["study", *argv, "--out", str(out)])
        seeds = study_seeds(args.seeds, args.seed, prev)
        models = args.models or prev["models"]
        return plan_runs(out, models, seeds, lambda m, d: train_options(args, m, d, prev, True))

    first = planned(["--models", "alexnet", "--seeds", "0,3", "--val-split", "50"], {})
    settings = study_settings(first)
    assert settings["seeds"] == [0, 3] and settings["val_split"] == 50 and "seed" not in settings
    out.mkdir()
    (out / "study.json").write_text(json.dumps(settings))
    again = planned([], read_study_settings(out))  # every flag left out
    assert [(r.run_dir, r.seed, r.options.val_split) for r in again] == [
        (out / "alexnet" / "seed-0", 0, 50),
        (out / "alexnet" / "seed-3", 3, 50),
    ]
    one = planned(["--models", "alexnet"], {})
    assert [r.run_dir for r in one] == [out / "runs" / "alexnet"]
    assert "seeds" not in study_settings(one) and "val_split" not in study_settings(one)

    (out / "study.json").write_text(json.dumps({**settings, "seeds": [0, "x"]}))
    assert main(["study", "--out", str(out)]) == 2
    assert "the field 'seeds' should be a list of whole numbers" in capsys.readouterr().err


def _written_study_json(out, argv: list[str]) -> dict:
    """study.json as the writer writes it for ``study ARGV``."""
    from alexnet_cifar.cli import build_parser
    from alexnet_cifar.cli.flags import train_options
    from alexnet_cifar.study.runner import plan_runs, study_seeds, study_settings

    args = build_parser().parse_args(["study", *argv, "--out", str(out)])
    seeds = study_seeds(args.seeds, args.seed, {})
    runs = plan_runs(out, args.models, seeds, lambda m, d: train_options(args, m, d, {}, True))
    return study_settings(runs)


def test_study_json_writer_and_reader_share_their_fields(tmp_path):
    from alexnet_cifar.study.runner import STUDY_FIELDS, read_study_settings

    out = tmp_path / "s"
    out.mkdir()
    for argv in (
        ["--models", "alexnet", "--seeds", "2", "--val-split", "50", "--device", "cpu"],
        ["--models", "alexnet,alexnet_slim", "--data-dir", "d", "--eval-batch-size", "7"],
    ):
        written = _written_study_json(out, argv)
        assert set(written) <= set(STUDY_FIELDS)
        (out / "study.json").write_text(json.dumps(written))
        assert read_study_settings(out) == written  # what is written is read back, unchanged
    assert written["data_dir"] == os.path.abspath("d")  # absolute: found from anywhere


@pytest.mark.parametrize(
    "change, field",
    [
        ({"seeds": [0, 0]}, "'seeds' lists 0 twice"),
        ({"seeds": [3]}, "'seeds' should list 2 or more"),
        ({"seeds": []}, "'seeds' should list 2 or more"),
        ({"seeds": "0,1"}, "'seeds' should be a list of whole numbers"),
        ({"seeds": [0, -1]}, "'seeds' should list seeds 0 or above"),
        ({"models": []}, "'models' should list one or more"),
        ({"models": ["alexnet", "alexnet"]}, "'models' lists 'alexnet' twice"),
        ({"models": ["alexnet_x"]}, "the field 'models': unknown model"),
        ({"models": "alexnet"}, "'models' should be a list of strings"),
        ({"limit_train": 0}, "'limit_train' should be at least 1"),
        ({"limit_test": "100"}, "'limit_test' should be a whole number"),
        ({"eval_batch_size": 0}, "'eval_batch_size' should be at least 1"),
        ({"verify": "no"}, "'verify' should be true or false"),
        ({"device_requested": "gpu"}, "'device_requested' should be auto, cpu or cuda"),
        ({"recipe": {"lr": -1}}, "the field 'recipe'"),
        ({"seed": 1}, "'seed' (one seed) or 'seeds' (several)"),
        ({"colour": "red"}, "the field 'colour' is not one a study records"),
    ],
)
def test_a_hand_edited_study_json_is_checked_field_by_field(tmp_path, capsys, change, field):
    out = tmp_path / "s"
    out.mkdir()
    settings = _written_study_json(out, ["--models", "alexnet", "--seeds", "2"])
    (out / "study.json").write_text(json.dumps({**settings, **change}))
    assert main(["study", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out / "study.json") in err and field in err, err
    assert not (out / "alexnet").exists()  # nothing trained


def test_narrowing_models_or_seeds_on_a_study_folder_is_refused(tmp_path, capsys):
    from alexnet_cifar.study.runner import check_kept_runs

    out = tmp_path / "s"
    out.mkdir()
    argv = ["--models", "alexnet,alexnet_thinner_4", "--seeds", "3"]
    (out / "study.json").write_text(json.dumps(_written_study_json(out, argv)))
    finished = out / "alexnet_thinner_4" / "seed-2"
    finished.mkdir(parents=True)
    (finished / "result.json").write_text("{}")  # a finished run the report shows
    for narrower, says in (
        (["--models", "alexnet"], "alexnet_thinner_4 seed 2"),
        (["--seeds", "2"], "alexnet_thinner_4 seed 2"),
    ):
        assert main(["study", *narrower, "--out", str(out), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert says in err and "leaves out" in err and err.count("\n") == 1, err
    # wider adds runs; leaving out a run that never started loses nothing
    prev = json.loads((out / "study.json").read_text())
    all_three = ["alexnet", "alexnet_thinner_4", "alexnet_slim"]
    check_kept_runs(out, prev, all_three, [0, 1, 2, 3])
    check_kept_runs(out, prev, ["alexnet_thinner_4"], [1, 2])


def test_a_ray_address_that_does_not_answer_fails_in_seconds(tmp_path, capsys):
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code = main(
        ["study", "--executor", "ray", "--address", f"127.0.0.1:{port}", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - t0 < 15
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err and "ray start --head" in err
    assert err.count("\n") == 1, err


@pytest.mark.real_data
@pytest.mark.slow
def test_a_continued_study_keeps_its_data_folder(cifar10_dir, tmp_path):
    """Started with --data-dir, stopped, continued by the printed command with CIFAR10_DIR
    unset and an empty cache: the study finds its data."""
    import re
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CIFAR10_DIR"}
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
    args = ["--models", "alexnet_thinner_4", "--epochs", "2", *SUBSET, "--device", "cpu"]
    cmd = [sys.executable, "-m", "alexnet_cifar", "study", *args, "--no-progress"]
    proc = subprocess.Popen(
        [*cmd, "--data-dir", str(cifar10_dir), "--out", "s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    for line in proc.stdout:
        if line.startswith("epoch 1/2"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    resume = re.search(r"^Resume with: (.*)$", err, re.M).group(1)
    assert "--data-dir" not in resume
    p = subprocess.run(resume, shell=True, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, (resume, p.stderr)
    assert (tmp_path / "s" / "runs" / "alexnet_thinner_4" / "result.json").is_file()


# ---------------------------------------------------------------------- what a study folder is


def test_a_run_folder_or_a_folder_of_other_files_is_not_a_study_folder(
    tmp_path, capsys, monkeypatch
):
    """A study there would nest a new full run inside the folder: refused in one line, before
    anything is written."""
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "no-data"))  # a run that starts stops
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "checkpoint.pt", "train.log"):
        (run / name).write_text("{}")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("x")
    for folder, says in ((run, "is a run folder (it holds"), (notes, "holds files (todo.txt)")):
        before = sorted(p.name for p in folder.iterdir())
        argv = ["study", "--models", "alexnet", "--out", str(folder), "--device", "cpu"]
        assert main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert str(folder) in line and says in line and "study.json" in line, line
        assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.real_data
@pytest.mark.slow
def test_a_fresh_study_run_starts_without_saying_there_was_nothing_to_resume(study):
    out, p = study
    assert p.returncode == 0, p.stderr
    assert "[1/2] alexnet: training in" in p.stdout
    assert "nothing to resume" not in p.stdout + p.stderr


class _Killed(Exception):
    """A stand-in for kill -9: the run stops with no checkpoint and no clean-up of its own."""


@pytest.mark.real_data
@pytest.mark.slow
def test_a_study_run_killed_before_its_first_checkpoint_restarts_and_says_so(
    cifar10, cifar10_dir, tmp_path
):
    from alexnet_cifar.study.executors import Sequential
    from alexnet_cifar.study.runner import plan_runs, run_study

    def kill(trainer, epoch, step):
        raise _Killed

    out = tmp_path / "s"
    runs = plan_runs(out, ["alexnet_thinner_4"], [0], lambda m, d: _options(d, m))
    with pytest.raises(_Killed):
        run_study(out, runs, say=lambda msg: None, executor=Sequential(on_step=kill))
    run = out / "runs" / "alexnet_thinner_4"
    assert (run / "config.json").is_file() and not (run / "checkpoint.pt").exists()
    env = {"CIFAR10_DIR": str(cifar10_dir)}
    p = run_cli("study", "--out", str(out), "--no-progress", "--quiet", env=env)
    assert p.returncode == 0, p.stderr
    (notice,) = [line for line in p.stderr.splitlines() if "restarting" in line]
    assert str(run) in notice and "from epoch 1" in notice and "first checkpoint" in notice
    assert len(_metrics(run)) == 1
