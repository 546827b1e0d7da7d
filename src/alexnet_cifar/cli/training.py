"""``train``, ``evaluate`` and ``bench``."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import torch

from ..data import load_cifar10
from ..distributed import resolve_device
from ..engine.bench import BenchSettings, describe_device, format_row, run_bench
from ..engine.evaluate import eval_batch_size, evaluate_model, evaluate_with_tta
from ..engine.options import PRECISIONS
from ..errors import SettingError, param
from ..training.checkpoint import (
    load_model_and_progress,
    recorded_test_set,
    trained_engine,
)
from ..training.records import best_words
from ..training.resume import check_resumable, run_settings
from ..training.run import CHECKPOINT_EVERY
from ..training.runlog import progress_bar
from ..training.trainer import train
from ..variants import is_variant_file, resolve_variant
from .flags import (
    add_device,
    add_engine_flags,
    add_run_path,
    add_train_flags,
    engine_options,
    eval_batches,
    folder,
    int_at_least,
    invocation,
    model_list,
    print_json,
    seed_recipe_text,
    train_options,
)

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train one variant (the seed recipe unless --recipe says otherwise)",
        description=f"Train one variant with the recipe --recipe names: {seed_recipe_text()}. "
        "The run folder gets config.json, metrics.csv, TensorBoard events, checkpoint.pt (after "
        f"an epoch when {CHECKPOINT_EVERY:g} s have passed since the last one, see "
        "--checkpoint-every; always at the end and on Ctrl-C) and model.pt (the final weights).",
    )
    t.add_argument(
        "model",
        metavar="MODEL",
        help="a variant: a preset's name (see 'models') or a JSON file of a shape (see "
        "'models --config'); resuming, also the name of the run's own variant",
    )
    add_train_flags(t)
    t.add_argument("--out", type=folder, help="run folder (default runs/MODEL)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint (flags left out are taken from "
        "the run); a folder without a checkpoint is refused, unless its config.json shows a run "
        "stopped before its first checkpoint, which restarts from epoch 1",
    )
    t.add_argument(
        "--force",
        action="store_true",
        help="with --resume, accept a changed --epochs (the learning-rate drops stay put)",
    )
    t.add_argument("--json", action="store_true", help="print the final result as JSON")
    t.set_defaults(func=cmd_train, resume_command=_resume_train)

    _add_evaluate_parser(sub)

    b = sub.add_parser(
        "bench",
        help="time the training step: plain eager fp32 against the engine, in one process",
        description="Per model: ms per step, images/s and TFLOP/s of (a) a plain eager fp32 "
        "step with torch.optim.SGD and (b) the engine as train runs it; the ratio a/b; on CUDA "
        "also the measured bf16 matmul peak, the fraction of it reached, and peak memory.",
    )
    b.add_argument(
        "--models",
        type=model_list,
        default="all",
        help="all (default) or a comma-separated list of presets' names and JSON files of "
        "shapes",
    )
    b.add_argument(
        "--batch-size", type=int_at_least(1, "--batch-size"), default=64, help="images a step (64)"
    )
    b.add_argument(
        "--steps",
        type=int_at_least(1, "--steps"),
        help="measured steps per round and side (default 60 on CUDA, 3 on CPU)",
    )
    b.add_argument(
        "--rounds",
        type=int_at_least(1, "--rounds"),
        help="alternations of plain and engine (default 5)",
    )
    b.add_argument(
        "--warmup",
        type=int_at_least(0, "--warmup"),
        help="unmeasured steps first (default 10 on CUDA, 2 on CPU)",
    )
    add_device(b)
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    add_engine_flags(b)
    b.set_defaults(func=cmd_bench)



def _add_evaluate_parser(sub) -> None:
    e = sub.add_parser(
        "evaluate",
        help="test loss, accuracy, per-class accuracy and confusion matrix of a trained model",
    )
    add_run_path(e)
    e.add_argument(
        "--data-dir",
        help="folder holding cifar-10-batches-bin (default $CIFAR10_DIR, else the cache)",
    )
    add_device(e)
    e.add_argument(
        "--batch-size",
        type=int_at_least(1, "--batch-size"),
        help=f"images per forward pass (default {eval_batches()})",
    )
    e.add_argument(
        "--limit-test",
        type=int_at_least(1, "--limit-test"),
        metavar="N",
        help="a class-balanced subset of N test images (default: a run folder's own, from its "
        "config.json, so that it gives the figures of its result.json; else all)",
    )
    e.add_argument(
        "--seed",
        type=int_at_least(0, "--seed"),
        help="fixes the --limit-test subset (default: the run's own, else 0)",
    )
    e.add_argument("--no-verify", action="store_true", help="skip the md5 check of the data")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument(
        "--tta",
        action="store_true",
        help="also report the flip-averaged prediction (mean softmax of image and mirror image)",
    )
    e.add_argument(
        "--precision",
        choices=["auto", *PRECISIONS],
        default="auto",
        help="auto (default): the precision the run trained in (its config.json), so the "
        "figures match the run's own; fp32 for a model file with no run folder",
    )
    e.set_defaults(func=cmd_evaluate)

def _resume_train(args, e) -> list[str]:
    return ["train", e.model, "--out", str(e.run_dir), "--resume"]


def cmd_train(args) -> int:
    if args.force and not args.resume:
        raise SettingError(
            f"{param('force')} only changes the epochs of a run being resumed: add "
            f"{param('resume')} (or leave {param('force')} out to start a new run)"
        )
    # A file names its variant (and so the default folder); a resumed run's own variant is
    # also known by its name, from the run's record, when its file is gone.
    named = resolve_variant(args.model) if is_variant_file(args.model) else None
    name = named.name if named is not None else args.model
    out = args.out if args.out is not None else Path("runs") / name
    if args.resume:
        check_resumable(out)  # a folder with nothing to continue is refused, not started
    prev = run_settings(out, warn=_warn) if args.resume else {}
    recorded = {prev.get("model"): prev.get("model_config")}
    variant = named or resolve_variant(args.model, recorded)
    result = train(train_options(args, variant, out, prev, args.resume))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 speaks for the run
    if args.json:
        print_json(result)
    elif result.get("status") == "stopped":
        again = shlex.join([*invocation(), "train", result["model"], "--out", str(out)])
        print(
            f"{result['model']}: {best_words(result)}; {result['train_seconds']:.1f} s; run "
            f"folder {out}\ncontinue with: {again} --resume [--stop-after EPOCH]"
        )
    else:
        print(
            f"{result['model']}: {best_words(result)} (final test loss "
            f"{result['test_loss']:.4f}) after {result['epochs']} "
            f"epoch{'s' if result['epochs'] != 1 else ''}; "
            f"{result['train_seconds']:.1f} s; run folder {out}"
        )
    return 0


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr)


def _unfinished(progress: dict) -> str:
    steps = f", {progress['step']} steps into the next" if progress["step"] else ""
    return f"unfinished run: epoch {progress['epoch']} of {progress['epochs']}{steps}"


def cmd_evaluate(args) -> int:
    dev = resolve_device(args.device)
    model, progress = load_model_and_progress(args.path, device=dev)
    data = load_cifar10(args.data_dir, verify=not args.no_verify, progress=not args.json)
    test_set, note = _test_set(args, recorded_test_set(args.path))
    data = data.subset(None, test_set["limit_test"], test_set["seed"])
    data.check_classes(model.config.num_classes, what=f"the model in {args.path}")
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    n = len(y) * (2 if args.tta else 1)
    trained = trained_engine(args.path) or {}
    precision = args.precision if args.precision != "auto" else trained.get("precision", "fp32")
    with progress_bar(n, "evaluate", enabled=None, unit="img") as bar:
        settings = dict(
            classes=data.classes,
            batch_size=args.batch_size or eval_batch_size(dev),
            channels_last=bool(trained.get("channels_last", dev.type == "cuda")),
            precision=precision,
            on_batch=bar.update,
        )
        tta = None
        if args.tta:
            res, tta = evaluate_with_tta(model, x, y, **settings)
        else:
            res = evaluate_model(model, x, y, **settings)
    if args.json:
        out = {"path": str(args.path), "model": model.config.name, "precision": precision}
        out["test_set"] = test_set
        out.update(res.to_dict())
        if progress is not None:
            out["unfinished"] = {**progress, "note": _unfinished(progress)}
        if tta is not None:
            out["tta"] = tta.to_dict()
            out["tta_loss"], out["tta_accuracy"] = tta.loss, tta.accuracy
        print_json(out)
        return 0
    print(
        f"{model.config.name} on {res.n} test images{note}: loss {res.loss:.4f}  "
        f"accuracy {res.accuracy:.4f}  ({precision})"
        + (f" ({_unfinished(progress)})" if progress else "")
    )
    if tta is not None:
        print(
            f"flip-averaged (--tta): loss {tta.loss:.4f}  accuracy {tta.accuracy:.4f}  "
            f"({tta.accuracy - res.accuracy:+.4f} against the plain prediction)"
        )
    print("\nper-class accuracy:")
    for c, a in zip(res.classes, res.per_class_accuracy):
        print(f"  {c:<12}{a:.4f}")
    width = max(6, max(len(c) for c in res.classes[:10]) if res.classes else 6)
    print("\nconfusion matrix (rows: true class, columns: predicted):")
    print(" " * (width + 1) + "".join(f"{c[:5]:>6}" for c in res.classes))
    for c, row in zip(res.classes, res.confusion):
        print(f"{c:<{width + 1}}" + "".join(f"{v:>6}" for v in row))
    return 0


def _test_set(args, recorded: dict | None) -> tuple[dict, str]:
    """The test subset to evaluate on: the flags given, else the run's own (config.json), else
    the whole test set; and the words that say which, for the first line."""
    own = recorded or {"limit_test": None, "seed": 0}
    limit = args.limit_test if args.limit_test is not None else own["limit_test"]
    seed = args.seed if args.seed is not None else own["seed"]
    same = limit == own["limit_test"] and (limit is None or seed == own["seed"])
    test_set = {"limit_test": limit, "seed": seed}
    if recorded is None:
        return test_set, ""
    test_set["the_runs_own"] = same

    def words(t: dict) -> str:
        if t["limit_test"] is None:
            return "the whole test set"
        return f"--limit-test {t['limit_test']} --seed {t['seed']}"

    if not same:
        return test_set, f" ({words(test_set)}: not the run's, tested on {words(recorded)})"
    if recorded["limit_test"] is None:
        return test_set, " (the run's own test set)"
    return test_set, f" (the run's own test set: {words(recorded)})"


def cmd_bench(args) -> int:
    dev = resolve_device(args.device)
    settings = BenchSettings(
        models=args.models,
        device=dev,
        batch_size=args.batch_size,
        steps=args.steps,
        rounds=args.rounds,
        warmup=args.warmup,
        engine=engine_options(args),
    )
    used = settings.engine.resolve(dev)
    if not args.json:
        s = settings.resolved()
        print(
            f"bench on {dev} ({describe_device(dev)}): batch {s.batch_size}, {s.rounds} "
            f"rounds of {s.steps} steps per side after {s.warmup} warm-up "
            f"step{'s' if s.warmup != 1 else ''}, alternating\n"
            f"plain: eager fp32, torch.optim.SGD; engine: {used.describe()}\n"
            "ms a step: median [fastest-slowest round]; x: plain/engine (each round's range); "
            "images/s and TFLOP/s are the engine's, the plain step's are in --json"
        )
    out = run_bench(
        settings,
        report=(lambda r: None) if args.json else (lambda r: print(format_row(r), flush=True)),
    )
    if args.json:
        print_json(out)
    elif "bf16_matmul_peak_tflops" in out:
        print(f"measured bf16 matmul peak: {out['bf16_matmul_peak_tflops']} TFLOP/s")
    return 0
