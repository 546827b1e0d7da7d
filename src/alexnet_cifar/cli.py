"""The ``alexnet-cifar`` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2
EXIT_NONFINITE = 3


class UserError(Exception):
    """A mistake the user can fix; printed as one message, never as a traceback."""


# ---------------------------------------------------------------------- argument types


def _int_at_least(lo: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{what} must be a whole number, not {text!r}"
            ) from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{what} must be at least {lo}, not {v}")
        if v > 10**9:
            raise argparse.ArgumentTypeError(f"{what} of {v} is too large")
        return v

    return parse


def _positive_float(what: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if not (v > 0 and v < float("inf")):
            raise argparse.ArgumentTypeError(f"{what} must be a positive number, not {text}")
        return v

    return parse


def _device(text: str) -> str:
    t = text.strip().lower()
    if t in ("auto", "cpu", "cuda") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu or cuda (or cuda:N)")


def _model_name(text: str) -> str:
    from .models import UnknownModelError, get_config

    try:
        get_config(text)
    except UnknownModelError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# ---------------------------------------------------------------------- parser


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    """The engine's speed-ups, each on by default where it helps and each switchable off."""
    g = p.add_argument_group("engine (defaults: the fast configuration for the device)")
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="bf16 autocast (CUDA) or exact fp32; auto: bf16 on CUDA, fp32 on CPU",
    )
    for flag, dest, what in [
        ("channels-last", "channels_last", "channels_last memory format"),
        ("compile", "compile", "torch.compile the model (auto: on CUDA)"),
        ("cuda-graphs", "cuda_graphs", "run each step as one CUDA graph (auto: on CUDA)"),
        ("fused-optimizer", "fused_optimizer", "torch's fused SGD kernel (auto: on)"),
    ]:
        g.add_argument(f"--{flag}", dest=dest, action="store_true", default=None, help=what)
        g.add_argument(f"--no-{flag}", dest=dest, action="store_false")


def engine_options(args):
    from .engine import EngineOptions

    return EngineOptions(
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        fused_optimizer=args.fused_optimizer,
    )


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The training flags shared by ``train`` and ``study`` (all but MODEL, --out, --resume,
    --force and --json)."""
    p.add_argument(
        "--recipe",
        choices=["seed", "fast"],
        help="seed (default): the post's recipe; fast: the same networks trained for the time "
        "to reach the seed's accuracy (batch 512, warm-up and linear decay, label smoothing, "
        "weight averaging, flip test-time augmentation; docs/performance.md)",
    )
    p.add_argument("--epochs", type=_int_at_least(1, "--epochs"), help="seed 300, fast 40")
    p.add_argument("--batch-size", type=_int_at_least(1, "--batch-size"), help="seed 64, fast 512")
    p.add_argument("--lr", type=_positive_float("--lr"), help="peak learning rate (0.01, 0.08)")
    p.add_argument("--seed", type=_int_at_least(0, "--seed"), help="default 0")
    p.add_argument(
        "--data-dir",
        help="folder holding cifar-10-batches-bin (or -py); "
        "default $CIFAR10_DIR, else a per-user cache (downloaded if missing)",
    )
    p.add_argument("--device", type=_device, default="auto", help="auto (default), cpu, cuda")
    p.add_argument(
        "--limit-train",
        type=_int_at_least(1, "--limit-train"),
        metavar="N",
        help="train on a class-balanced subset of N images fixed by the seed",
    )
    p.add_argument(
        "--limit-test",
        type=_int_at_least(1, "--limit-test"),
        metavar="N",
        help="evaluate on a class-balanced subset of N test images",
    )
    p.add_argument(
        "--eval-batch-size",
        type=_int_at_least(1, "--eval-batch-size"),
        help="batch size for evaluation (default 500 on CPU, 2000 on CUDA)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the md5 check of the data")
    p.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard events")
    add_engine_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--quiet", "-q", action="store_true", help="print nothing but errors and the final result"
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="alexnet-cifar",
        description="AlexNet and four variants on CIFAR-10, trained with the seed post's "
        "Keras recipe in PyTorch.",
    )
    p.add_argument("--version", action="version", version=f"alexnet-cifar {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser(
        "train",
        help="train one variant with the seed recipe",
        description="Train one variant with the seed recipe (SGD 0.01, Nesterov 0.9, drops x0.1 "
        "at 1/3 and 2/3 of the epochs, batch 64, shifts of up to 4 pixels and flips). The run "
        "folder gets config.json, metrics.csv, TensorBoard events, checkpoint.pt (every epoch) "
        "and model.pt (the final weights).",
    )
    t.add_argument("model", type=_model_name, metavar="MODEL", help="variant (see 'models')")
    add_train_flags(t)
    t.add_argument("--out", type=Path, help="run folder (default runs/MODEL)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint (flags left out are "
        "taken from the run)",
    )
    t.add_argument(
        "--force",
        action="store_true",
        help="with --resume, accept a changed --epochs (the learning-rate drops stay put)",
    )
    t.add_argument("--json", action="store_true", help="print the final result as JSON")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="test loss, accuracy, per-class accuracy and confusion matrix of a trained model",
    )
    e.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="run folder, checkpoint or model.pt")
    e.add_argument("--data-dir")
    e.add_argument("--device", type=_device, default="auto")
    e.add_argument("--batch-size", type=_int_at_least(1, "--batch-size"), default=500)
    e.add_argument("--limit-test", type=_int_at_least(1, "--limit-test"), metavar="N")
    e.add_argument(
        "--seed", type=_int_at_least(0, "--seed"), default=0, help="fixes the --limit-test subset"
    )
    e.add_argument("--no-verify", action="store_true")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument(
        "--tta",
        action="store_true",
        help="also report the flip-averaged prediction (mean softmax of image and mirror image)",
    )
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser(
        "bench",
        help="time the training step: plain eager fp32 against the engine, in one process",
        description="Per model: ms per step, images/s and TFLOP/s of (a) a plain eager fp32 "
        "step with torch.optim.SGD and (b) the engine as train runs it; the ratio a/b; on CUDA "
        "also the measured bf16 matmul peak, the fraction of it reached, and peak memory.",
    )
    b.add_argument("--models", default="all", help="all (default) or a comma-separated list")
    b.add_argument("--batch-size", type=_int_at_least(1, "--batch-size"), default=64)
    b.add_argument(
        "--steps",
        type=_int_at_least(1, "--steps"),
        help="measured steps per round and side (default 60 on CUDA, 4 on CPU)",
    )
    b.add_argument(
        "--rounds",
        type=_int_at_least(1, "--rounds"),
        help="alternations of plain and engine (default 5 on CUDA, 2 on CPU)",
    )
    b.add_argument(
        "--warmup",
        type=_int_at_least(0, "--warmup"),
        help="unmeasured steps first (default 10 on CUDA, 1 on CPU)",
    )
    b.add_argument("--device", type=_device, default="auto")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    add_engine_flags(b)
    b.set_defaults(func=cmd_bench)

    m = sub.add_parser("models", help="the five variants: parameters, MACs, size")
    m.add_argument("--json", action="store_true", help="a JSON list of objects")
    m.set_defaults(func=cmd_models)

    s = sub.add_parser("summary", help="a Keras-like layer table of one variant")
    s.add_argument("model", type=_model_name, metavar="MODEL")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_summary)

    from . import export, keras_io, predict
    from .study import add_parsers as add_study_parsers

    add_study_parsers(sub)  # study and report
    predict.add_parsers(sub)
    export.add_parsers(sub)
    keras_io.add_parsers(sub)
    return p


# ---------------------------------------------------------------------- commands


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def _model_list(text: str) -> list[str]:
    from .models import PRESETS, UnknownModelError, get_config

    if text.strip().lower() == "all":
        return list(PRESETS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("--models needs 'all' or a comma-separated list of models")
    for n in names:
        try:
            get_config(n)
        except UnknownModelError as e:
            raise UserError(str(e)) from None
    return names


def cmd_bench(args) -> int:
    from .bench import BenchSettings, format_row, run_bench
    from .train import resolve_device

    device = resolve_device(args.device)
    settings = BenchSettings(
        models=_model_list(args.models),
        device=device,
        batch_size=args.batch_size,
        steps=args.steps,
        rounds=args.rounds,
        warmup=args.warmup,
        engine=engine_options(args),
    )
    try:
        settings.engine.resolve(device)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not args.json:
        s = settings.resolved()
        print(
            f"bench on {device}: batch {s.batch_size}, {s.rounds} rounds of {s.steps} steps "
            f"per side after {s.warmup} warm-up steps"
        )
    out = run_bench(
        settings,
        report=(lambda r: None) if args.json else (lambda r: print(format_row(r), flush=True)),
    )
    if args.json:
        _print_json(out)
    elif "bf16_matmul_peak_tflops" in out:
        print(f"measured bf16 matmul peak: {out['bf16_matmul_peak_tflops']} TFLOP/s")
    return 0


def cmd_models(args) -> int:
    from .models import PRESETS, PUBLISHED_PARAMS, layer_table

    rows = []
    for name, cfg in PRESETS.items():
        t = layer_table(name)
        rows.append(
            {
                "name": name,
                "params": t.params,
                "published_params": PUBLISHED_PARAMS[name],
                "macs": t.macs,
                "size_mb": round(t.size_mb, 2),
                "stem": cfg.stem,
                "widths": list(cfg.widths),
                "dense": list(cfg.dense),
                "conv_init": cfg.conv_init,
                "l2": cfg.l2,
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'model':<22}{'params':>13}{'MACs/image':>13}{'fp32 MB':>10}  init, L2")
    for r in rows:
        extra = r["conv_init"] + (f", L2 {r['l2']:g}" if r["l2"] else "")
        print(
            f"{r['name']:<22}{r['params']:>13,}{r['macs'] / 1e9:>12.3f}G{r['size_mb']:>10.1f}  "
            f"{extra}"
        )
    return 0


def cmd_summary(args) -> int:
    from .models import layer_table

    t = layer_table(args.model)
    if args.json:
        _print_json(
            {
                "name": args.model,
                "layers": [
                    {
                        "name": r.name,
                        "type": r.kind,
                        "output_shape": list(r.output_shape),
                        "params": r.params,
                        "macs": r.macs,
                    }
                    for r in t.rows
                ],
                "params": t.params,
                "macs": t.macs,
            }
        )
        return 0
    line = "_" * 66
    print(f'Model: "{args.model}"')
    print(line)
    print(f"{'Layer (type)':<29}{'Output Shape':<26}{'Param #':>11}")
    print("=" * 66)
    for i, r in enumerate(t.rows):
        shape = "(None, " + ", ".join(str(d) for d in r.output_shape) + ")"
        print(f"{r.name + ' (' + r.kind + ')':<29}{shape:<26}{r.params:>11,}")
        print("=" * 66 if i == len(t.rows) - 1 else line)
    print(f"Total params: {t.params:,}")
    print(f"Trainable params: {t.params:,}")
    print("Non-trainable params: 0")
    print(f"MACs per image: {t.macs:,}   float32 size: {t.size_mb:.1f} MB")
    return 0


def _run_settings(out: Path) -> dict:
    cfg = out / "config.json"
    if not cfg.is_file():
        return {}
    try:
        return json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _recipe_from_args(args, prev_recipe: dict):
    """The recipe a train-like command asks for: a resumed run's own, else the named one,
    with the flags given on top."""
    from .recipe import Recipe, get_recipe

    try:
        if prev_recipe and args.recipe in (None, prev_recipe.get("name", "seed")):
            # a resumed run keeps its whole recipe, drops included (kept across --force)
            base = Recipe.from_dict(prev_recipe)
            return base.with_(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
        name = args.recipe or prev_recipe.get("name", "seed")
        return get_recipe(name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    except ValueError as e:
        raise UserError(str(e)) from None


def train_options(args, model: str, out: Path, prev: dict, resume: bool):
    """TrainOptions from the shared training flags; a flag left out takes its value from
    ``prev`` (the settings of an earlier run or study: recipe, seed, limits), else the default."""
    from .train import TrainOptions

    recipe = _recipe_from_args(args, prev.get("recipe", {}))
    return TrainOptions(
        model=model,
        out=out,
        recipe=recipe,
        seed=args.seed if args.seed is not None else prev.get("seed", 0),
        device=args.device,
        data_dir=args.data_dir,
        verify=not args.no_verify,
        limit_train=args.limit_train if args.limit_train is not None else prev.get("limit_train"),
        limit_test=args.limit_test if args.limit_test is not None else prev.get("limit_test"),
        eval_batch_size=args.eval_batch_size,
        engine=engine_options(args),
        resume=resume,
        force=getattr(args, "force", False),
        quiet=args.quiet or getattr(args, "json", False),
        progress=False if args.no_progress else None,
        tensorboard=not args.no_tensorboard,
    )


def cmd_train(args) -> int:
    from .train import train

    out = args.out if args.out is not None else Path("runs") / args.model
    prev = _run_settings(out) if args.resume else {}
    opts = train_options(args, args.model, out, prev, args.resume)
    result = train(opts)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 speaks for the run
    if args.json:
        _print_json(result)
    else:
        print(
            f"{result['model']}: test accuracy {result['test_accuracy']:.4f} "
            f"(test loss {result['test_loss']:.4f}) after {result['epochs']} epochs, "
            f"best {result['best_test_accuracy']:.4f} at epoch {result['best_epoch']}; "
            f"{result['train_seconds']:.1f} s; run folder {out}"
        )
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from .data import load_cifar10
    from .evaluate import evaluate_model, load_model
    from .train import resolve_device

    device = resolve_device(args.device)
    model = load_model(args.path, device=device)
    data = load_cifar10(args.data_dir, verify=not args.no_verify, progress=not args.json)
    try:
        data = data.subset(None, args.limit_test, args.seed)
    except ValueError as e:
        raise UserError(str(e).replace("limit_", "--limit-")) from e
    how = dict(
        classes=data.classes, batch_size=args.batch_size, channels_last=device.type == "cuda"
    )
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    tta = None
    if args.tta:
        from .predict import evaluate_with_tta

        res, tta = evaluate_with_tta(model, x, y, **how)
    else:
        res = evaluate_model(model, x, y, **how)
    if args.json:
        out = {"path": str(args.path), "model": model.config.name, **res.to_dict()}
        if tta is not None:
            out["tta"] = tta.to_dict()
            out["tta_loss"], out["tta_accuracy"] = tta.loss, tta.accuracy
        _print_json(out)
        return 0
    print(
        f"{model.config.name} on {res.n} test images: loss {res.loss:.4f}  "
        f"accuracy {res.accuracy:.4f}"
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


# ---------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from .checkpoint import CheckpointError, RunLockedError
    from .data import DataError
    from .models import UnknownModelError
    from .train import NonFiniteLossError, RunSetupError, TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except (
        UserError,
        DataError,
        CheckpointError,
        RunLockedError,
        RunSetupError,
        UnknownModelError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # `alexnet-cifar models | head`: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
