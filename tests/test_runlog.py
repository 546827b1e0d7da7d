"""runlog: the run folder's metrics, log and result files, read back as written; the lines and
durations people read; the class names a run is known by."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alexnet_cifar.data import CLASSES
from alexnet_cifar.errors import ReportError
from alexnet_cifar.provenance import versions
from alexnet_cifar.training.runlog import (
    METRIC_COLUMNS,
    RunLog,
    class_names,
    epoch_line,
    format_duration,
    progress_bar,
    read_metrics,
)


def _history(n: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "loss": 2.0 / e,
            "accuracy": 0.1 * e,
            "val_loss": 2.5 / e,
            "val_accuracy": 0.09 * e + 1e-9,
            "lr": 0.01 if e < 3 else 0.001,
            "seconds": 1.25 * e,
        }
        for e in range(1, n + 1)
    ]


def test_metrics_are_read_back_as_written(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    history = _history(4)
    for n in range(1, 5):  # rewritten whole after each epoch
        log.log_epoch(history[:n])
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join(METRIC_COLUMNS)
    cols = read_metrics(tmp_path)
    assert cols["epoch"] == [1, 2, 3, 4] and all(type(e) is int for e in cols["epoch"])
    for c in METRIC_COLUMNS[1:]:
        assert cols[c] == [row[c] for row in history], c  # floats survive exactly


def test_config_and_result_are_json_and_lines_go_to_train_log(tmp_path):
    printed = []
    log = RunLog(tmp_path, tensorboard=False, print_line=printed.append)
    log.write_config({"model": "alexnet", "seed": 3})
    log.write_result({"test_accuracy": 0.5})
    log.say("epoch 1/2 ...")
    quiet = RunLog(tmp_path, tensorboard=False, quiet=True, print_line=printed.append)
    quiet.say("said quietly")
    assert json.loads((tmp_path / "config.json").read_text()) == {"model": "alexnet", "seed": 3}
    assert json.loads((tmp_path / "result.json").read_text()) == {"test_accuracy": 0.5}
    assert printed == ["epoch 1/2 ..."]  # quiet: kept in the log, not printed
    assert (tmp_path / "train.log").read_text() == "epoch 1/2 ...\nsaid quietly\n"


def test_a_disabled_log_writes_nothing(tmp_path, capsys):
    # The ranks other than 0 of a data-parallel run.
    log = RunLog(tmp_path, enabled=False, tensorboard=True)
    log.write_config({"a": 1})
    log.log_epoch(_history(1))
    log.write_result({"b": 2})
    log.say("x")
    log.warn("y")
    log.open_tensorboard(0)
    log.close()
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr() == ("", "")


def test_tensorboard_events_hold_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLog(tmp_path, tensorboard=True)
    log.open_tensorboard(0)
    history = _history(2)
    for n in (1, 2):
        log.log_epoch(history[:n])
    log.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(METRIC_COLUMNS[1:])
    got = [(e.step, e.value) for e in events.Scalars("val_accuracy")]
    assert got == [(r["epoch"], pytest.approx(r["val_accuracy"], rel=1e-6)) for r in history]


@pytest.mark.parametrize(
    "text, says",
    [
        (None, "has no metrics.csv: no epoch of this run has finished"),
        ("epoch,loss\n1,2\n", "lacks the column(s) accuracy, val_loss, val_accuracy, lr, seconds"),
        (",".join(METRIC_COLUMNS) + "\n1,0.5,0.1,0.6,0.1,0.01,abc\n", "line 2: seconds is 'abc'"),
        (",".join(METRIC_COLUMNS) + "\n1.5,0.5,0.1,0.6,0.1,0.01,1\n", "epoch is '1.5'"),
        (",".join(METRIC_COLUMNS) + "\n", "holds no finished epoch"),
        (",".join(METRIC_COLUMNS) + "\n2,0.5,0.1,0.6,0.1,0.01,1\n", "epochs are not 1, 2, 3"),
    ],
)
def test_a_damaged_metrics_file_is_named(tmp_path, text, says):
    if text is not None:
        (tmp_path / "metrics.csv").write_text(text)
    with pytest.raises(ReportError) as e:  # the caller's error class
        read_metrics(tmp_path, error=ReportError)
    assert says in str(e.value)


def test_durations_as_people_read_them():
    assert format_duration(42.04) == "42.0 s"
    assert format_duration(185) == "3m05s"
    assert format_duration(2 * 3600 + 7 * 60 + 29) == "2h07m"
    assert format_duration(None) == format_duration(math.nan) == "–"


def test_epoch_line_gives_the_time_left_at_the_recent_pace():
    row = _history(2)[-1]
    line = epoch_line(row, 5, [10.0, 20.0])
    assert line.startswith("epoch 2/5  loss 1.0000  accuracy 0.2000  val_loss 1.2500")
    assert "lr 0.01  2.5s" in line
    assert line.endswith("ETA 45.0 s")  # 3 epochs left at 15 s each
    assert "ETA" not in epoch_line(_history(5)[-1], 5, [10.0])


def test_class_names_come_from_the_run_first(tmp_path):
    names = [f"c{i}" for i in range(10)]
    assert class_names(tmp_path, 10) == list(CLASSES)  # nothing recorded: CIFAR-10's
    assert class_names(tmp_path, 3) == ["0", "1", "2"]
    assert class_names(tmp_path, 10, {"classes": names}) == names  # a model file's meta
    (tmp_path / "config.json").write_text(json.dumps({"classes": ["k"] * 10}))
    assert class_names(tmp_path / "model.pt", 10, {"classes": names}) == ["k"] * 10
    (tmp_path / "result.json").write_text(json.dumps({"classes": ["r"] * 10}))
    assert class_names(tmp_path, 10) == ["r"] * 10
    (tmp_path / "result.json").write_text(json.dumps({"classes": ["r"] * 4}))  # wrong count
    assert class_names(tmp_path, 10) == ["k"] * 10
    (tmp_path / "config.json").write_text("{not json")  # damaged: passed over
    assert class_names(tmp_path, 10) == list(CLASSES)


def test_versions_and_a_disabled_progress_bar():
    v = versions(torch.device("cpu"))
    assert v["torch"] == torch.__version__ and "cuda" not in v and "gpu" not in v
    assert set(v) == {"alexnet_cifar", "torch", "numpy", "python"}
    with progress_bar(10, "x", enabled=False) as bar:
        bar.update(3)
        bar.set_postfix(loss=1.0)
    assert not hasattr(bar, "n")  # no tqdm was made


# ---------------------------------------------------------------------- the heartbeat


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_heartbeat_says_where_a_loop_stands_every_interval_and_no_more():
    from alexnet_cifar.training.runlog import Heartbeat

    said, clock = [], _Clock()
    beat = Heartbeat(100, "epoch 2/30", said.append, initial=10, every=30, clock=clock)
    with beat:
        for _ in range(20):  # 20 steps in 20 s: less than an interval, nothing said
            clock.now += 1
            beat.update(1)
        assert said == []
        beat.set_postfix(loss="1.2345", acc="0.5000", img_s="640")
        clock.now += 10  # 30 s since the start: one line
        beat.update(1)
        clock.now += 29
        beat.update(1)
    (line,) = said
    # 21 steps in 30 s: the 69 left at 0.7 a second take 1m39s
    assert line.startswith("epoch 2/30: step 31/100") and "loss 1.2345" in line
    assert "accuracy 0.5000" in line and "640 images/s" in line and "ETA 1m39s" in line


def test_progress_without_a_terminal_is_a_heartbeat_and_quiet_stays_quiet(tmp_path, monkeypatch):
    """A training run whose output is a log prints heartbeat lines inside an epoch (every step
    here, with the interval set to 0); --quiet and --no-progress print none."""
    from alexnet_cifar.training import runlog

    from .helpers import run_main, write_binary_folder

    monkeypatch.setattr(runlog, "HEARTBEAT_SECONDS", 0.0, raising=False)
    write_binary_folder(tmp_path, n_per_file=20)
    args = ["train", "alexnet_thinner_4", "--epochs", "1", "--batch-size", "25"]
    args += ["--data-dir", tmp_path, "--no-verify", "--device", "cpu"]
    p = run_main(*args, "--out", tmp_path / "a")
    assert p.returncode == 0, p.stderr
    beats = [line for line in p.stdout.splitlines() if line.startswith("epoch 1/1: step")]
    assert len(beats) >= 3 and "images/s" in beats[0] and "ETA" in beats[0], p.stdout
    assert beats[0] in (tmp_path / "a" / "train.log").read_text()
    for flag, out in (("--quiet", "b"), ("--no-progress", "c")):
        p = run_main(*args, "--out", tmp_path / out, flag)
        assert p.returncode == 0 and "epoch 1/1: step" not in p.stdout + p.stderr, p.stdout


@pytest.mark.parametrize(
    "column, value, says",
    [
        ("accuracy", "1.5", "accuracy is 1.5, outside 0 to 1"),
        ("val_accuracy", "-0.1", "val_accuracy is -0.1, outside 0 to 1"),
        ("loss", "-2", "loss is -2, below 0"),
        ("val_loss", "-0.5", "val_loss is -0.5, below 0"),
        ("seconds", "-542.7", "seconds is -542.7, below 0"),
        ("lr", "-0.01", "lr is -0.01, below 0"),
    ],
)
def test_values_outside_their_range_are_named_as_damaged(tmp_path, column, value, says):
    rows = [dict(zip(METRIC_COLUMNS, [1, 0.5, 0.4, 0.6, 0.35, 0.01, 3.0]))]
    rows.append(dict(zip(METRIC_COLUMNS, [2, 0.4, 0.5, 0.55, 0.4, 0.01, 3.0])))
    rows[1][column] = value
    RunLog(tmp_path, tensorboard=False).write_metrics(rows)
    with pytest.raises(ReportError) as e:
        read_metrics(tmp_path, error=ReportError)
    text = str(e.value)
    assert f"metrics.csv, line 3: {says}" in text and "damaged" in text and "\n" not in text
    # a diverged run's NaN and infinities are not damage: they are what happened
    rows[1][column] = "nan" if column != "loss" else "inf"
    RunLog(tmp_path, tensorboard=False).write_metrics(rows)
    assert len(read_metrics(tmp_path, error=ReportError)["epoch"]) == 2
