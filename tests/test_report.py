"""The report from small synthetic run folders: files, figures, numbers, verdict, and the HTML
in a real headless Chromium."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_cifar.cli import main
from alexnet_cifar.models import PRESETS
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.report import OVERFIT_RISE, build_report
from alexnet_cifar.variants import layer_table

from .headless_chromium import find_chromium, load_page

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


def _curves(n: int, kind: str, top: float, seed: int) -> list[dict]:
    """Metrics rows shaped like the post's: 'swoosh' test loss falls then climbs, 'falling' not."""
    rng = np.random.default_rng(seed)
    rows = []
    recipe = Recipe(epochs=max(n, 1))
    for e in range(1, n + 1):
        t = e / n
        train_loss = 2.3 * math.exp(-3 * t) + 0.05 + float(rng.uniform(0, 0.01))
        if kind == "swoosh":
            val_loss = 0.8 + 3.0 * (t - 0.35) ** 2 + float(rng.uniform(0, 0.01))
        else:
            val_loss = 2.3 * math.exp(-2 * t) + 0.5 + float(rng.uniform(0, 0.01))
        rows.append(
            {
                "epoch": e,
                "loss": train_loss,
                "accuracy": min(0.999, 0.1 + (top + 0.05) * (1 - math.exp(-4 * t))),
                "val_loss": val_loss,
                "val_accuracy": max(  # an accuracy: never below 0, or the run is damaged
                    0.0,
                    0.1
                    + (top - 0.1) * (1 - math.exp(-5 * t))
                    - (0.02 * t if kind == "swoosh" else 0.0)
                    + float(rng.uniform(0, 0.005)),
                ),
                "lr": recipe.lr_at(e - 1),
                "seconds": round(float(rng.uniform(1.0, 3.0)), 3),
            }
        )
    return rows


def make_run(
    folder: Path,
    model: str,
    epochs: int,
    *,
    planned: int | None = None,
    kind: str = "swoosh",
    top: float = 0.8,
    seed: int = 0,
    device: str = "cpu",
    gpu: str | None = None,
    model_bytes: int = 123_457,
    recipe: Recipe | None = None,
) -> Path:
    """A run folder as train() leaves it; unfinished (no result.json, no model.pt) if
    ``planned`` exceeds ``epochs``."""
    planned = planned or epochs
    folder.mkdir(parents=True)
    recipe = recipe.with_(epochs=planned) if recipe is not None else Recipe(epochs=planned)
    versions = {"torch": "2.13.0", "alexnet_cifar": "0.1.0"}
    if gpu:
        versions["gpu"] = gpu
    config = {
        "model": model,
        "model_config": PRESETS[model].to_dict(),
        "recipe": recipe.to_dict(),
        "seed": seed,
        "limit_train": None,
        "limit_test": None,
        "num_classes": 10,
        "device": device,
        "n_train": 50000,
        "n_test": 10000,
        "versions": versions,
    }
    (folder / "config.json").write_text(json.dumps(config))
    rows = _curves(epochs, kind, top, seed)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    if planned == epochs:
        rng = np.random.default_rng(seed + 100)
        cm = rng.integers(0, 40, (10, 10))
        np.fill_diagonal(cm, rng.integers(500, 950, 10))
        per_class = {c: float(cm[i, i] / cm[i].sum()) for i, c in enumerate(CLASSES)}
        result = {
            "model": model,
            "epochs": epochs,
            "test_accuracy": rows[-1]["val_accuracy"],
            "params": layer_table(model).params,
            "classes": CLASSES,
            "per_class_accuracy": per_class,
            "confusion_matrix": cm.tolist(),
        }
        (folder / "result.json").write_text(json.dumps(result))
        (folder / "model.pt").write_bytes(b"\0" * model_bytes)
    return folder


def read_metrics(folder: Path) -> dict[str, list[float]]:
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {c: [float(r[c]) for r in rows] for c in COLUMNS}


def md_tables(md: str) -> list[list[dict]]:
    """Every Markdown table of ``md``, as lists of dicts keyed by the header cells."""
    tables, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|--"):
            header = [c.strip() for c in lines[i].strip("|").split(" | ")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip("|").split(" | ")]
                rows.append(dict(zip(header, cells)))
                i += 1
            tables.append(rows)
        i += 1
    return tables


def check_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    w, h = struct.unpack(">II", data[16:24])
    with Image.open(path) as im:
        im.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as im:
        im.load()
        assert im.size == (w, h)
        colours = sum(1 for c in im.convert("L").histogram() if c)
    assert 600 <= w <= 2500 and 350 <= h <= 2000, (path.name, w, h)
    assert len(data) > 15_000, (path.name, len(data))  # drawn, not blank
    assert colours > 20, path.name
    return w, h


# ---------------------------------------------------------------------- a study-like mix


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Four runs: the post's best finished first, a swoosh, an unfinished one, a GPU run."""
    root = tmp_path_factory.mktemp("mixed")
    runs = [
        make_run(root / "runs" / "alexnet", "alexnet", 12, kind="swoosh", top=0.7),
        make_run(
            root / "runs" / "alexnet_slim_regular",
            "alexnet_slim_regular",
            8,
            kind="falling",
            top=0.9,
            model_bytes=350_600_000 // 1000,
            device="cuda:0",
            gpu="NVIDIA H100 80GB HBM3",
        ),
        make_run(root / "runs" / "alexnet_thinner_4", "alexnet_thinner_4", 3, planned=10),
        make_run(root / "runs" / "alexnet_slim", "alexnet_slim", 1, top=0.5),
    ]
    out = root / "report"
    summary = build_report(runs, out)
    return runs, out, summary


def test_writes_every_file(mixed):
    runs, out, summary = mixed
    for name in ("report.md", "report.html", "summary.json"):
        assert (out / name).is_file()
    assert json.loads((out / "summary.json").read_text()) == summary
    figures = list(summary["figures"].values()) + [
        r["figures"]["train_vs_test"] for r in summary["runs"]
    ]
    assert set(summary["figures"]) == {
        "test_accuracy",
        "train_accuracy",
        "test_loss",
        "train_loss",
        "model_size",
        "confusion_matrix",
        "per_class_accuracy",
    }
    assert len(set(figures)) == len(figures) == 7 + len(runs)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(figures)
    md = (out / "report.md").read_text()
    for f in figures:
        check_png(out / f)
        assert f"]({f})" in md  # every figure is shown, as a file beside report.md


def test_table_numbers_equal_the_metrics(mixed):
    runs, out, summary = mixed
    md = (out / "report.md").read_text()
    table = {r["variant"].strip("`"): r for r in md_tables(md)[0]}
    by_label = {r["label"]: r for r in summary["runs"]}
    for folder in runs:
        m = read_metrics(folder)
        model = json.loads((folder / "config.json").read_text())["model"]
        s, row = by_label[model], table[model]
        ib = int(np.argmax(m["val_accuracy"]))
        il = int(np.argmin(m["val_loss"]))
        expect = {
            "best_test_accuracy": m["val_accuracy"][ib],
            "best_epoch": ib + 1,
            "final_test_accuracy": m["val_accuracy"][-1],
            "final_train_accuracy": m["accuracy"][-1],
            "generalisation_gap": m["accuracy"][-1] - m["val_accuracy"][-1],
            "lowest_test_loss_epoch": il + 1,
            "total_seconds": sum(m["seconds"]),
            "epochs": len(m["epoch"]),
            "params": PRESETS[model].published_params,
            "macs": layer_table(model).macs,
        }
        for k, v in expect.items():
            assert s[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (model, k)
        assert s["seconds_per_epoch"] == pytest.approx(np.mean(m["seconds"]), rel=1e-12)
        # the Markdown table shows the same numbers, rounded
        assert row["best test acc."] == f"{100 * expect['best_test_accuracy']:.2f}%"
        assert row["best at epoch"] == str(ib + 1)
        assert row["final test acc."] == f"{100 * m['val_accuracy'][-1]:.2f}%"
        assert row["final train acc."] == f"{100 * m['accuracy'][-1]:.2f}%"
        assert row["gap"] == f"{100 * expect['generalisation_gap']:+.2f} pts"
        assert row["lowest test loss: epoch"] == str(il + 1)
        assert row["s / epoch"] == f"{np.mean(m['seconds']):.1f}"
        assert row["params"] == f"{PRESETS[model].published_params:,}"
        assert row["MACs / image"] == f"{layer_table(model).macs / 1e9:.3f} G"
        if (folder / "model.pt").exists():
            size = (folder / "model.pt").stat().st_size
            assert s["checkpoint_bytes"] == size
            assert row["checkpoint MB"] == f"{size / 1e6:.1f}"
        else:
            assert s["checkpoint_bytes"] is None and row["checkpoint MB"] == "–"
    assert table["alexnet_slim_regular"]["device"] == "cuda:0 (NVIDIA H100 80GB HBM3)"
    assert "generalisation gap) = final train accuracy − final test accuracy" in md


def test_published_figures_and_differences(mixed):
    runs, out, summary = mixed
    md = (out / "report.md").read_text()
    post = {r["variant"].strip("`"): r for r in md_tables(md)[1]}
    s = {r["label"]: r for r in summary["runs"]}
    reg = s["alexnet_slim_regular"]
    assert reg["published_test_accuracy"] == "~92%"
    assert reg["test_accuracy_difference"] == pytest.approx(reg["best_test_accuracy"] - 0.92)
    assert post["alexnet_slim_regular"]["test accuracy: post"] == "~92%"
    assert post["alexnet_slim_regular"]["difference"].endswith(
        f"{100 * (reg['best_test_accuracy'] - 0.92):+.2f} pts"
    )
    assert s["alexnet_slim"]["published_test_accuracy"] == "90%+"
    assert post["alexnet_slim"]["test accuracy: post"] == "90%+"
    for name in ("alexnet", "alexnet_thinner_4"):
        assert s[name]["published_test_accuracy"] is None
        assert post[name]["test accuracy: post"] == "–"
    for name, r in s.items():
        assert r["published_params"] == PRESETS[name].published_params
        assert r["params_difference"] == 0
        assert post[name]["params: post"] == f"{PRESETS[name].published_params:,}"


def test_verdict_and_overfitting(mixed):
    runs, out, summary = mixed
    md = (out / "report.md").read_text()
    assert summary["best"]["model"] == "alexnet_slim_regular"
    assert summary["agrees_with_post"] is True
    assert "**Best run: `alexnet_slim_regular`**: best test accuracy " in md
    assert "agrees with the post" in md
    s = {r["label"]: r for r in summary["runs"]}
    assert s["alexnet"]["overfitting"] is True  # the swoosh
    assert s["alexnet"]["test_loss_rise"] > OVERFIT_RISE
    assert "test loss rose" in s["alexnet"]["overfitting_note"]
    assert s["alexnet_slim_regular"]["overfitting"] is False
    assert s["alexnet_slim"]["overfitting"] is None  # one epoch
    assert "`alexnet`: overfits: test loss rose" in md
    # the class-by-class figures belong to the best (finished) variant
    assert summary["class_results_of"] == "alexnet_slim_regular"


def test_unfinished_run_is_shown_as_such(mixed):
    runs, out, summary = mixed
    md = (out / "report.md").read_text()
    s = {r["label"]: r for r in summary["runs"]}["alexnet_thinner_4"]
    assert s["status"] == "unfinished" and (s["epochs"], s["epochs_planned"]) == (3, 10)
    assert "unfinished (epoch 3 of 10)" in md
    assert "unfinished: `alexnet_thinner_4`" in md


def test_html_is_self_contained(mixed):
    runs, out, summary = mixed
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>\n")
    assert '<meta charset="utf-8">' in page
    assert "<script" not in page.lower()
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(srcs) == 7 + len(runs)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    # nothing loaded from anywhere: no URLs other than data: ones
    assert not re.search(r'(?:src|href)="(?!data:)', page)
    assert "url(" not in page and "@import" not in page


@pytest.mark.slow
def test_single_epoch_and_repeated_variants(tmp_path):
    """A one-epoch run still plots; two runs of one variant are told apart by their folders."""
    a = make_run(tmp_path / "alexnet-seed0", "alexnet", 1, seed=0)
    b = make_run(tmp_path / "alexnet-seed1", "alexnet", 6, seed=1)
    c = make_run(tmp_path / "x" / "run", "alexnet_thinner_2", 5)
    d = make_run(tmp_path / "y" / "run", "alexnet_thinner_2", 5, seed=3)
    out = tmp_path / "r"
    summary = build_report([a, b, c, d], out)
    labels = [r["label"] for r in summary["runs"]]
    assert labels == [
        "alexnet-seed0",
        "alexnet-seed1",
        "alexnet_thinner_2 (x/run)",
        "alexnet_thinner_2 (y/run)",
    ]
    files = [r["figures"]["train_vs_test"] for r in summary["runs"]]
    assert len(set(files)) == 4
    for f in files + list(summary["figures"].values()):
        check_png(out / f)
    assert summary["runs"][0]["overfitting"] is None  # one epoch: too short to tell
    assert summary["agrees_with_post"] is None
    assert "is not among these runs" in (out / "report.md").read_text()


@pytest.mark.slow
def test_report_command_on_a_study_folder(tmp_path, capsys):
    """A study folder stands for its runs; a later report drops the figures it no longer has."""
    study = tmp_path / "s"
    make_run(study / "runs" / "alexnet", "alexnet", 3)
    make_run(study / "runs" / "alexnet_thinner_4", "alexnet_thinner_4", 3, top=0.85)
    assert main(["report", str(study), "--out", str(study)]) == 0
    out = capsys.readouterr().out
    assert "best: alexnet_thinner_4" in out and "report.html" in out
    first = json.loads((study / "summary.json").read_text())
    assert [r["run_dir"] for r in first["runs"]] == ["runs/alexnet", "runs/alexnet_thinner_4"]
    assert (study / "curves_alexnet_thinner_4.png").is_file()

    assert main(["report", str(study / "runs" / "alexnet"), "--out", str(study), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["best"]["model"] == "alexnet"
    assert not (study / "curves_alexnet_thinner_4.png").exists()
    assert (study / "curves_alexnet.png").is_file()


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing", "does not exist"),
        ("file", "is not a folder"),
        ("empty_dir", "is not a run folder"),
        ("no_metrics", "has no metrics.csv"),
        ("header_only", "holds no finished epoch"),
        ("garbage", "not a number"),
        ("bad_config", "not valid JSON"),
    ],
)
def test_bad_inputs_are_clear_errors(tmp_path, capsys, setup, message):
    p = tmp_path / "run"
    if setup == "file":
        p.write_text("x")
    elif setup == "empty_dir":
        p.mkdir()
    elif setup != "missing":
        make_run(p, "alexnet", 2)
        if setup == "no_metrics":
            (p / "metrics.csv").unlink()
        elif setup == "header_only":
            (p / "metrics.csv").write_text(",".join(COLUMNS) + "\n")
        elif setup == "garbage":
            (p / "metrics.csv").write_text(",".join(COLUMNS) + "\n1,x,0.1,2,0.1,0.01,1\n")
        elif setup == "bad_config":
            (p / "config.json").write_text("{")
    assert main(["report", str(p), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    from .helpers import run_cli

    p = run_cli("report", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "r"))
    assert p.returncode == 2
    assert "error:" in p.stderr and "does not exist" in p.stderr
    assert "Traceback" not in p.stderr


# ---------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        msg = (
            "headless Chromium is needed to check report.html: install Debian's 'chromium' "
            "package (.ci/run does)"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def test_html_renders_in_chromium(mixed, chromium):
    runs, out, summary = mixed
    page = load_page(out / "report.html", chromium)
    assert page.console_errors == []
    assert page.failed_requests == []
    assert len(page.images) == 7 + len(runs)
    assert page.broken_images == []
    assert all(i["naturalWidth"] >= 600 for i in page.images)
    # the page itself and its inlined images, nothing else
    assert all(u == page.url or u.startswith("data:") for u in page.requested), page.requested
    assert page.charset == "UTF-8"
    assert page.compat_mode == "CSS1Compat"  # the doctype put it in standards mode
    assert page.scripts == 0
    assert page.title.startswith("AlexNet on CIFAR-10")


def test_the_browser_check_sees_broken_pages(tmp_path, chromium):
    """The check above can fail: a broken image, a missing file and a console error show."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head><body>'
        '<img src="data:image/png;base64,AAAA" alt="corrupt">'
        '<img src="missing.png" alt="missing">'
        "<script>console.error('boom')</script></body></html>"
    )
    page = load_page(bad, chromium)
    assert len(page.broken_images) == 2
    assert any("boom" in e for e in page.console_errors)
    assert page.failed_requests


def test_fast_recipe_runs_are_named_as_such(tmp_path):
    from alexnet_cifar.recipe import get_recipe

    a = make_run(tmp_path / "fast", "alexnet_slim_regular", 8, recipe=get_recipe("fast"))
    b = make_run(tmp_path / "seed", "alexnet", 8)
    summary = build_report([a, b], tmp_path / "r")
    assert [r["recipe"] for r in summary["runs"]] == ["seed", "fast"]  # in the post's order
    md = (tmp_path / "r" / "report.md").read_text()
    assert "the recipes `fast`, `seed`" in md and "recipe `fast` instead of the seed's" in md


# ---------------------------------------------------------------------- several seeds

SECTIONS = [
    "Verdict",
    "Results",
    "Against the post",
    "Learning curves",
    "Train vs test, per run",
    "Model size",
    "The best run, class by class",
    "Runs",
    "TensorBoard",
]


def headings(md: str, level: int = 2) -> list[str]:
    return [line[level + 1 :] for line in md.splitlines() if line.startswith("#" * level + " ")]


def test_one_run_per_variant_keeps_the_single_run_report(mixed):
    runs, out, summary = mixed
    md = (out / "report.md").read_text()
    assert headings(md) == SECTIONS
    assert not {"variants", "claims", "other_pairs"} & set(summary)
    assert "curves_by_variant" not in summary["figures"]
    assert all("epoch_chosen_by" not in r for r in summary["runs"])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Three seeds of three variants and one of a fourth, in a study's seeds layout."""
    study = tmp_path_factory.mktemp("seeds") / "study"
    for model, top, n in (
        ("alexnet_slim_regular", 0.90, 3),
        ("alexnet_slim", 0.80, 3),  # clearly below: the claim about he_normal + L2 holds
        ("alexnet_thinner_2", 0.95, 3),  # clearly above: the post's best is contradicted
        ("alexnet_thinner_4", 0.90, 3),  # the same as alexnet_slim_regular: undecided
        ("alexnet", 0.70, 1),  # one run: nothing about it can be decided
    ):
        for seed in range(n):
            make_run(study / model / f"seed-{seed}", model, 6, kind="falling", top=top, seed=seed)
    out = study
    assert main(["report", str(study), "--out", str(out)]) == 0
    return study, out, json.loads((out / "summary.json").read_text())


def _folders(study: Path, model: str) -> list[Path]:
    return sorted((study / model).glob("seed-*"))


@pytest.mark.slow
def test_several_seeds_are_described_like_scipy(seeds):
    from scipy import stats

    study, out, summary = seeds
    variants = {v["label"]: v for v in summary["variants"]}
    assert set(variants) == {p.name for p in study.iterdir() if p.is_dir()}
    for label, v in variants.items():
        metrics = [read_metrics(f) for f in _folders(study, label)]
        assert v["seeds"] == list(range(len(metrics))) and v["n_finished"] == len(metrics)
        per_run = {
            "best_test_accuracy": [max(m["val_accuracy"]) for m in metrics],
            "final_test_accuracy": [m["val_accuracy"][-1] for m in metrics],
            "lowest_test_loss": [min(m["val_loss"]) for m in metrics],
            "generalisation_gap": [m["accuracy"][-1] - m["val_accuracy"][-1] for m in metrics],
            "total_seconds": [sum(m["seconds"]) for m in metrics],
        }
        for key, x in per_run.items():
            d = v[key]
            assert d["n"] == len(x)
            assert d["mean"] == pytest.approx(np.mean(x), rel=1e-12)
            assert (d["min"], d["max"]) == (min(x), max(x))
            if len(x) == 1:
                assert d["std"] is d["ci_low"] is d["ci_high"] is None
                continue
            assert d["std"] == pytest.approx(np.std(x, ddof=1), rel=1e-12)
            low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
            assert (d["ci_low"], d["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    md = (out / "report.md").read_text()
    assert headings(md) == ["Verdict", "Across seeds", *SECTIONS[1:]]
    table = md_tables(md)[0]
    row = next(
        r
        for r in table
        if r["variant"] == "`alexnet_slim`" and r["measure"] == "best test accuracy"
    )
    d = variants["alexnet_slim"]["best_test_accuracy"]
    assert row["runs"] == "3" and row["mean"] == f"{100 * d['mean']:.2f}%"
    assert row["std"] == f"{100 * d['std']:.2f} pts"
    assert row["95% CI"] == f"{100 * d['ci_low']:.2f}% to {100 * d['ci_high']:.2f}%"
    alexnet = next(r for r in table if r["variant"] == "`alexnet`")
    assert alexnet["std"] == alexnet["95% CI"] == "–"  # one run: no spread
    assert "NaN" not in (out / "summary.json").read_text()
    check_png(out / summary["figures"]["curves_by_variant"])
    assert "](curves_by_variant.png)" in md


@pytest.mark.slow
def test_the_posts_claims_are_tested_like_scipy(seeds):
    from scipy import stats

    study, out, summary = seeds
    claims = {(c["a"], c["b"]): c for c in summary["claims"]}
    assert list(claims) == [
        ("alexnet_slim_regular", "alexnet_slim"),
        ("alexnet_slim_regular", "alexnet_thinner_2"),
        ("alexnet_slim_regular", "alexnet_thinner_4"),
        ("alexnet_slim", "alexnet"),
    ]
    for (a, b), c in claims.items():
        xa = [max(read_metrics(f)["val_accuracy"]) for f in _folders(study, a)]
        xb = [max(read_metrics(f)["val_accuracy"]) for f in _folders(study, b)]
        assert c["difference"] == pytest.approx(np.mean(xa) - np.mean(xb), rel=1e-12)
        if len(xb) < 2:
            assert c["p_value"] is c["ci_low"] is None
            continue
        t = stats.ttest_ind(xa, xb, equal_var=False)
        ci = t.confidence_interval(0.95)
        assert c["p_value"] == pytest.approx(t.pvalue, rel=1e-9)
        assert c["t"] == pytest.approx(t.statistic, rel=1e-9)
        assert (c["ci_low"], c["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    verdicts = [c["verdict"] for c in claims.values()]
    assert verdicts == [
        "supported",
        "contradicted",
        "undecided with this many seeds",
        "cannot be decided: needs two finished runs of each",
    ]
    v = summary["claims_verdict"]
    assert len(v["supported"]) == len(v["contradicted"]) == 1 and len(v["undecided"]) == 2
    md = (out / "report.md").read_text()
    rows = md_tables(md)[1]
    assert [r["verdict"] for r in rows] == verdicts
    first = claims[("alexnet_slim_regular", "alexnet_slim")]
    assert rows[0]["p (Welch)"] in (f"{first['p_value']:.3f}", "< 0.001")
    assert rows[0]["difference of means"] == f"{100 * first['difference']:+.2f} pts"
    assert "**Supported by these runs:** `alexnet_slim_regular` is more accurate" in md
    assert "**Contradicted by these runs:**" in md and "**Not decided with this many seeds:**" in md
    # the pairs no claim covers are compared too, without a verdict on a claim
    others = {(c["a"], c["b"]) for c in summary["other_pairs"]}
    assert len(others) == 10 - 4 and ("alexnet_thinner_2", "alexnet_thinner_4") in others


# ---------------------------------------------------------------------- a validation split


def make_split_run(folder: Path, model: str, epochs: int, split: int, **kw) -> Path:
    """A run trained with a validation split: its metrics' val_* are the held-out images'."""
    folder = make_run(folder, model, epochs, **kw)
    config = json.loads((folder / "config.json").read_text())
    config.update(val_split=split, n_val=split)
    (folder / "config.json").write_text(json.dumps(config))
    if (folder / "result.json").is_file():
        result = json.loads((folder / "result.json").read_text())
        result.update(test_accuracy_final=0.61, test_accuracy_at_best_val=0.64, val_split=split)
        (folder / "result.json").write_text(json.dumps(result))
    return folder


@pytest.mark.slow
def test_split_runs_show_both_test_accuracies(tmp_path):
    a = make_split_run(tmp_path / "a", "alexnet", 6, 5000, kind="swoosh")
    b = make_split_run(tmp_path / "b", "alexnet_slim", 3, 5000, planned=10)  # unfinished
    c = make_run(tmp_path / "c", "alexnet_thinner_4", 4)
    summary = build_report([a, b, c], tmp_path / "r")
    by = {r["model"]: r for r in summary["runs"]}
    split, unfinished = by["alexnet"], by["alexnet_slim"]
    m = read_metrics(a)
    assert split["epoch_chosen_by"] == "validation" and split["val_split"] == 5000
    assert split["best_val_accuracy"] == max(m["val_accuracy"])
    assert split["best_test_accuracy"] == split["test_accuracy_at_best_val"] == 0.64
    assert split["final_test_accuracy"] == split["test_accuracy_final"] == 0.61
    assert split["generalisation_gap"] == pytest.approx(m["accuracy"][-1] - 0.61)
    assert "validation loss" in split["overfitting_note"]
    assert unfinished["best_test_accuracy"] is None and unfinished["generalisation_gap"] is None
    assert "epoch_chosen_by" not in by["alexnet_thinner_4"]

    md = (tmp_path / "r" / "report.md").read_text()
    assert "Model selection" in headings(md)
    selection, results = md_tables(md)[:2]  # Model selection comes before Results
    table = {r["run"].strip("`"): r for r in selection}
    assert table["alexnet"]["epoch chosen by"] == "5,000 validation images"
    assert table["alexnet"]["test acc. at that epoch"] == "64.00%"
    assert table["alexnet"]["final test acc."] == "61.00%"
    assert table["alexnet_slim"]["final test acc."] == "–"
    assert table["alexnet_thinner_4"]["epoch chosen by"] == "the test set"
    results = {r["variant"].strip("`"): r for r in results}
    assert results["alexnet"]["test acc. at best epoch"] == "64.00%"
    assert results["alexnet_slim"]["test acc. at best epoch"] == "–"


@pytest.mark.slow
def test_seeds_report_renders_in_chromium(seeds, chromium):
    study, out, summary = seeds
    page = load_page(out / "report.html", chromium)
    assert page.console_errors == [] and page.failed_requests == [] and page.broken_images == []
    assert len(page.images) == len(summary["figures"]) + len(summary["runs"])
    assert page.scripts == 0


def test_the_tensorboard_command_survives_a_shell_and_names_each_run_once():
    import shlex

    from alexnet_cifar.report.runs import tensorboard_command

    folders = ["../$HOME/run a", "../it's here", '../"q"/r', "../x`y`", "../plain"]
    runs = [("alexnet_thinner_4 [a b]", f) for f in folders]
    argv = shlex.split(tensorboard_command(runs))  # what a shell hands TensorBoard
    assert argv[:2] == ["tensorboard", "--logdir_spec"] and len(argv) == 3
    pairs = [item.split(":", 1) for item in argv[2].split(",")]
    assert [folder for _, folder in pairs] == folders
    names = [name for name, _ in pairs]
    assert len(set(names)) == 5 and names[0] == "alexnet_thinner_4_a_b", names
