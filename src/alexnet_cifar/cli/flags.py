"""What the commands share: the parser, argument types, the training flags and their mapping
to the library's options, and how parameters named in messages become flags."""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import sys
from pathlib import Path

from .._version import __version__
from ..distributed import is_device_name
from ..engine.evaluate import EVAL_BATCH
from ..engine.options import EngineOptions, engine_flag_specs
from ..errors import AlexnetCifarError, SettingError
from ..models import AlexNetConfig
from ..recipe import RECIPES, TUNABLE, Recipe, get_recipe
from ..training.resume import KEPT, kept_settings, settings_on_resume
from ..training.run import CHECKPOINT_EVERY, TrainOptions
from ..variants import resolve_variant, variant_list

__all__ = [
    "add_device",
    "eval_batches",
    "add_engine_flags",
    "add_run_path",
    "add_train_flags",
    "device",
    "flag_name",
    "int_at_least",
    "invocation",
    "make_parser",
    "model_list",
    "model_name",
    "positive_float",
    "print_json",
    "seed_recipe_text",
    "train_options",
]

PROG = "alexnet-cifar"


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line and a pointer to --help, not the usage block; an
    unknown flag gets the nearest of this command's flags as a suggestion."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            command = self._command_parser(parsed)
            command.error(f"unrecognized arguments: {' '.join(unknown)}{command.nearest(unknown)}")
        return parsed

    def _command_parser(self, parsed) -> Parser:
        """The parser of the command ``parsed`` holds (this one if it has none)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices.get(getattr(parsed, action.dest, None), self)
        return self

    def nearest(self, unknown: list[str]) -> str:
        """'; did you mean --epochs?' for the first unknown flag close to one of ours."""
        flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        for text in unknown:
            if text.startswith("-"):
                close = difflib.get_close_matches(text.split("=")[0], flags, n=1, cutoff=0.6)
                if close:
                    return f"; did you mean {close[0]}?"
        return ""


def make_parser():
    p = Parser(
        prog=PROG,
        description="AlexNet and four variants on CIFAR-10, trained with the seed post's "
        "Keras recipe in PyTorch.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    return p, sub


# ---------------------------------------------------------------------- messages


def flag_name(name: str, value: str | None) -> str:
    """A parameter named in a library message, as this command's flag: ``limit_train`` ->
    ``--limit-train``, ``verify=False`` -> ``--no-verify``, ``device='cpu'`` -> ``--device cpu``."""
    flag = "--" + name.replace("_", "-")
    if value is None:
        return flag
    try:
        v = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        v = value
    if v is True:
        return flag
    if v is False:
        return "--no-" + name.replace("_", "-")
    return f"{flag} {v}"


def invocation() -> list[str]:
    """How the user can run this tool again from where they are: ``alexnet-cifar`` when that
    is on the PATH, else the path they called (``.venv/bin/alexnet-cifar``), else
    ``python -m alexnet_cifar``."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else PROG
    if argv0.endswith(("__main__.py", "-c")) or not os.path.exists(argv0):
        return [_short_path(sys.executable), "-m", "alexnet_cifar"]
    on_path = shutil.which(PROG)
    if on_path and os.path.samefile(on_path, argv0):
        return [PROG]
    return [_short_path(argv0)]


def _short_path(path: str) -> str:
    rel = os.path.relpath(os.path.abspath(path))
    if rel.startswith(".."):
        return os.path.abspath(path)
    return rel if os.sep in rel else f".{os.sep}{rel}"


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


# ---------------------------------------------------------------------- argument types


def int_at_least(lo: int, what: str):
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


def _finite_float(what: str, ok, wanted: str):
    """An argument type: a finite number for which ``ok`` holds, else "WHAT must be WANTED"."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if not (ok(v) and v < float("inf")):
            raise argparse.ArgumentTypeError(f"{what} must be {wanted}, not {text}")
        return v

    return parse


def positive_float(what: str):
    return _finite_float(what, lambda v: v > 0, "a positive number")


def non_negative_float(what: str):
    return _finite_float(what, lambda v: v >= 0, "0 or more seconds")


def device(text: str) -> str:
    if is_device_name(text):
        return text.strip().lower()
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu or cuda (or cuda:N)")


def model_name(text: str) -> AlexNetConfig:
    """A MODEL argument: a preset's name or a variant file, as its shape."""
    try:
        return resolve_variant(text)
    except SettingError as e:
        raise argparse.ArgumentTypeError(e.render(flag_name)) from None


def model_list(text: str) -> list[AlexNetConfig]:
    try:
        return variant_list(text)
    except SettingError as e:
        raise argparse.ArgumentTypeError(e.render(flag_name)) from None


def folder(text: str) -> Path:
    """A folder to write into: never the empty string (that would be the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty folder name; give a folder")
    return Path(text)


# ---------------------------------------------------------------------- shared arguments


def add_run_path(p: argparse.ArgumentParser) -> None:
    """The trained model a command reads: a run folder, a checkpoint or a model file."""
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="run folder, checkpoint or model.pt")


def add_device(p: argparse.ArgumentParser) -> None:
    # None when left out (auto), so that a resumed run can keep its own device
    p.add_argument("--device", type=device, help="auto (default), cpu, cuda")


# ---------------------------------------------------------------------- training flags


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    """The engine's settings, one flag per field of EngineOptions: each speed-up on by default
    where it helps and each switchable off."""
    g = p.add_argument_group("engine (defaults: the fast configuration for the device)")
    for spec in engine_flag_specs():
        flag, dest, what = spec["flag"], spec["name"], spec["help"]
        if spec["kind"] == "bool":
            g.add_argument(f"--{flag}", dest=dest, action="store_true", default=None, help=what)
        elif spec["kind"] == "bool?":
            g.add_argument(
                f"--{flag}", dest=dest, action="store_true", default=None, help=what
            )
            g.add_argument(f"--no-{flag}", dest=dest, action="store_false", help=f"no {flag}")
        else:
            g.add_argument(f"--{flag}", dest=dest, choices=spec["choices"], help=what)


#: The engine's settings (the fields of EngineOptions), in the order of their flags.
ENGINE_FLAGS = tuple(spec["name"] for spec in engine_flag_specs())


def engine_options(args, prev: dict | None = None) -> EngineOptions:
    """The engine flags given, the run's own settings for those left out (on resume), else
    the defaults (auto)."""
    prev = prev or {}
    chosen = {}
    for name in ENGINE_FLAGS:
        value = getattr(args, name, None)
        value = value if value is not None else prev.get(name)
        if value is not None:
            chosen[name] = value
    return EngineOptions(**chosen)


def seed_recipe_text() -> str:
    """The recipes in a few words, the seed's numbers taken from the recipe itself."""
    seed = Recipe()
    return (
        f"seed (default), the post's: SGD {seed.lr:g}, Nesterov {seed.momentum:g}, drops "
        f"x{seed.lr_decay:g} at 1/3 and 2/3 of the epochs, batch {seed.batch_size}, shifts of up "
        f"to {seed.max_shift:g} pixels and flips; fast: the same networks trained for the time to "
        "reach the seed's accuracy (docs/performance.md)"
    )


def eval_batches() -> str:
    """The default evaluation batches in words: ``500 on CPU, 2000 on CUDA``."""
    return ", ".join(f"{n} on {kind.upper()}" for kind, n in EVAL_BATCH.items())


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The training flags shared by ``train`` and ``study`` (all but MODEL, --out, --resume,
    --force and --json)."""
    p.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="seed (default): the post's recipe; fast: the same networks trained for the time "
        "to reach the seed's accuracy (batch 512, warm-up and linear decay, label smoothing, "
        "weight averaging, flip test-time augmentation; docs/performance.md)",
    )
    seed, fast = get_recipe("seed"), get_recipe("fast")
    p.add_argument(
        "--epochs",
        type=int_at_least(1, "--epochs"),
        help=f"seed {seed.epochs}, fast {fast.epochs}",
    )
    p.add_argument(
        "--batch-size",
        type=int_at_least(1, "--batch-size"),
        help=f"seed {seed.batch_size}, fast {fast.batch_size}",
    )
    p.add_argument(
        "--lr",
        type=positive_float("--lr"),
        help=f"peak learning rate (seed {seed.lr:g}, fast {fast.lr:g}: "
        f"{seed.lr:g} per {seed.batch_size} images of the batch)",
    )
    p.add_argument("--seed", type=int_at_least(0, "--seed"), help="default 0")
    p.add_argument(
        "--data-dir",
        help="folder holding cifar-10-batches-bin (or -py); "
        "default $CIFAR10_DIR, else a per-user cache (downloaded if missing)",
    )
    add_device(p)
    p.add_argument(
        "--limit-train",
        type=int_at_least(1, "--limit-train"),
        metavar="N",
        help="train on a class-balanced subset of N images fixed by the seed",
    )
    p.add_argument(
        "--limit-test",
        type=int_at_least(1, "--limit-test"),
        metavar="N",
        help="evaluate on a class-balanced subset of N test images",
    )
    p.add_argument(
        "--val-split",
        type=int_at_least(1, "--val-split"),
        metavar="N",
        help="hold out N class-balanced training images (fixed by the seed) to evaluate each "
        "epoch and choose the best one; the test set is then used once, at the end "
        "(default: none, the post's setting: the test set is evaluated every epoch)",
    )
    p.add_argument(
        "--eval-batch-size",
        type=int_at_least(1, "--eval-batch-size"),
        help=f"batch size for evaluation (default {eval_batches()})",
    )
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        default=None,
        help="skip the md5 check of the data",
    )
    p.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard events")
    p.add_argument(
        "--checkpoint-every",
        type=non_negative_float("--checkpoint-every"),
        metavar="SECONDS",
        help=f"write the checkpoint at most this often (default {CHECKPOINT_EVERY:g}; 0: every "
        "epoch); always at the end and on Ctrl-C or SIGTERM, so a hard kill loses at most that "
        "much training; a resume keeps the run's",
    )
    p.add_argument(
        "--stop-after",
        type=int_at_least(1, "--stop-after"),
        metavar="EPOCH",
        help="stop cleanly after this epoch, with a checkpoint and the records of the epochs "
        "done, on the full run's schedule (the seed recipe's 300 epochs keep their drops at "
        "100 and 200); the run is unfinished, shown as 'epoch E of N', and --resume (with a "
        "later --stop-after or none) continues it, ending as if never stopped. Not part of "
        "the run's settings: a run started without it can be resumed with it",
    )
    add_engine_flags(p)
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (on a terminal), nor the heartbeat line printed every 30 s inside "
        "an epoch when the output is not a terminal",
    )
    p.add_argument(
        "--quiet", "-q", action="store_true", help="print nothing but errors and the final result"
    )


def _recipe(args, prev_recipe: dict) -> Recipe:
    """The recipe a train-like command asks for: a resumed run's own, else the named one,
    with the flags given on top."""
    tuned = {name: getattr(args, name) for name in TUNABLE}  # --epochs, --batch-size, --lr
    try:
        if prev_recipe and args.recipe in (None, prev_recipe.get("name", "seed")):
            # a resumed run keeps its whole recipe, drops included (kept across --force)
            return Recipe.from_dict(prev_recipe).with_(**tuned)
        return get_recipe(args.recipe or prev_recipe.get("name", "seed"), **tuned)
    except AlexnetCifarError:
        raise
    except (TypeError, ValueError) as e:
        raise SettingError(f"the recipe cannot be used: {e}") from None


def train_options(
    args, model: AlexNetConfig, out: Path, prev: dict, resume: bool, where=None
) -> TrainOptions:
    """TrainOptions from the shared training flags; a flag left out takes its value from
    ``prev`` (the settings of an earlier run or study ``where``: recipe, seed, limits, engine,
    and the kept settings of ``resume.KEPT``), else the default. A kept setting given that
    differs from ``prev``'s is refused where it would change what is computed."""

    def given_or_prev(name: str, default=None):
        value = getattr(args, name)
        return value if value is not None else prev.get(name, default)

    given = {k.name: getattr(args, k.name) for k in KEPT}
    kept = settings_on_resume(kept_settings(prev), given, where or out) if prev else given
    return TrainOptions(
        model=model,
        out=out,
        recipe=_recipe(args, prev.get("recipe") or {}),
        seed=given_or_prev("seed", 0),
        limit_train=given_or_prev("limit_train"),
        limit_test=given_or_prev("limit_test"),
        val_split=given_or_prev("val_split"),
        engine=engine_options(args, prev.get("engine_requested")),
        resume=resume,
        force=getattr(args, "force", False),
        quiet=args.quiet or getattr(args, "json", False),
        progress=False if args.no_progress else None,
        tensorboard=not args.no_tensorboard,
        stop_after=args.stop_after,
        **{name: value for name, value in kept.items() if value is not None},  # else the default
    )
