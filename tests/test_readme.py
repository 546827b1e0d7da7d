"""Every code block of the README runs as written.

The ``sh`` and ``python`` blocks are a tour: run in order, in one fresh folder, with
``alexnet-cifar`` on the PATH (the activated environment) and CIFAR10_DIR set, each must
succeed. ``text`` blocks are synopses and sample output, not commands. The opening block's
``make`` targets set up an environment and run this very suite, so they are checked by make's
dry run instead of being run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[str, str, int]]:
    text = (REPO / "README.md").read_text()
    return [
        (m.group(1), m.group(2), text[: m.start()].count("\n") + 1) for m in BLOCK.finditer(text)
    ]


def test_every_block_says_what_it_is():
    kinds = {kind for kind, _, _ in _blocks()}
    assert kinds <= {"sh", "python", "text"}, kinds


# ---------------------------------------------------------------------- the command summary

#: Words of a synopsis that stand for a family of flags, and how to list that family.
FAMILIES = {
    "engine flags as in train": "engine",
    "training flags": "train",
    "the training flags of train": "train",
}


def _synopses() -> dict[str, list[str]]:
    """Each command's synopses in the README's ``text`` blocks: one string per synopsis, its
    continuation lines joined."""
    out: dict[str, list[str]] = {}
    for kind, code, _ in _blocks():
        if kind != "text":
            continue
        command = None
        for line in code.splitlines():
            m = re.match(r"alexnet-cifar ([a-z-]+)(.*)", line)
            if m:
                command = m.group(1)
                out.setdefault(command, []).append(m.group(2))
            elif command and re.match(r"\s+[\[-]", line):
                out[command][-1] += " " + line
            else:
                command = None
    return {name: [" ".join(t.split()) for t in texts] for name, texts in out.items()}


def _flag_families() -> dict[str, set[str]]:
    import argparse

    from alexnet_cifar.cli.flags import add_engine_flags, add_train_flags

    families = {}
    for name, add in (("engine", add_engine_flags), ("train", add_train_flags)):
        p = argparse.ArgumentParser()
        add(p)
        families[name] = {s for a in p._actions for s in a.option_strings if s.startswith("--")}
    families["train"].discard("--help")
    families["engine"].discard("--help")
    return families


def _flags_written(text: str) -> set[str]:
    """The flags a synopsis names; ``--[no-]compile`` names --compile and --no-compile."""
    flags = set()
    for no, rest in re.findall(r"--(\[no-\])?([a-z][a-z0-9-]*)", text):
        flags.add("--" + rest)
        if no:
            flags.add("--no-" + rest)
    return flags


def test_the_command_summary_matches_the_parser():
    """The README's synopses name every command, its positional arguments, every flag and
    every choice argparse has for it, and no flag it lacks; a new flag needs a README line."""
    import argparse

    from alexnet_cifar.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    synopses, families = _synopses(), _flag_families()
    assert set(synopses) == set(commands.choices)
    problems: list[str] = []
    for name, sub in commands.choices.items():
        text = " ".join(synopses[name])
        written, by_family = _flags_written(text), set()
        for family, kind in FAMILIES.items():
            if f"[{family}]" in text:
                by_family |= families[kind] - written
        written |= by_family
        positionals = {a.metavar or a.dest.upper() for a in sub._actions if not a.option_strings}
        for synopsis in synopses[name]:  # the words before the first flag name arguments
            for word in re.findall(r"[A-Z][A-Z_]*", re.split(r"[\[-]", synopsis, maxsplit=1)[0]):
                if word not in positionals:
                    problems.append(f"{name}: {word} is not an argument of it")
        known = set()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.option_strings:
                metavar = action.metavar or action.dest.upper()
                if not re.search(rf"\b{re.escape(metavar)}\b", text):
                    problems.append(f"{name}: the argument {metavar}")
                continue
            longs = [s for s in action.option_strings if s.startswith("--")]
            known.update(longs)
            if not set(longs) & written:
                problems.append(f"{name}: {longs[0]} is missing")
            for choice in () if set(longs) <= by_family else action.choices or ():
                if not re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", text):
                    problems.append(f"{name}: {longs[0]}'s choice {choice} is missing")
        problems += [f"{name}: {flag} is not a flag of it" for flag in sorted(written - known)]
    assert not problems, problems


def test_the_opening_commands_are_real_make_targets():
    kind, code, _ = _blocks()[0]
    assert kind == "sh"
    targets = [line.split()[1] for line in code.splitlines() if line.startswith("make ")]
    assert targets == ["demo", "test"]
    p = subprocess.run(["make", "-n", *targets], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "pytest" in p.stdout and "alexnet-cifar train" in p.stdout


def _json_of(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def _result(run: Path, epochs: int = 1, **config) -> dict:
    """A finished run's result.json, after checking its config.json holds ``config``."""
    recorded = _json_of(run / "config.json")
    for key, value in config.items():
        assert recorded[key] == value, (run, key, recorded[key])
    result = _json_of(run / "result.json")
    assert result["epochs"] == epochs and (run / "model.pt").is_file()
    return result


def _check_ddp(folder: Path, out: str) -> None:
    result = _result(folder / "runs" / "ddp", limit_train=256, limit_test=100)
    assert result["world_size"] == 2
    assert f"test accuracy {result['test_accuracy']:.4f}" in out and "run folder runs/ddp" in out


def _check_study(folder: Path, out: str) -> None:
    for model in ("alexnet", "alexnet_thinner_4"):
        _result(folder / "study-demo" / "runs" / model, limit_train=500, limit_test=200)
    assert (folder / "study-demo" / "report.md").is_file()
    assert "report: study-demo/report.md and study-demo/report.html" in out


def _check_seeds(folder: Path, out: str) -> None:
    for model in ("alexnet", "alexnet_thinner_4"):
        for seed in range(3):
            run = folder / "study-seeds" / model / f"seed-{seed}"
            _result(run, seed=seed, val_split=500, limit_test=200)
    assert "across seeds" in out
    assert "Across seeds" in (folder / "study-seeds" / "report.md").read_text()


def _check_jobs(folder: Path, out: str) -> None:
    # the first command stopped both runs after epoch 1; the second finished them
    for model in ("alexnet", "alexnet_thinner_4"):
        _result(folder / "study-jobs" / "runs" / model, epochs=2, limit_train=256)
    assert out.count("report: study-jobs/report.md") == 2


def _check_ray(folder: Path, out: str) -> None:
    for seed in range(2):
        _result(folder / "study-ray" / "alexnet_thinner_4" / f"seed-{seed}", seed=seed)
    assert "report: study-ray/report.md" in out


def _check_tour(folder: Path, out: str) -> None:
    result = _result(folder / "runs" / "tour", limit_train=500, limit_test=200)
    assert f"test accuracy {result['test_accuracy']:.4f}" in out
    assert (folder / "tour.onnx").stat().st_size > 1_000_000  # the weights are in it


def _check_onnx(folder: Path, out: str) -> None:
    classes = re.fullmatch(r"\[([\d\s]+)\]", out.strip())
    assert classes and len(classes.group(1).split()) == 8, out  # 8 class indices
    assert all(0 <= int(c) <= 9 for c in classes.group(1).split())


def _check_keras(folder: Path, out: str) -> None:
    assert (folder / "tour.h5").is_file()
    assert "as alexnet_thinner_4" in out and "into runs/keras-tour" in out
    imported = folder / "runs" / "keras-tour"
    assert (imported / "model.pt").is_file()
    assert "alexnet_thinner_4 on 500 test images: loss" in out
    assert "flip-averaged (--tta): loss" in out and "per-class accuracy" in out


def _check_variant_file(folder: Path, out: str) -> None:
    shape = _json_of(folder / "thinner_4_bn.json")
    assert shape["name"] == "thinner_4_bn" and shape["batch_norm"] is True
    assert 'Model: "thinner_4_bn"' in out and "bn1 (BatchNormalization)" in out


def _check_variant_study(folder: Path, out: str) -> None:
    run = folder / "study-mine" / "runs" / "thinner_4_bn"
    shape = _result(run, limit_train=500, model="thinner_4_bn")
    assert _json_of(run / "config.json")["model_config"]["batch_norm"] is True and shape
    report = (folder / "study-mine" / "report.md").read_text()
    assert "| `thinner_4_bn` | not in the post |" in report


#: What each block of the tour must print or write, by a phrase of the block.
TOUR = {
    "models --config alexnet_thinner_4": _check_variant_file,
    "--out study-mine": _check_variant_study,
    "torchrun --nproc-per-node 2": _check_ddp,
    "--out study-demo": _check_study,
    "--out study-seeds": _check_seeds,
    "--out study-jobs": _check_jobs,
    "--out study-ray": _check_ray,
    "--out runs/tour --quiet": _check_tour,
    'ort.InferenceSession("tour.onnx")': _check_onnx,
    "import-keras tour.h5": _check_keras,
}


def test_every_tour_block_has_its_check():
    blocks = [code for kind, code, _ in _blocks()[1:] if kind in ("sh", "python")]
    for code in blocks:
        assert [k for k in TOUR if k in code].__len__() == 1, code
    assert len(blocks) == len(TOUR)


@pytest.mark.slow
@pytest.mark.real_data
def test_the_tour_runs_as_written(cifar10_dir, tmp_path):
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, CIFAR10_DIR=str(cifar10_dir), PATH=f"{bin_dir}:{os.environ['PATH']}")
    env["OMP_NUM_THREADS"] = "1"  # torchrun's processes share the two cores
    ran = 0
    for kind, code, line in _blocks()[1:]:
        if kind == "sh":
            cmd = ["bash", "-euo", "pipefail", "-c", code]
        elif kind == "python":
            cmd = [sys.executable, "-c", code]
        else:
            continue
        # Output into files, not pipes: a daemon a block starts (Ray's) may hold a pipe open
        # long after the command has finished.
        out, err = tmp_path / f".out-{line}", tmp_path / f".err-{line}"
        with open(out, "w") as o, open(err, "w") as e:
            p = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=o, stderr=e, timeout=900)
        stdout, stderr = out.read_text(), err.read_text()
        assert p.returncode == 0, f"README.md line {line}:\n{code}\n{stdout[-2000:]}\n{stderr}"
        assert "Traceback" not in stderr, f"README.md line {line}: {stderr}"
        (check,) = [c for phrase, c in TOUR.items() if phrase in code]
        check(tmp_path, stdout)  # what the block printed and wrote, not only its exit code
        ran += 1
    assert ran == len(TOUR)


def test_the_reliability_notes_cite_tests_that_exist():
    """docs/reliability.md proves each row by a test it names: every name must be a test of
    the file it cites (a renamed or moved test would leave the row unproven)."""
    import ast

    text = (REPO / "docs" / "reliability.md").read_text()
    defined = {
        f.name: {
            n.name for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.FunctionDef)
        }
        for f in (REPO / "tests").glob("test_*.py")
    }
    cited = 0
    for row in text.splitlines():
        if not row.startswith("|"):
            continue
        cell = row.rstrip("|").rsplit("|", 1)[-1]
        for file in re.findall(r"(test_\w+\.py)", cell):
            assert file in defined, f"{file} cited in docs/reliability.md does not exist"
        current = None
        for token in re.findall(r"(test_\w+\.py)|(test_\w+)", cell):
            if token[0]:
                current = token[0]
            elif current is not None:
                assert token[1] in defined[current], f"{current}::{token[1]} does not exist"
                cited += 1
    assert cited >= 40


def test_the_docs_name_every_module():
    """docs/architecture.md names every module of the package root, and each subpackage's
    docstring names each of its modules."""
    import importlib

    package = REPO / "src" / "alexnet_cifar"
    layout = (REPO / "docs" / "architecture.md").read_text().split("## Errors")[0]
    top = {p.stem for p in package.glob("*.py")} - {"__init__", "__main__"}
    missing = [m for m in sorted(top) if not re.search(rf"(?<![\w/]){m}\b", layout)]
    assert not missing, f"docs/architecture.md does not place {missing}"
    for init in sorted(package.glob("*/__init__.py")):
        sub = importlib.import_module(f"alexnet_cifar.{init.parent.name}")
        parts = {p.stem for p in init.parent.glob("*.py")} - {"__init__"}
        missing = [m for m in sorted(parts) if f"``{m}``" not in (sub.__doc__ or "")]
        assert not missing, f"{init.parent.name}/__init__'s docstring does not name {missing}"


def test_the_torchrun_example_sets_the_threads_so_torchrun_does_not_warn():
    runnable = [code for kind, code, _ in _blocks() if kind == "sh" and "torchrun" in code]
    assert runnable and all("OMP_NUM_THREADS=" in code for code in runnable)


def test_make_demo_resumes_only_a_run_it_has_started(tmp_path):
    """On a fresh folder it starts the run (no 'nothing to resume'); after, it resumes it."""
    import shutil

    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".venv").mkdir()

    def demo() -> str:
        p = subprocess.run(
            ["make", "-n", "-o", "venv", "demo"], cwd=tmp_path, capture_output=True, text=True
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    assert "alexnet-cifar train" in demo() and "--resume" not in demo()
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "checkpoint.pt").write_bytes(b"")
    assert "--resume" in demo()


# ---------------------------------------------------------------------- facts the README states


def test_the_variants_table_is_what_the_models_command_prints():
    """Parameters, MACs and fp32 MB of the README's table, as `alexnet-cifar models` and
    `summary` print them (one rounding: 21.95 MB is 22.0 in both)."""
    from .helpers import run_main

    text = (REPO / "README.md").read_text()
    table = text.split("## The five variants")[1].split("\n\n")[1].splitlines()[2:]
    readme = {}
    for row in table:
        cells = [c.strip() for c in row.strip("|").split("|")]
        readme[cells[0].strip("`")] = (cells[2], cells[3].replace(" ", ""), cells[4])
    printed = {}
    for line in run_main("models").stdout.splitlines()[1:]:
        name, params, macs, mb = line.split()[:4]
        printed[name] = (params, macs, mb)
        summary = run_main("summary", name).stdout
        assert f"float32 size: {mb} MB" in summary
    assert readme == printed


def test_the_normalisation_the_readme_states_is_the_one_used():
    from alexnet_cifar.augment import SEED_MEAN, SEED_STD

    text = (REPO / "README.md").read_text()
    mean, std = ", ".join(f"{v:g}" for v in SEED_MEAN), ", ".join(f"{v:g}" for v in SEED_STD)
    assert f"mean {mean}; std {std}" in text  # the seed recipe's table
    assert f"mean ({mean}) and std ({std})" in text  # export's input


@pytest.mark.slow
def test_make_test_counts_the_tests_that_need_chromium_from_the_tests(tmp_path):
    """Without the browser, `make test` says how many tests skip for it, counted from the
    tests themselves (those that take the chromium fixture), and how to install it."""
    import ast

    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    p = subprocess.run(
        ["make", "-s", "-o", "venv", "chromium-note", f"VENV={tmp_path / 'venv'}", "CHROMIUM="],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert p.returncode == 0, p.stderr
    taking = 0
    for f in sorted((REPO / "tests").glob("test_*.py")):
        for fn in ast.walk(ast.parse(f.read_text())):
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_"):
                taking += "chromium" in [a.arg for a in fn.args.args]
    assert taking >= 5
    assert f"note: {taking} tests of report.html need headless Chromium" in p.stdout, p.stdout
    assert "on Debian: sudo apt-get install chromium" in p.stdout
    # with the browser there, nothing is said
    found = subprocess.run(
        ["make", "-s", "-o", "venv", "chromium-note", f"VENV={tmp_path / 'venv'}", "CHROMIUM=x"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0 and found.stdout == "", found.stdout
