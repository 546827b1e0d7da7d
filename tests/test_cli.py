"""The command line: clear messages and non-zero exits for a user's mistakes, never a traceback."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alexnet_cifar.cli import main
from alexnet_cifar.models import PRESETS

from .helpers import run_cli, run_main, write_binary_folder

NO_NET = {"ALEXNET_CIFAR_DATA_URL": "http://127.0.0.1:9/cifar-10-binary.tar.gz"}


def _fails_cleanly(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def cli(capsys, *args):
    """Run the command in this process: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse exits for usage errors
        code = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_help_lists_commands(capsys):
    p = cli(capsys, "--help")
    assert p.returncode == 0
    for c in ("train", "evaluate", "models", "summary", "bench", "study", "report", "predict"):
        assert c in p.stdout
    p = cli(capsys, "train", "--help")
    assert p.returncode == 0 and "--limit-train" in p.stdout and "--resume" in p.stdout
    # and the installed entry point answers too
    p = run_cli("--version")
    assert p.returncode == 0 and p.stdout.startswith("alexnet-cifar ")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "alexnet", "--epochs", "0"], "--epochs must be at least 1"),
        (["train", "alexnet", "--epochs", "-3"], "--epochs must be at least 1"),
        (["train", "alexnet", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["train", "alexnet", "--epochs", "ten"], "whole number"),
        (["train", "alexnet", "--device", "tpu"], "unknown device 'tpu'"),
        (["train", "alexnet", "--lr", "-1"], "positive"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments(capsys, args, needle):
    _fails_cleanly(cli(capsys, *args), needle)


def test_missing_data_says_how_to_get_it(tmp_path):
    # a whole process: the message must reach the user without a traceback
    p = run_cli(
        "train",
        "alexnet",
        "--data-dir",
        str(tmp_path / "nothing"),
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        env=NO_NET,
    )
    _fails_cleanly(p, "CIFAR10_DIR", "cifar-10-batches-bin")


@pytest.mark.parametrize(
    "args",
    [
        ["train", "alexnet_big"],
        ["summary", "alexnet_big"],
        ["bench", "--models", "alexnet,alexnet_big", "--device", "cpu"],
        ["study", "--models", "alexnet,alexnet_big"],
        ["import-keras", "weights.h5", "--model", "alexnet_big", "--out", "r"],
    ],
)
def test_an_unknown_model_is_named_with_the_valid_ones_by_every_command(capsys, args):
    p = cli(capsys, *args)
    _fails_cleanly(p, "unknown model 'alexnet_big'", f"Valid models: {', '.join(PRESETS)}")
    assert len(p.stderr.strip().splitlines()) == 1 and not p.stdout


def test_an_unknown_model_in_python_lists_the_valid_ones():
    from alexnet_cifar import build_model
    from alexnet_cifar.models import UnknownModelError

    with pytest.raises(UnknownModelError) as e:
        build_model("alexnet_slimm")
    assert all(n in str(e.value) for n in PRESETS)


def test_cuda_graphs_are_refused_on_the_cpu_wherever_they_can_be_asked(capsys, tmp_path):
    """By the engine's options, and by train and bench before any step: one line, no run
    folder left behind (bf16 runs on any CPU; CUDA graphs need CUDA)."""
    from alexnet_cifar.engine.options import EngineOptions
    from alexnet_cifar.errors import SettingError

    with pytest.raises(SettingError, match="CUDA graphs need a CUDA device"):
        EngineOptions(cuda_graphs=True).resolve(torch.device("cpu"))
    write_binary_folder(tmp_path / "data", n_per_file=4)
    data = ["--data-dir", str(tmp_path / "data"), "--no-verify", "--quiet"]
    p = cli(capsys, "train", "alexnet", "--device", "cpu", "--cuda-graphs", *data,
            "--out", str(tmp_path / "run"))  # fmt: skip
    _fails_cleanly(p, "CUDA graphs need a CUDA device: use --no-cuda-graphs")
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    p = cli(capsys, "bench", "--cuda-graphs", "--device", "cpu")
    _fails_cleanly(p, "CUDA graphs need a CUDA device: use --no-cuda-graphs")


def test_train_help_says_when_checkpoints_are_written(capsys):
    """By time, not every epoch: the help's default is the one a run uses."""
    from alexnet_cifar.cli import flags

    p = cli(capsys, "train", "--help")
    text = " ".join(p.stdout.split())
    every = float(re.search(r"checkpoint\.pt \(after an epoch when ([\d.]+) s have", text)[1])
    assert "(every epoch)" not in text and f"(default {every:g}; 0: every epoch)" in text
    parser, sub = flags.make_parser()
    train = sub.add_parser("train")
    flags.add_train_flags(train)
    args = train.parse_args([])
    assert flags.train_options(args, "alexnet", "run", {}, False).checkpoint_every == every


def test_cuda_requested_without_gpu(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = cli(capsys, "train", "alexnet", "--device", "cuda", "--out", str(tmp_path / "r"))
    _fails_cleanly(p, "no CUDA GPU")


def test_evaluate_missing_and_damaged_checkpoints(capsys, tmp_path):
    _fails_cleanly(cli(capsys, "evaluate", str(tmp_path / "nope")), "does not exist")
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    _fails_cleanly(cli(capsys, "evaluate", str(bad)), str(bad), "damaged")


@pytest.mark.real_data
@pytest.mark.slow
def test_ctrl_c_saves_and_resume_finishes(cifar10_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = [
        "train",
        "alexnet_thinner_4",
        "--no-verify",
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--limit-train",
        "192",
        "--limit-test",
        "100",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    env = dict(os.environ, CIFAR10_DIR=str(cifar10_dir))
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet_cifar", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    line = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("epoch 1/3") or not line:
            break
    assert line.startswith("epoch 1/3"), line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert re.search(r"Resume with: .*alexnet_cifar train alexnet_thinner_4 --out .* --resume", err)
    assert "Traceback" not in err
    assert (out / "checkpoint.pt").is_file()

    monkeypatch.setenv("CIFAR10_DIR", str(cifar10_dir))
    p = cli(
        capsys,
        "train",
        "alexnet_thinner_4",
        "--out",
        str(out),
        "--resume",
        "--device",
        "cpu",
        "--quiet",
        "--no-verify",
    )
    assert p.returncode == 0, p.stderr
    assert "test accuracy" in p.stdout
    assert len((out / "metrics.csv").read_text().splitlines()) == 4  # header + 3 epochs


@pytest.mark.real_data
def test_limit_beyond_the_data_is_refused(capsys, cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", str(cifar10_dir))
    p = cli(
        capsys,
        "train",
        "alexnet",
        "--limit-train",
        "60000",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "r"),
        "--no-verify",
    )
    _fails_cleanly(p, "--limit-train must lie between 1 and 50,000 (the training set's size)")


# ---------------------------------------------------------------------- bad data files


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


# ---------------------------------------------------------------------- bad arguments


def _run_main(argv) -> tuple[int, str]:
    p = run_main(*argv)  # argparse's usage errors become their exit code
    return p.returncode, p.stderr


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


@pytest.mark.parametrize(
    "argv, python_words, flag_words",
    [
        (
            ["train", "alexnet", "--force"],
            "force only changes the epochs of a run being resumed: add resume",
            "--force only changes the epochs of a run being resumed: add --resume",
        ),
        (
            ["study", "--address", "auto"],
            "address is for executor='ray'",
            "--address is for --executor ray",
        ),
        (
            ["study", "--gpus-per-run", "0.5"],
            "gpus_per_run is for executor='ray'",
            "--gpus-per-run is for --executor ray",
        ),
    ],
)
def test_command_errors_name_parameters_not_typed_flags(argv, python_words, flag_words, tmp_path):
    # The commands raise errors that name parameters (errors.param); the command line renders
    # them as its flags, so no message carries a hand-typed flag.
    from alexnet_cifar.cli import build_parser
    from alexnet_cifar.cli.flags import flag_name
    from alexnet_cifar.errors import SettingError

    args = build_parser().parse_args([*argv, "--out", str(tmp_path / "out")])
    with pytest.raises(SettingError) as e:
        args.func(args)
    assert str(e.value).startswith(python_words)
    assert e.value.render(flag_name).startswith(flag_words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "study"])
def test_help_does_not_promise_the_seed_recipe_whatever_recipe_is_chosen(command, capsys):
    # Under --recipe fast neither command trains with the seed recipe: the help says that the
    # recipe is --recipe's choice, the seed's only by default.
    from alexnet_cifar.recipe import get_recipe

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with the seed recipe" not in text
    assert "with the recipe --recipe names" in text
    fast = get_recipe("fast")
    assert f"seed 300, fast {fast.epochs}" in text and f"fast {fast.batch_size}" in text
    if command == "train":  # the seed's numbers, as the recipe has them
        assert "SGD 0.01, Nesterov 0.9, drops x0.1" in text and "batch 64" in text


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["train", "alexnet", "--epcohs", "1"],
            "alexnet-cifar train: error: unrecognized arguments: --epcohs 1; did you mean "
            "--epochs?",
        ),
        (["evaluate", "x", "--limt-test=3"], "did you mean --limit-test?"),
        (["study", "--no-verfy"], "did you mean --no-verify?"),
        (["models", "--jsn"], "did you mean --json?"),
    ],
)
def test_a_mistyped_flag_gets_the_nearest_flag_of_its_command(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and err.count("\n") == 1, err


def test_a_flag_far_from_every_flag_gets_no_guess(capsys):
    with pytest.raises(SystemExit):
        main(["train", "alexnet", "--zzzzzz"])
    assert "did you mean" not in capsys.readouterr().err


@pytest.mark.real_data
def test_evaluate_names_the_test_sets_size(cifar10_dir, tiny_run, capsys):
    argv = ["evaluate", str(tiny_run), "--data-dir", str(cifar10_dir), "--no-verify"]
    code = main([*argv, "--limit-test", "20000"])
    err = capsys.readouterr().err
    assert code == 2 and "--limit-test must lie between 1 and 10,000 (the test set's size)" in err


def test_evaluate_on_a_run_before_its_first_checkpoint_says_it_has_no_finished_epoch(
    tmp_path, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # what a run writes as it starts
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no finished epoch yet (still training" in err and "not a run folder" not in err


@pytest.mark.real_data
@pytest.mark.slow
def test_evaluate_on_an_unfinished_run_says_how_far_it_is(cifar10_dir, interrupted_run, capsys):
    import json

    argv = ["evaluate", str(interrupted_run), "--data-dir", str(cifar10_dir), "--no-verify"]
    argv += ["--limit-test", "100"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(unfinished run: epoch 1 of 3, 3 steps into the next)" in out.splitlines()[0]
    assert main([*argv, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["unfinished"]
    assert got["epoch"] == 1 and got["epochs"] == 3 and got["note"].startswith("unfinished run")


@pytest.mark.real_data
@pytest.mark.slow
def test_evaluate_shows_a_progress_bar_on_a_terminal(cifar10_dir, tiny_run):
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()  # 120 columns wide: the bar is drawn
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet_cifar", "evaluate", str(tiny_run), "--no-verify"],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=dict(os.environ, CIFAR10_DIR=str(cifar10_dir)),
    )
    os.close(slave)
    seen, deadline = b"", time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the terminal's other end closed: the process ended
                    break
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert b"evaluate:" in seen and b"img" in seen, seen[-300:]


def test_a_ctrl_c_while_the_resume_command_is_printed_still_exits_130(monkeypatch, capsys):
    from alexnet_cifar.cli import training
    from alexnet_cifar.errors import TrainingInterrupted

    def stopped(args):
        raise TrainingInterrupted("SIGINT: stopped", signal.SIGINT, run_dir="r", model="alexnet")

    def another_ctrl_c(args, e):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "cmd_train", stopped)
    monkeypatch.setattr(training, "_resume_train", another_ctrl_c)
    assert main(["train", "alexnet"]) == 130
    assert "SIGINT: stopped" in capsys.readouterr().err


@pytest.mark.parametrize(
    "chosen, column, note",
    [
        (["test"], "best test", None),
        (["validation", "validation"], "test@val", "test@val: the test accuracy at the epoch"),
        (["validation", "test"], "test@*", "*: a run without a split chose by the test set"),
    ],
)
def test_the_study_table_names_how_its_test_column_was_chosen(
    chosen, column, note, monkeypatch, capsys, tmp_path
):
    from alexnet_cifar.cli import studies

    monkeypatch.setattr(studies, "_print_best", lambda s: None)
    monkeypatch.setattr(studies, "_print_seeds", lambda s: None)
    run = dict(label="alexnet", epochs=2, status="finished", best_test_accuracy=0.5, best_epoch=2)
    run.update(final_test_accuracy=0.5, final_train_accuracy=0.6, generalisation_gap=0.1)
    run["seconds_per_epoch"] = 1.0
    runs = []
    for how in chosen:
        runs.append({**run, **({"epoch_chosen_by": how} if how == "validation" else {})})
    studies._print_summary({"runs": runs}, tmp_path, as_json=False)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("variant"))
    assert f" {column} " in f" {header} "
    assert ("best test" in header) == (column == "best test")
    notes = [line for line in lines if line.startswith("test@val:")]
    assert (note in notes[0]) if note else not notes


# ---------------------------------------------------------------------- engine flags at the edges


def _tiny_train(root: Path, out: str, *extra, env=None):
    """alexnet_thinner_4 for one epoch on a small made-up data folder (100 + 20 images)."""
    if not (root / "cifar-10-batches-bin").exists():
        write_binary_folder(root, n_per_file=20)
    args = ["train", "alexnet_thinner_4", "--epochs", "1", "--batch-size", "50"]
    args += ["--data-dir", root, "--no-verify", "--device", "cpu", "--no-progress"]
    return run_main(*args, "--out", root / out, *extra, env=env)


def _one_error_line(p) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_an_unknown_compile_backend_and_a_mode_without_compile_are_one_line(tmp_path):
    line = _one_error_line(_tiny_train(tmp_path, "a", "--compile", "--compile-backend", "nosuch"))
    assert "--compile-backend 'nosuch'" in line and "inductor" in line
    line = _one_error_line(_tiny_train(tmp_path, "b", "--compile-mode", "reduce-overhead"))
    assert "--compile-mode" in line and "add --compile" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_the_fallback_test_hook_shows_the_warning_the_records_and_strict_refusing(tmp_path):
    from alexnet_cifar.engine.capture import FAIL_RUNG_ENV

    hook = {FAIL_RUNG_ENV: "compile"}
    p = _tiny_train(tmp_path, "run", "--compile", env=hook)
    assert p.returncode == 0, p.stderr
    warnings = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: compile failed"), p.stderr
    assert FAIL_RUNG_ENV in warnings[0] and "falling back to eager" in warnings[0]
    for name in ("config.json", "result.json"):
        record = json.loads((tmp_path / "run" / name).read_text())
        (fallback,) = record["engine_fallbacks"]
        assert (fallback["from"], fallback["to"]) == ("compile", "eager"), name
        assert record["engine_used"]["compile"] is False
    strict = _tiny_train(tmp_path, "strict", "--compile", "--strict-engine", env=hook)
    line = _one_error_line(strict)
    assert "--strict-engine forbids falling back" in line and FAIL_RUNG_ENV in line
    wrong = {FAIL_RUNG_ENV: "eager"}
    assert FAIL_RUNG_ENV in _one_error_line(_tiny_train(tmp_path, "w", "--compile", env=wrong))
