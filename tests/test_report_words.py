"""The report says exactly what it measured: validation is not test, variants are judged by
their means, "best" says how it was chosen, intervals stay within 0-100%, and nothing is dropped
without a word. Run folders are built synthetically (see test_report.make_run)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import tomllib

from alexnet_cifar.cli import main
from alexnet_cifar.report import build_report, load_runs
from alexnet_cifar.report import figures as figures_module
from alexnet_cifar.report.document import Document

from .headless_chromium import load_page
from .test_report import chromium, headings, make_run, md_tables  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]


def split_run(folder: Path, model: str, seed: int, at_best: float, final: float, **kw) -> Path:
    """A finished run with a 500-image validation split: its metrics' val_* columns are the
    validation images'; result.json holds the test set at the best validation epoch and at
    the end (``at_best``, ``final``)."""
    folder = make_run(folder, model, kw.pop("epochs", 4), seed=seed, **kw)
    config = json.loads((folder / "config.json").read_text())
    config.update(val_split=500, n_val=500)
    (folder / "config.json").write_text(json.dumps(config))
    result = json.loads((folder / "result.json").read_text())
    metrics = (folder / "metrics.csv").read_text().splitlines()[1:]
    best_val = max(float(line.split(",")[4]) for line in metrics)
    result.update(
        val_split=500,
        best_val_accuracy=best_val,
        test_accuracy=final,
        test_accuracy_final=final,
        test_accuracy_at_best_val=at_best,
        best_test_accuracy=at_best,
    )
    (folder / "result.json").write_text(json.dumps(result))
    return folder


#: The test accuracy at the best validation epoch of each seed: alexnet has the luckiest run
#: (33%), alexnet_thinner_4 the higher mean (31% against 30%).
LUCKY = {"alexnet": [0.28, 0.29, 0.33], "alexnet_thinner_4": [0.305, 0.31, 0.315]}


@pytest.fixture(scope="module")
def split_study(tmp_path_factory):
    """2 variants x 3 seeds with a validation split, in a study's layout, reported by the CLI."""
    study = tmp_path_factory.mktemp("split") / "study"
    for model, accuracies in LUCKY.items():
        for seed, acc in enumerate(accuracies):
            split_run(study / model / f"seed-{seed}", model, seed, acc, acc - 0.01, top=0.3)
    return study


@pytest.fixture(scope="module")
def split_report(split_study):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", str(split_study), "--out", str(split_study)]) == 0
    summary = json.loads((split_study / "summary.json").read_text())
    return split_study, (split_study / "report.md").read_text(), summary, out.getvalue()


@pytest.fixture(scope="module")
def mixed_groups(tmp_path_factory):
    """alexnet with a split and without one (two groups of one variant), alexnet_thinner_4
    without: 9 runs of 2 variants in 3 groups."""
    root = tmp_path_factory.mktemp("groups")
    for seed in range(3):
        split_run(root / "a" / "alexnet" / f"seed-{seed}", "alexnet", seed, 0.4, 0.39, top=0.4)
        make_run(root / "b" / "alexnet" / f"seed-{seed}", "alexnet", 4, seed=seed, top=0.45)
        make_run(root / "b" / "alexnet_thinner_4" / f"seed-{seed}", "alexnet_thinner_4", 4,
                 seed=seed, top=0.5)  # fmt: skip
    out = root / "report"
    summary = build_report([root / "a", root / "b"], out)
    return root, out, (out / "report.md").read_text(), summary


def _figure_alts(md: str) -> list[str]:
    return re.findall(r"!\[([^\]]*)\]\(", md)


# ---------------------------------------------------------------------- validation is not test


@pytest.mark.slow
def test_validation_curves_are_called_validation(split_report):
    study, md, summary, _ = split_report
    alts = _figure_alts(md)
    assert "Validation accuracy by epoch" in alts and "Validation loss by epoch" in alts
    assert "Test accuracy by epoch" not in alts and "Test loss by epoch" not in alts
    assert "Train vs validation, per run" in headings(md)
    assert "train vs test" not in md.lower()
    assert "not the test set" in md  # the caption of the per-epoch accuracy
    assert "Overfitting (a validation loss that rises" in md
    results = next(t for t in md_tables(md) if "lowest val. loss: epoch" in t[0])
    assert {"best val. acc.", "best val. epoch", "test acc. at best val. epoch"} <= set(results[0])
    assert "lowest test loss" not in md
    for r in summary["runs"]:
        assert r["overfitting_note"].split(":")[1].strip().startswith("validation loss") or (
            r["overfitting_verdict"] == "too short to tell"
        )


def test_curve_labels_name_the_images():
    label = figures_module.curve_labels
    assert label("val_accuracy", "accuracy", True, "test") == (
        "Test accuracy by epoch",
        "test accuracy (%)",
    )
    assert label("val_loss", "loss", False, "validation") == (
        "Validation loss by epoch",
        "validation loss",
    )
    title, ylabel = label("val_accuracy", "accuracy", True, "mixed")
    assert "validation dashed, test solid" in title and ylabel.startswith("validation or test")
    assert label("accuracy", "accuracy", True, "mixed")[0] == "Train accuracy by epoch"


@pytest.mark.slow
def test_mixed_runs_never_share_a_test_axis(mixed_groups):
    root, out, md, summary = mixed_groups
    alts = _figure_alts(md)
    assert "Validation or test accuracy by epoch (validation dashed, test solid)" in alts
    assert "Test accuracy by epoch" not in alts
    results = next(t for t in md_tables(md) if "lowest val./test loss: epoch" in t[0])
    kinds = {r["best epoch (chosen by)"].split(" ")[1] for r in results}
    assert kinds == {"(val.)", "(test)"}
    # each line of the shared curves says which images it measured
    runs = load_runs([root / "a", root / "b"])
    held = ["validation" if r.config.get("val_split") else "test" for r in runs]
    fig = figures_module.curves_figure(runs, held, "val_accuracy", "accuracy", True)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sum(t.endswith("(validation)") for t in labels) == 3
    assert sum(t.endswith("(test)") for t in labels) == 6


# ---------------------------------------------------------------------- the best variant


@pytest.mark.slow
def test_several_seeds_crown_the_best_mean_not_the_luckiest_run(split_report):
    study, md, summary, stdout = split_report
    best = summary["best_variant"]
    assert best["label"] == "alexnet_thinner_4" and best["runner_up"] == "alexnet"
    assert best["mean"] == pytest.approx(sum(LUCKY["alexnet_thinner_4"]) / 3, rel=1e-12)
    assert best["significant"] is False and best["lead"]["p_value"] > 0.05
    # the best run is the best variant's, not the luckiest (alexnet seed-2, listed beneath)
    assert summary["best"]["label"] == "alexnet_thinner_4 (seed-2)"
    assert summary["best"]["of_variant"] == "alexnet_thinner_4"
    assert summary["class_results_of"] == "alexnet_thinner_4 (seed-2)"
    verdict = md.split("## Verdict")[1].split("\n## ")[0]
    assert (
        "**Best variant by its mean test accuracy at the best validation epoch: "
        "`alexnet_thinner_4`**, mean 31.00% over 3 finished runs (95% CI " in verdict
    )
    assert "not significant at p < 0.05" in verdict
    assert verdict.index("**Best variant") < verdict.index("Single runs")
    assert "Best run" not in verdict
    assert "**Best variant" in (study / "report.md").read_text()
    line = next(x for x in stdout.splitlines() if x.startswith("best variant"))
    assert "alexnet_thinner_4, mean 31.00% (n=3, 95% CI" in line and "not significant" in line
    assert "its best run: alexnet_thinner_4 (seed-2)" in stdout
    assert "`alexnet (seed-2)` 33.00%" in verdict.split("Single runs")[1]


@pytest.mark.slow
def test_a_significant_lead_is_called_significant(tmp_path):
    for seed, (a, b) in enumerate([(0.30, 0.50), (0.31, 0.51), (0.29, 0.52)]):
        split_run(tmp_path / "s" / "alexnet" / f"seed-{seed}", "alexnet", seed, a, a, epochs=2)
        split_run(
            tmp_path / "s" / "alexnet_slim" / f"seed-{seed}", "alexnet_slim", seed, b, b, epochs=2
        )
    summary = build_report([tmp_path / "s"], tmp_path / "r")
    assert summary["best_variant"]["label"] == "alexnet_slim"
    assert summary["best_variant"]["significant"] is True
    md = (tmp_path / "r" / "report.md").read_text()
    assert "significant at p < 0.05." in md and "not significant" not in md


@pytest.mark.slow
def test_groups_are_explained_and_counted(mixed_groups):
    root, out, md, summary = mixed_groups
    assert "9 runs of 2 variants in 3 groups" in md
    groups = {v["label"]: v for v in summary["variants"]}
    assert set(groups) == {"alexnet [1]", "alexnet [2]", "alexnet_thinner_4"}
    split_group = next(v for v in groups.values() if v["epoch_chosen_by"] == "validation")
    assert split_group["differs_in"] == {"val_split": 500}
    for label, v in groups.items():
        assert len(v["folders"]) == v["n_runs"] == 3
        item = next(x for x in md.splitlines() if x.startswith(f"- `{label}`: 3 runs"))
        for folder in v["folders"]:
            assert f"`{folder}`" in item
    assert "val_split 500" in md


# ---------------------------------------------------------------------- "best" in words


def test_train_end_line_says_how_best_was_chosen():
    from alexnet_cifar.training.records import best_words

    split = {
        "val_split": 500,
        "best_val_accuracy": 0.14,
        "best_epoch": 3,
        "test_accuracy_at_best_val": 0.1312,
        "test_accuracy": 0.134,
        "best_test_accuracy": 0.1312,
    }
    assert best_words(split) == (
        "best validation accuracy 0.1400 at epoch 3; test accuracy at that epoch 0.1312; "
        "final test accuracy 0.1340"
    )
    plain = {"best_test_accuracy": 0.2, "best_epoch": 2, "test_accuracy": 0.19}
    assert best_words(plain) == (
        "best test accuracy 0.2000 at epoch 2 (chosen by the test set, optimistic); "
        "final test accuracy 0.1900"
    )


@pytest.mark.slow
@pytest.mark.real_data
def test_train_with_a_split_names_the_best_validation_epoch(cifar10_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "alexnet_thinner_4", "--out", str(out), "--epochs", "2", "--device", "cpu"]
    argv += ["--limit-train", "300", "--limit-test", "100", "--val-split", "100"]
    assert main([*argv, "--data-dir", str(cifar10_dir), "--quiet", "--no-verify"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    r = json.loads((out / "result.json").read_text())
    assert (
        f"best validation accuracy {r['best_val_accuracy']:.4f} at epoch {r['best_epoch']}; "
        f"test accuracy at that epoch {r['test_accuracy_at_best_val']:.4f}; "
        f"final test accuracy {r['test_accuracy_final']:.4f}"
    ) in line


@pytest.mark.slow
def test_single_run_verdict_says_how_best_was_chosen(tmp_path):
    a = split_run(tmp_path / "a", "alexnet", 0, 0.64, 0.61)
    b = make_run(tmp_path / "b", "alexnet_thinner_4", 3, top=0.5)
    summary = build_report([a, b], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    s = {r["model"]: r for r in summary["runs"]}
    assert (
        f"**Best run: `alexnet`**: best validation accuracy "
        f"{100 * s['alexnet']['best_val_accuracy']:.2f}% at epoch {s['alexnet']['best_epoch']}; "
        "test accuracy at that epoch 64.00%; final test accuracy 61.00%." in md
    )
    assert "(chosen by the test set, optimistic); final test accuracy" in md  # thinner_4


# ---------------------------------------------------------------------- the HTML page


def test_html_is_rendered_by_python_markdown():
    doc = Document()
    doc.paragraph("**Best: `alexnet (seed-1)`**, 31.20%.")
    doc.table([], [])
    page = doc.html(Path("."), "t")
    assert "<strong>Best: <code>alexnet (seed-1)</code></strong>" in page
    assert "**" not in page
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.fullmatch(r"markdown>=\d+(\.\d+)*", d) for d in deps), deps


@pytest.mark.slow
def test_split_study_report_renders_in_chromium(split_report, chromium):  # noqa: F811
    study, md, summary, _ = split_report
    page_text = (study / "report.html").read_text()
    assert "**" not in page_text and "<strong>Best variant" in page_text
    page = load_page(study / "report.html", chromium)
    assert page.console_errors == [] and page.failed_requests == [] and page.broken_images == []
    assert len(page.images) == len(summary["figures"]) + len(summary["runs"])
    assert page.scripts == 0
    assert all(u == page.url or u.startswith("data:") for u in page.requested)


@pytest.mark.slow
def test_mixed_runs_report_renders_in_chromium(mixed_groups, chromium):  # noqa: F811
    root, out, md, summary = mixed_groups
    assert "**" not in (out / "report.html").read_text()
    page = load_page(out / "report.html", chromium)
    assert page.console_errors == [] and page.failed_requests == [] and page.broken_images == []
    assert len(page.images) == len(summary["figures"]) + len(summary["runs"])
    assert page.scripts == 0


# ---------------------------------------------------------------------- intervals, chance


@pytest.mark.slow
def test_intervals_stay_within_0_and_100_and_few_runs_are_uninformative(tmp_path):
    for seed, top in enumerate((0.0, 0.6)):
        make_run(tmp_path / "s" / "alexnet" / f"seed-{seed}", "alexnet", 3, seed=seed, top=top)
    for seed in range(3):
        make_run(tmp_path / "s" / "alexnet_slim" / f"seed-{seed}", "alexnet_slim", 3, seed=seed)
    summary = build_report([tmp_path / "s"], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    v = {g["label"]: g for g in summary["variants"]}
    d = v["alexnet"]["best_test_accuracy"]
    assert d["ci_clipped"] is True and d["ci_informative"] is False
    assert d["ci_low"] == 0.0 and d["ci_high"] <= 1.0
    for g in summary["variants"]:
        for key in ("best_test_accuracy", "final_test_accuracy"):
            assert 0.0 <= g[key]["ci_low"] <= g[key]["ci_high"] <= 1.0
    assert v["alexnet_slim"]["best_test_accuracy"]["ci_informative"] is True
    row = next(
        r
        for r in md_tables(md)[0]
        if r["variant"] == "`alexnet`" and r["measure"] == "best test accuracy"
    )
    assert row["95% CI"].startswith("0.00% to ") and row["95% CI"].endswith("*†")
    assert "clipped to 0-100%" in md and "too wide to inform" in md
    assert not re.search(r"-\d+\.\d+% to", md)  # no negative accuracy anywhere


@pytest.mark.slow
def test_near_ten_percent_the_report_says_it_is_chance(tmp_path):
    a = make_run(tmp_path / "a", "alexnet", 2, top=0.12, kind="falling")
    b = make_run(tmp_path / "b", "alexnet_thinner_4", 2, top=0.6, kind="falling")
    build_report([a, b], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- Near chance"))
    assert "`alexnet`" in line and "10% is chance" in line and "alexnet_thinner_4" not in line


# ---------------------------------------------------------------------- figures and words


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_the_legend_check_sees_a_legend_inside_the_axes():
    fig = figures_module.new_figure((6, 4))
    ax = fig.add_subplot()
    ax.plot([1, 2], [1, 2], label="a")
    ax.legend(loc="lower right")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_legend().get_window_extent(renderer)
    assert _overlaps(box, ax.get_window_extent(renderer))


@pytest.mark.slow
def test_legends_cover_no_data(tmp_path):
    import matplotlib

    from alexnet_cifar.report.aggregate import aggregate
    from alexnet_cifar.report.numbers import run_summary
    from alexnet_cifar.report.seed_figures import seed_curves_figure

    for seed in range(2):
        for model in ("alexnet", "alexnet_thinner_4"):
            make_run(tmp_path / model / f"seed-{seed}", model, 5, seed=seed)
    runs = load_runs([tmp_path])
    summaries = [run_summary(r) for r in runs]
    for s in summaries:
        s["run_dir"] = "x"
    agg = aggregate(runs, summaries)
    with matplotlib.rc_context(figures_module.STYLE):
        figs = [
            figures_module.curves_figure(runs, ["test"] * 4, "val_accuracy", "accuracy", True),
            figures_module.curves_figure(runs, ["test"] * 4, "val_loss", "loss", False),
            figures_module.train_vs_held_out_figure(runs[0], summaries[0]),
            seed_curves_figure(runs, agg["variants"], agg["groups"]),
        ]
        for fig in figs:
            renderer = fig.canvas.get_renderer()
            fig.canvas.draw()
            for ax in fig.axes:
                legend = ax.get_legend()
                assert legend is not None
                box = legend.get_window_extent(renderer)
                assert not _overlaps(box, ax.get_window_extent(renderer)), ax.get_title()


def test_overfitting_reads_the_same_in_every_section(tmp_path):
    a = make_run(tmp_path / "a", "alexnet", 8, kind="falling", top=0.5)
    rows = (a / "metrics.csv").read_text().splitlines()
    # the loss's minimum at epoch 7, the last epoch within 5% of it: "little"
    cells_of = [r.split(",") for r in rows[1:]]
    cells_of[6][3], cells_of[7][3] = "0.9", "0.92"
    (a / "metrics.csv").write_text("\n".join([rows[0]] + [",".join(c) for c in cells_of]) + "\n")
    b = make_run(tmp_path / "b", "alexnet_thinner_4", 8, kind="swoosh")
    summary = build_report([a, b], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    post = {r["variant"].strip("`"): r for r in md_tables(md)[1]}
    for s in summary["runs"]:
        word = s["overfitting_verdict"]
        assert post[s["label"]]["overfitting: ours"] == word
        assert s["overfitting_note"].startswith(word + ": ")
        assert f"- `{s['label']}`: {s['overfitting_note']}." in md  # the verdict
        assert f"Overfitting: {s['overfitting_note']}." in md  # the run's own section
    assert {s["overfitting_verdict"] for s in summary["runs"]} == {"little", "overfits"}


# ---------------------------------------------------------------------- imported weights


def _imported(folder: Path) -> Path:
    from alexnet_cifar.interchange.keras_io import _write_imported_run
    from alexnet_cifar.models import PRESETS, build_model

    config = PRESETS["alexnet_thinner_4"]
    state = build_model(config.name).state_dict()
    source = {"format": "keras 3 .keras"}
    _write_imported_run(folder / "m.keras", folder, config.name, config, state, source, False)
    return folder


def test_report_of_imported_weights_says_so_in_one_line(tmp_path, capsys):
    run = _imported(tmp_path / "imported")
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {run} holds imported weights and no training history: nothing to plot "
        f"(evaluate it with `alexnet-cifar evaluate {run}`)\n"
    )
    other = make_run(tmp_path / "trained", "alexnet", 2)
    assert main(["report", str(run), str(other), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: left out of the report: {run} holds imported weights")
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------- one set of formatters


def test_every_cell_formatter_says_diverged_for_nan():
    from alexnet_cifar.report import cells

    nan = math.nan
    for f in (cells.percent, cells.points, cells.seconds, cells.duration, cells.megabytes,
              cells.giga_macs, cells.p_value):  # fmt: skip
        assert f(nan) == "diverged" and f(math.inf) == "diverged" and f(None) == "–"
    assert cells.percent(0.9123) == "91.23%" and cells.points(0.0123) == "+1.23 pts"
    from alexnet_cifar.report import seed_sections

    assert seed_sections._number(nan, "share") == "diverged"


# ---------------------------------------------------------------------- one measure, one name


def test_near_chance_names_the_one_measure_it_shows():
    """Not the larger of two measures, unlabelled: each run's headline accuracy, named."""
    from alexnet_cifar.report.verdict import chance_note

    split = {"label": "a", "epoch_chosen_by": "validation", "best_test_accuracy": 0.12}
    split["best_val_accuracy"] = 0.15
    plain = {"label": "b", "epoch_chosen_by": "test", "best_test_accuracy": 0.13}
    plain["best_val_accuracy"] = 0.13
    running = {"label": "c", "epoch_chosen_by": "validation", "best_test_accuracy": None}
    running["best_val_accuracy"] = 0.14
    learned = {"label": "d", "epoch_chosen_by": "validation", "best_test_accuracy": 0.18}
    learned["best_val_accuracy"] = 0.45  # listed by its test figure, the one it is ranked by
    note = chance_note([split, plain, running, learned])
    assert "`a` (test accuracy at the best validation epoch 12.00%)" in note, note
    assert "`b` (best test accuracy 13.00%)" in note
    assert "`c` (best validation accuracy so far 14.00%)" in note
    assert "`d` (test accuracy at the best validation epoch 18.00%)" in note
    assert "15.00%" not in note and "45.00%" not in note


def _set_seconds(run: Path, seconds: float) -> None:
    """metrics.csv's seconds column set so that the run's total time is ``seconds``."""
    lines = (run / "metrics.csv").read_text().splitlines()
    head, rows = lines[0], [line.split(",") for line in lines[1:]]
    col = head.split(",").index("seconds")
    for r in rows:
        r[col] = f"{seconds / len(rows):.3f}"
    (run / "metrics.csv").write_text("\n".join([head, *(",".join(r) for r in rows)]) + "\n")


@pytest.mark.slow
def test_time_intervals_are_clipped_at_zero_marked_and_written_in_one_format(tmp_path):
    for seed, seconds in enumerate((12.0, 1127.0)):  # a spread wider than the mean
        _set_seconds(make_run(tmp_path / "s" / "alexnet" / f"seed-{seed}", "alexnet", 3, seed=seed),
                     seconds)  # fmt: skip
    summary = build_report([tmp_path / "s"], tmp_path / "r")
    time = summary["variants"][0]["total_seconds"]
    assert time["ci_low"] == 0.0 and time["ci_clipped"] is True
    md = (tmp_path / "r" / "report.md").read_text()
    row = next(r for r in md_tables(md)[0] if r["measure"] == "time")
    cells = [row[k] for k in ("mean", "std", "95% CI", "min", "max")]
    assert row["95% CI"].startswith("0h00m to ") and row["95% CI"].endswith("*†"), row
    assert all(re.fullmatch(r"(\dh\d\dm( to \dh\d\dm)?)\*?†?", c) for c in cells), cells
    assert "a time's or a loss's at 0" in md
    assert not re.search(r"-\d+(\.\d+)? s to|-\d+m", md)  # no negative time anywhere


@pytest.mark.slow
def test_figure_files_are_named_after_what_they_show(split_report, mixed_groups):
    study, md, summary, _ = split_report
    held_out = {k: v for k, v in summary["figures"].items() if not k.startswith("train_")}
    assert held_out["validation_accuracy"] == "validation_accuracy.png"
    assert held_out["validation_loss"] == "validation_loss.png"
    assert not any("test_" in name for name in held_out.values())
    assert not (study / "test_accuracy.png").exists() and (study / "validation_loss.png").exists()
    assert "](validation_accuracy.png)" in md
    _, out, _, mixed = mixed_groups
    assert mixed["figures"]["validation_or_test_accuracy"] == "validation_or_test_accuracy.png"


@pytest.mark.slow
def test_model_size_draws_one_bar_per_variant(mixed_groups):
    """9 runs of 2 variants: two bars of ours and two of the post's on each side."""
    from alexnet_cifar.report.numbers import run_summary

    root = mixed_groups[0]
    runs = load_runs([root / "a", root / "b"])
    fig = figures_module.model_size_figure(runs, [run_summary(r) for r in runs])
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["alexnet", "alexnet_thinner_4"]
        assert len(ax.patches) == 4


# ---------------------------------------------------------------------- damaged values, copies


@pytest.mark.slow
def test_values_outside_their_range_leave_the_run_out_named_as_damaged(tmp_path):
    from .helpers import run_main

    good = make_run(tmp_path / "good", "alexnet_thinner_4", 3)
    in_metrics = make_run(tmp_path / "metrics", "alexnet", 3, seed=1)
    text = (in_metrics / "metrics.csv").read_text().splitlines()
    cells = text[2].split(",")
    cells[2] = "1.5"  # accuracy of epoch 2: 150%
    text[2] = ",".join(cells)
    (in_metrics / "metrics.csv").write_text("\n".join(text) + "\n")
    in_result = make_run(tmp_path / "result", "alexnet_slim", 3, seed=2)
    result = json.loads((in_result / "result.json").read_text())
    (in_result / "result.json").write_text(json.dumps({**result, "test_accuracy": 1.5}))

    p = run_main("report", good, in_metrics, in_result, "--out", tmp_path / "r")
    assert p.returncode == 0, p.stderr
    warnings = p.stderr.strip().splitlines()
    assert len(warnings) == 2 and all("damaged" in w for w in warnings), p.stderr
    assert "line 3: accuracy is 1.5, outside 0 to 1" in p.stderr
    assert "'test_accuracy' is 1.5, outside 0 to 1" in p.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [r["model"] for r in summary["runs"]] == ["alexnet_thinner_4"]
    assert "150.00%" not in (tmp_path / "r" / "report.md").read_text()
    p = run_main("report", in_metrics, "--out", tmp_path / "r2")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.slow
def test_copies_of_one_run_are_named_and_counted_once(tmp_path):
    import shutil

    from .helpers import run_main

    study = tmp_path / "s"
    for seed in range(2):
        make_run(study / "alexnet" / f"seed-{seed}", "alexnet", 3, seed=seed)
    copy = tmp_path / "copy-of-seed-1"
    shutil.copytree(study / "alexnet" / "seed-1", copy)
    p = run_main("report", study, copy, "--out", tmp_path / "r")
    assert p.returncode == 0, p.stderr
    (warning,) = p.stderr.strip().splitlines()
    assert str(copy) in warning and "seed-1" in warning and "counted once" in warning, warning
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert len(summary["runs"]) == 2
    (alexnet,) = summary["variants"]
    assert alexnet["n_runs"] == 2 and alexnet["best_test_accuracy"]["std"] > 0
