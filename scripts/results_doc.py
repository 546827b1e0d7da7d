"""docs/results.md from the records shipped beside it: ship a run's records, write the tables
and figures, check that the document agrees with them.

    python scripts/results_doc.py ship RUN_DIR NAME   # RUN_DIR's records -> docs/results/NAME
    python scripts/results_doc.py generate            # docs/results.md's generated parts, figures
    python scripts/results_doc.py check               # exit 1 where they disagree with the records

A shipped run is a folder under docs/results/ holding a run's small records: config.json,
metrics.csv and, once the run has finished, result.json (never a checkpoint or a model). They
carry no path of the machine they ran on: ``ship`` writes the data folder as ``$CIFAR10_DIR``
and the command as ``alexnet-cifar`` and its arguments, every other absolute path as its last
part. The runs under docs/results/contrast/ are the overfitting contrast (the post's first
finding): their train and validation loss on one figure, the epoch of each run's lowest
validation loss and the rise since, the generalisation gaps, and a verdict per variant by the
report's own rule, set against the post's words.

docs/results.md holds each generated part between ``<!-- generated: NAME -->`` and
``<!-- end generated: NAME -->``; ``generate`` rewrites those parts and nothing else, ``check``
compares them with what the records give (tests/test_results_doc.py runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from alexnet_cifar.files import CONFIG_FILE, METRICS_FILE, RESULT_FILE
from alexnet_cifar.models import PRESETS
from alexnet_cifar.report import OVERFIT_RISE, load_run, run_summary
from alexnet_cifar.report.figures import STYLE, epoch_axis, new_figure, save_figure
from alexnet_cifar.report.numbers import POST_OVERFITTING

DOCS = Path(__file__).resolve().parents[1] / "docs"
RECORDS = (CONFIG_FILE, METRICS_FILE, RESULT_FILE)
CONTRAST = "contrast"
CONTRAST_FIGURE = "contrast_loss.png"
#: Whether the post says each variant's held-out loss rises (its words: POST_OVERFITTING).
POST_RISES = {"alexnet": True, "alexnet_slim": True, "alexnet_thinner_4": False}
BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)",
    re.S,
)
DATA_PLACEHOLDER = "$CIFAR10_DIR"


# ---------------------------------------------------------------------- shipping records


def _is_machine_path(text: str) -> bool:
    return text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", text) is not None


def _last_part(text: str) -> str:
    return re.split(r"[\\/]", text.rstrip("/\\"))[-1] or text


def _without_paths(value):
    """Every absolute path in a JSON value as its last part."""
    if isinstance(value, str):
        return _last_part(value) if _is_machine_path(value) else value
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    return value


def reduced_command(argv: list[str]) -> list[str]:
    """The command a run recorded, as a reader would type it: ``alexnet-cifar`` and its
    arguments, the data folder as ``$CIFAR10_DIR``, other paths as their last part."""
    args, out = list(argv[1:]), ["alexnet-cifar"]
    for i, arg in enumerate(args):
        if i and args[i - 1] == "--data-dir":
            out.append(DATA_PLACEHOLDER)
        elif arg.startswith("--data-dir="):
            out.append(f"--data-dir={DATA_PLACEHOLDER}")
        else:
            out.append(_without_paths(arg))
    return out


def shipped_config(config: dict) -> dict:
    config = dict(config)
    if config.get("data_dir") is not None:
        config["data_dir"] = DATA_PLACEHOLDER
    if isinstance(config.get("command"), list):
        config["command"] = reduced_command([str(a) for a in config["command"]])
    changes = []
    for change in config.get("changes") or []:
        if isinstance(change, dict) and "data_dir" in change:
            change = {**change, "data_dir": [DATA_PLACEHOLDER, DATA_PLACEHOLDER]}
        changes.append(change)
    if changes:
        config["changes"] = changes
    return _without_paths(config)


def ship(run_dir: Path, name: str, docs: Path = DOCS) -> Path:
    """Copy ``run_dir``'s records into ``docs/results/NAME`` without paths of this machine;
    a record the run no longer has (a result.json before a resume) is removed there."""
    run_dir, dest = Path(run_dir), docs / "results" / name
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / METRICS_FILE).is_file():
        raise SystemExit(f"{run_dir} is not a run folder with records: no config.json/metrics.csv")
    dest.mkdir(parents=True, exist_ok=True)
    for record in RECORDS:
        src = run_dir / record
        if not src.is_file():
            (dest / record).unlink(missing_ok=True)
        elif record == METRICS_FILE:
            shutil.copyfile(src, dest / record)
        else:
            data = json.loads(src.read_text())
            data = shipped_config(data) if record == CONFIG_FILE else _without_paths(data)
            (dest / record).write_text(json.dumps(data, indent=2) + "\n")
    return dest


# ---------------------------------------------------------------------- the records


def shipped_runs(docs: Path = DOCS) -> list[Path]:
    """The shipped run folders under docs/results, in order of their names."""
    root = docs / "results"
    return sorted(p.parent for p in root.rglob(CONFIG_FILE)) if root.is_dir() else []


def _name(docs: Path, folder: Path) -> str:
    return folder.relative_to(docs / "results").as_posix()


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _epochs(s: dict) -> str:
    if s["status"] == "finished":
        return f"{s['epochs']} (finished)"
    return f"{s['epochs']} of {s['epochs_planned']} (unfinished)"


def records_table(docs: Path = DOCS) -> str:
    """One row per shipped run: what it is, how far it got, what it reached."""
    runs = shipped_runs(docs)
    if not runs:
        return "No run's records are shipped yet.\n"
    lines = [
        "| records | variant | recipe | seed | validation split | epochs | best held-out "
        "accuracy (epoch) | test accuracy at that epoch | command |",
        "|---|---|---|---:|---:|---|---:|---:|---|",
    ]
    for folder in runs:
        run = load_run(folder)
        s = run_summary(run)
        held = s.get("best_val_accuracy", s["best_test_accuracy"])
        test = s.get("test_accuracy_at_best_val") if s.get("val_split") else None
        command = " ".join(run.config.get("command") or [])
        command = f"`{command}`" if command else "–"
        lines.append(
            f"| `{_name(docs, folder)}` | `{s['model']}` | {s['recipe']} | {s['seed']} | "
            f"{s.get('val_split') or '–'} | {_epochs(s)} | {_pct(held)} ({s['best_epoch']}) "
            f"| {_pct(test)} | {command} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- the contrast


def contrast_runs(docs: Path = DOCS) -> list:
    order = {name: i for i, name in enumerate(PRESETS)}
    runs = [load_run(f) for f in shipped_runs(docs) if _name(docs, f).startswith(CONTRAST + "/")]
    return sorted(runs, key=lambda r: (order.get(r.model, len(order)), str(r.path)))


def _held(runs) -> str:
    """What the runs' per-epoch columns measure: validation images, or (some) the test set."""
    return "validation" if all(r.config.get("val_split") for r in runs) else "held-out"


def _agreement(model: str, overfits) -> str:
    expected = POST_RISES.get(model)
    if expected is None or overfits is None:
        return "–"
    return "agrees" if expected == overfits else "disagrees"


#: Epochs in each of the two windows whose mean validation losses give the smoothed trend.
TREND_WINDOW = 10


def smoothed_trend(losses: list[float], window: int = TREND_WINDOW) -> dict | None:
    """The mean of the last ``window`` losses against the mean of the ``window`` before them
    (epochs 1-based), and a word for it; None with fewer than two windows of epochs. One
    epoch's loss swings by several per cent here, so a rise read from single epochs (the
    report's rule) can be noise; the means of ten epochs show where the curve is going."""
    n = len(losses)
    if n < 2 * window:
        return None
    before = sum(losses[n - 2 * window : n - window]) / window
    recent = sum(losses[n - window :]) / window
    change = recent / before - 1
    word = "rising" if change > 0.01 else "falling" if change < -0.01 else "flat"
    return {
        "before": before,
        "recent": recent,
        "change": change,
        "word": word,
        "before_epochs": (n - 2 * window + 1, n - window),
        "recent_epochs": (n - window + 1, n),
    }


def _trend_text(t: dict | None) -> str:
    if t is None:
        return "–"
    return f"{t['before']:.3f} → {t['recent']:.3f} ({t['change']:+.1%}): {t['word']}"


def _trend_note(t: dict | None, held: str) -> str:
    if t is None:
        return ""
    (a, b), (c, d) = t["before_epochs"], t["recent_epochs"]
    return (
        f" Smoothed, its {held} loss averaged {t['recent']:.3f} over epochs {c}-{d} against "
        f"{t['before']:.3f} over epochs {a}-{b} ({t['change']:+.1%}): {t['word']}."
    )


def _contrast_row(run) -> tuple[str, dict, dict | None]:
    """The run's row of the contrast table, its summary and its smoothed trend."""
    s, m = run_summary(run), run.metrics
    trend = smoothed_trend(m["val_loss"])
    last = -1
    rise = m["val_loss"][last] - s["lowest_test_loss"]
    loss_gap = m["val_loss"][last] - m["loss"][last]
    acc_gap = m["accuracy"][last] - m["val_accuracy"][last]
    so_far = "" if run.finished else " so far"
    agreement = _agreement(run.model, s["overfitting"])
    agreement += so_far if agreement != "–" else ""
    row = (
        f"| `{run.model}` | {_epochs(s)} | {s['lowest_test_loss']:.3f} "
        f"({s['lowest_test_loss_epoch']}) | {m['val_loss'][last]:.3f} | {rise:+.3f} "
        f"({(s['test_loss_rise'] or 0):+.1%}) | {m['loss'][last]:.3f} | {loss_gap:+.3f} | "
        f"{100 * acc_gap:+.2f} pts | **{s['overfitting_verdict']}**{so_far} | "
        f"{_trend_text(trend)} | "
        f"{POST_OVERFITTING.get(run.model, '–')} | {agreement} |"
    )
    return row, s, trend


def contrast_text(docs: Path = DOCS) -> str:
    """The contrast's figure, table and verdicts, from the runs under docs/results/contrast."""
    runs = contrast_runs(docs)
    if not runs:
        return (
            "No records of the contrast are shipped yet: its runs go into "
            f"`docs/results/{CONTRAST}/NAME` (`scripts/results_doc.py ship RUN_DIR "
            f"{CONTRAST}/NAME`), and `scripts/results_doc.py generate` writes this part.\n"
        )
    held = _held(runs)
    lines = [
        f"![train and {held} loss per epoch](results/{CONTRAST_FIGURE})",
        "",
        f"| variant | epochs | lowest {held} loss (epoch) | {held} loss at the last epoch | "
        f"rise since the lowest | train loss at the last epoch | gap: {held} - train loss | "
        f"gap: train - {held} accuracy | verdict (the report's rule) | "
        f"smoothed: mean {held} loss, {TREND_WINDOW} epochs before the last {TREND_WINDOW} → "
        f"the last {TREND_WINDOW} | the post | agrees? |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    notes = []
    for run in runs:
        row, s, trend = _contrast_row(run)
        lines.append(row)
        notes.append(f"- `{run.model}`: {s['overfitting_note']}.{_trend_note(trend, held)}")
    done = sorted({r.epochs_done for r in runs})
    planned = sorted({r.epochs_planned for r in runs})
    lines += [
        "",
        f"The report's rule: a run overfits when its {held} loss ends more than "
        f"{OVERFIT_RISE:.0%} above its lowest; computed here on the epochs done "
        f"({', '.join(map(str, done))} of {', '.join(map(str, planned))}). The train figures "
        "are the epoch averages Keras reports (augmentation and dropout on), so the gaps are "
        "those of the last epoch done, not of a finished run. One epoch's "
        f"{held} loss swings by several per cent, so the rule, read from single epochs, can "
        f"call noise a rise; the smoothed column compares the means of {TREND_WINDOW} "
        "epochs (a change within 1% is flat). \"agrees?\" follows the report's rule.",
        "",
        *notes,
    ]
    unfinished = [r for r in runs if not r.finished]
    if unfinished:
        lo = min(r.epochs_done for r in unfinished) + 1
        lines += [
            "",
            f"Unknown until the runs go on: epochs {lo} to {max(planned)}, the learning-rate "
            f"drops among them, and whether a rise seen so far lasts.",
        ]
    return "\n".join(lines) + "\n"


def contrast_figure(docs: Path = DOCS) -> Path | None:
    """The runs' train (dashed) and validation (solid) loss per epoch on one figure, each
    run's lowest validation loss marked."""
    runs = contrast_runs(docs)
    if not runs:
        return None
    from matplotlib import rc_context

    held = _held(runs)
    with rc_context(STYLE):
        fig = new_figure((8, 4.8))
        ax = fig.add_subplot()
        for i, run in enumerate(runs):
            m, color = run.metrics, f"C{i}"
            ax.plot(m["epoch"], m["val_loss"], "-", color=color, label=f"{run.model}: {held}")
            ax.plot(m["epoch"], m["loss"], "--", color=color, label=f"{run.model}: train")
            low = min(range(len(m["val_loss"])), key=m["val_loss"].__getitem__)
            ax.plot(m["epoch"][low], m["val_loss"][low], "o", color=color, markersize=6)
        epoch_axis(ax, max(r.epochs_done for r in runs))
        ax.set_ylabel("loss")
        ax.legend(loc="upper right")
        done = "/".join(str(r.epochs_done) for r in runs)
        ax.set_title(
            f"train (dashed) and {held} (solid) loss, epochs {done} of "
            f"{runs[0].epochs_planned}; dot: lowest {held} loss"
        )
        path = docs / "results" / CONTRAST_FIGURE
        save_figure(fig, path)
    return path


# ---------------------------------------------------------------------- the document


def generated_parts(docs: Path = DOCS) -> dict[str, str]:
    return {"records": records_table(docs), "contrast": contrast_text(docs)}


def _blocks(text: str) -> dict[str, str]:
    return {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}


def generate(docs: Path = DOCS) -> list[str]:
    """Rewrite the generated parts of docs/results.md and draw the figures; returns the
    names of the parts that changed."""
    doc = docs / "results.md"
    text, parts = doc.read_text(), generated_parts(docs)
    missing = sorted(set(parts) - set(_blocks(text)))
    if missing:
        raise SystemExit(f"{doc} has no place for the generated part(s) {', '.join(missing)}")
    changed = [n for n, body in _blocks(text).items() if n in parts and parts[n] != body]
    def fill(m: re.Match) -> str:
        return m.group(1) + parts.get(m.group("name"), m.group("body")) + m.group(4)

    doc.write_text(BLOCK.sub(fill, text))
    figure = docs / "results" / CONTRAST_FIGURE
    if contrast_figure(docs) is None:
        figure.unlink(missing_ok=True)
    return changed


def check(docs: Path = DOCS) -> list[str]:
    """What in docs/results.md disagrees with the shipped records (empty: nothing)."""
    text, parts = (docs / "results.md").read_text(), generated_parts(docs)
    blocks, problems = _blocks(text), []
    for name, body in parts.items():
        if name not in blocks:
            problems.append(f"docs/results.md has no generated part {name!r}")
        elif blocks[name] != body:
            problems.append(f"docs/results.md's part {name!r} disagrees with the records")
    for link in re.findall(r"\]\((results/[^)]+\.png)\)", text):
        if not (docs / link).is_file():
            problems.append(f"docs/results.md shows {link}, which is missing")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=Path, default=DOCS, help="the docs folder (default: this repo's)")
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("ship", help="copy a run folder's records into docs/results/NAME")
    s.add_argument("run_dir", type=Path)
    s.add_argument("name", help="the folder under docs/results, e.g. contrast/alexnet")
    sub.add_parser("generate", help="rewrite docs/results.md's generated parts and figures")
    sub.add_parser("check", help="exit 1 where docs/results.md disagrees with the records")
    args = p.parse_args(argv)
    if args.what == "ship":
        print(f"shipped {ship(args.run_dir, args.name, args.docs)}")
        return 0
    if args.what == "generate":
        changed = generate(args.docs)
        print(f"rewrote: {', '.join(changed) or 'nothing changed'}")
        return 0
    problems = check(args.docs)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
