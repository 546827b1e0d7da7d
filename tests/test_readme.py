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


def test_the_opening_commands_are_real_make_targets():
    kind, code, _ = _blocks()[0]
    assert kind == "sh"
    targets = [line.split()[1] for line in code.splitlines() if line.startswith("make ")]
    assert targets == ["demo", "test"]
    p = subprocess.run(["make", "-n", *targets], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "pytest" in p.stdout and "alexnet-cifar train" in p.stdout


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
        ran += 1
    assert ran >= 5


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
