"""The ``alexnet-cifar`` command: a thin layer over the Python API.

Each command is a short function that parses, calls the library and prints. Errors the user
can fix (:class:`~alexnet_cifar.errors.AlexnetCifarError`) become one ``error:`` line with the
error's exit code, their messages written with this command's flag names; anything else is a
bug and keeps its traceback. The commands live by kind: ``training`` (train, evaluate, bench),
``info`` (models, summary), ``studies`` (study, report) and ``models_io`` (predict, export,
import-keras, export-keras); ``flags`` holds the argument types and the flags they share.
"""

from __future__ import annotations

import os
import shlex
import sys

from ..errors import AlexnetCifarError, TrainingInterrupted
from . import info, models_io, studies, training
from .flags import flag_name, invocation, make_parser

__all__ = ["build_parser", "main"]

EXIT_INTERRUPTED = 130


def build_parser():
    p, sub = make_parser()
    for module in (training, info, studies, models_io):
        module.add_parsers(sub)
    return p


def _say_interrupted(args, e: TrainingInterrupted) -> None:
    print(e.render(flag_name), file=sys.stderr)
    resume = getattr(args, "resume_command", None)
    if resume is not None and e.run_dir is not None:
        print(f"Resume with: {shlex.join(invocation() + resume(args, e))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        try:
            _say_interrupted(args, e)
        except KeyboardInterrupt:  # another Ctrl-C while saying so: the run is saved all the same
            pass
        return e.exit_code
    except AlexnetCifarError as e:
        print(f"error: {e.render(flag_name)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `alexnet-cifar models | head`: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
