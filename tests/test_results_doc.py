"""docs/results.md agrees with the records shipped under docs/results/; shipped records carry
no path of the machine they ran on; the overfitting contrast is generated from two run folders
(scripts/results_doc.py)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from .test_report import make_split_run

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "results_doc.py"

sys.path.insert(0, str(SCRIPT.parent))
try:
    import results_doc
finally:
    sys.path.remove(str(SCRIPT.parent))


def test_results_md_agrees_with_the_shipped_records():
    assert results_doc.check() == []


def test_no_checkpoint_or_model_is_shipped():
    shipped = [p.name for p in (REPO / "docs" / "results").rglob("*") if p.is_file()]
    assert not [n for n in shipped if n.endswith((".pt", ".pth", ".tfevents"))]


def _docs(tmp_path: Path) -> Path:
    """A copy of docs/results.md with no records beside it, its generated parts written anew
    from none (the page in the repository shows the records shipped with it)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copyfile(REPO / "docs" / "results.md", docs / "results.md")
    results_doc.generate(docs)
    return docs


def _as_trained(folder: Path, machine: Path) -> Path:
    """A run folder as train leaves it on a machine: paths of it in config.json and
    result.json, a checkpoint and a model beside the records."""
    config = json.loads((folder / "config.json").read_text())
    config.update(
        data_dir=str(machine / "data" / "cifar10"),
        command=[
            str(machine / ".venv" / "bin" / "alexnet-cifar"), "train", config["model"],
            "--val-split", "5000", "--out", str(folder), "--data-dir", str(machine / "data"),
        ],  # fmt: skip
        changes=[{"data_dir": [str(machine / "old"), str(machine / "data")], "at": "then"}],
        code={"alexnet_cifar": "0.1.0", "git_commit": "0" * 40},
    )
    (folder / "config.json").write_text(json.dumps(config))
    result = {"run_dir": str(folder), "model_file": str(folder / "model.pt"), "epochs": 3}
    (folder / "result.json").write_text(json.dumps(result))
    (folder / "checkpoint.pt").write_bytes(b"\0" * 64)
    (folder / "model.pt").write_bytes(b"\0" * 64)
    return folder


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def test_shipped_records_carry_no_path_of_the_machine(tmp_path):
    machine = tmp_path / "machine"
    run = _as_trained(make_split_run(machine / "runs" / "alexnet", "alexnet", 3, 5000), machine)
    dest = results_doc.ship(run, "contrast/alexnet", _docs(tmp_path))
    assert dest == tmp_path / "docs" / "results" / "contrast" / "alexnet"
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "metrics.csv", "result.json"]
    assert (dest / "metrics.csv").read_bytes() == (run / "metrics.csv").read_bytes()
    config = json.loads((dest / "config.json").read_text())
    assert config["command"] == [
        "alexnet-cifar", "train", "alexnet", "--val-split", "5000", "--out", "alexnet",
        "--data-dir", "$CIFAR10_DIR",
    ]  # fmt: skip
    assert config["data_dir"] == "$CIFAR10_DIR"
    assert config["changes"][0]["data_dir"] == ["$CIFAR10_DIR", "$CIFAR10_DIR"]
    result = json.loads((dest / "result.json").read_text())
    assert (result["run_dir"], result["model_file"]) == ("alexnet", "model.pt")
    for record in (config, result):
        assert not [s for s in _strings(record) if str(machine) in s or s.startswith("/")]

    # shipped again after a resume extended the finished run: its old result goes
    (run / "result.json").unlink()
    results_doc.ship(run, "contrast/alexnet", tmp_path / "docs")
    assert not (dest / "result.json").exists()


@pytest.mark.real_data
@pytest.mark.slow
def test_a_real_run_ships_without_paths(reference_run, tmp_path):
    dest = results_doc.ship(reference_run, "tiny", _docs(tmp_path))
    for name in ("config.json", "result.json"):
        text = (dest / name).read_text()
        assert str(reference_run) not in text and str(REPO) not in text
        assert not [s for s in _strings(json.loads(text)) if s.startswith("/")], name
    assert json.loads((dest / "config.json").read_text())["command"][0] == "alexnet-cifar"


def _contrast_rows(md: str) -> dict[str, list[str]]:
    part = md[md.index("<!-- generated: contrast -->") :]
    rows = [line for line in part.splitlines() if line.startswith("| `")]
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    return {c[0].strip("`"): c for c in cells}


def _metrics(folder: Path) -> dict[str, list[float]]:
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


def test_the_contrast_is_generated_from_two_runs(tmp_path):
    docs, runs = _docs(tmp_path), tmp_path / "runs"
    swoosh = make_split_run(runs / "a", "alexnet", 60, 5000, planned=300, kind="swoosh")
    falling = make_split_run(
        runs / "t4", "alexnet_thinner_4", 60, 5000, planned=300, kind="falling", seed=1
    )
    results_doc.ship(swoosh, "contrast/alexnet", docs)
    results_doc.ship(falling, "contrast/alexnet_thinner_4", docs)
    # new records, the document not yet regenerated: the check says which parts disagree
    assert results_doc.check(docs) == [
        "docs/results.md's part 'records' disagrees with the records",
        "docs/results.md's part 'contrast' disagrees with the records",
    ]
    assert sorted(results_doc.generate(docs)) == ["contrast", "records"]
    assert results_doc.check(docs) == []
    md = (docs / "results.md").read_text()

    rows = _contrast_rows(md)
    assert list(rows) == ["alexnet", "alexnet_thinner_4"]
    for model, folder in (("alexnet", swoosh), ("alexnet_thinner_4", falling)):
        m, row = _metrics(folder), rows[model]
        low = min(range(60), key=m["val_loss"].__getitem__)
        assert row[1] == "60 of 300 (unfinished)"
        assert row[2] == f"{m['val_loss'][low]:.3f} ({low + 1})"
        assert row[3] == f"{m['val_loss'][-1]:.3f}"
        assert row[4].startswith(f"{m['val_loss'][-1] - m['val_loss'][low]:+.3f} (")
        assert row[6] == f"{m['val_loss'][-1] - m['loss'][-1]:+.3f}"
        assert row[7] == f"{100 * (m['accuracy'][-1] - m['val_accuracy'][-1]):+.2f} pts"
    # the swoosh: lowest early, then a rise of more than 5%; the thin variant: no rise
    assert rows["alexnet"][8] == "**overfits** so far"
    assert rows["alexnet"][9].endswith(": rising")  # smoothed over ten epochs too
    assert rows["alexnet"][11] == "agrees so far"
    assert rows["alexnet_thinner_4"][8] == "**no sign yet** so far"
    assert rows["alexnet_thinner_4"][9].endswith(": falling")
    assert rows["alexnet_thinner_4"][11] == "agrees so far"
    assert "computed here on the epochs done (60 of 300)" in md
    assert "Unknown until the runs go on: epochs 61 to 300" in md
    assert "(on the 60 epochs done of 300: the run is unfinished)" in md
    figure = docs / "results" / "contrast_loss.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "results/contrast_loss.png" in md

    # a number of a generated table changed by hand: the check fails, naming the part
    (docs / "results.md").write_text(md.replace(rows["alexnet"][3], "0.123", 1))
    assert results_doc.check(docs) == [
        "docs/results.md's part 'contrast' disagrees with the records"
    ]
    # a shown figure that is gone is named too
    (docs / "results.md").write_text(md)
    figure.unlink()
    gone = "docs/results.md shows results/contrast_loss.png, which is missing"
    assert results_doc.check(docs) == [gone]


def test_the_smoothed_trend_compares_the_last_ten_epochs_with_the_ten_before():
    assert results_doc.smoothed_trend([1.0] * 19) is None  # fewer than two windows
    # a bump of 0.08 in the last epoch (+14% on that epoch) moves the last ten's mean 1.4%
    noisy = [0.60, 0.58] * 10
    noisy[-1] = 0.66
    t = results_doc.smoothed_trend(noisy)
    assert t["before_epochs"] == (1, 10) and t["recent_epochs"] == (11, 20)
    assert t["before"] == pytest.approx(0.59) and t["recent"] == pytest.approx(0.598)
    assert t["word"] == "rising"  # +1.4%: above the 1% a flat curve is allowed
    falling = [1.0 - 0.01 * i for i in range(25)]
    t = results_doc.smoothed_trend(falling)
    assert t["recent_epochs"] == (16, 25) and t["word"] == "falling"
    assert t["change"] == pytest.approx((0.805 - 0.905) / 0.905)
    assert results_doc.smoothed_trend([0.5, 0.502] * 10)["word"] == "flat"
