"""scripts/measure_cpu_parallel.py cannot rot: its quick run (tiny sizes, every part, the
data-parallel ranks under torchrun and the two studies among them) runs and writes its
figures. What the figures say is a measurement on a quiet machine, not a test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "measure_cpu_parallel.py"


@pytest.mark.real_data
@pytest.mark.slow
def test_the_quick_run_measures_every_part(cifar10_dir, tmp_path):
    out = tmp_path / "figures.json"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--study", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
        env=dict(os.environ, CIFAR10_DIR=str(cifar10_dir)),
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["threads"]["ratio"] > 0 and len(figures["threads"]["two_threads"]) == 1
    assert figures["data_parallel"]["ratio"] > 0
    assert figures["study"]["speedup"] > 0
    for line in ("2 threads / 1 thread: ", "2 ranks / 1 process: ", "--jobs 2 is "):
        assert line in p.stdout
