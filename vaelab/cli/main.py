"""The ``vaelab`` command: train, evaluate, diagnose, sample, reconstruct.

User errors (bad flags, unknown names, missing or corrupt files) print one line to stderr and exit
with status 2; nothing on disk is damaged.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from typing import Sequence

from ..core.errors import VaelabError
from ..core.version import __version__
from ..runs import config as cfg
from . import compare, diagnose, evaluate, gaps, prior, quality, report, sample, scores, train, traverse
from .common import EXIT_USAGE, Parser, as_flags, check_device, check_trust

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command whose reader went away


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vaelab",
        description="Variational autoencoders: train them, measure them honestly, look inside them.",
    )
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    parser.set_defaults(_commands=sub.choices)  # for the "did you mean" of an unknown option

    train.add_train_parser(sub)
    evaluate.add_evaluate_parser(sub)
    diagnose.add_diagnose_parser(sub)
    gaps.add_gaps_parser(sub)
    sample.add_sample_parser(sub)
    prior.add_prior_parser(sub)
    sample.add_reconstruct_parser(sub)
    compare.add_compare_parser(sub)
    scores.add_score_parser(sub)
    scores.add_encode_parser(sub)
    scores.add_decode_parser(sub)
    quality.add_quality_parser(sub)
    traverse.add_traverse_parser(sub)
    traverse.add_interpolate_parser(sub)
    report.add_report_parser(sub)
    return parser


COMMANDS = {
    "train": train.cmd_train,
    "prior": prior.cmd_prior,
    "evaluate": evaluate.cmd_evaluate,
    "diagnose": diagnose.cmd_diagnose,
    "gaps": gaps.cmd_gaps,
    "sample": sample.cmd_sample,
    "quality": quality.cmd_quality,
    "reconstruct": sample.cmd_reconstruct,
    "compare": compare.cmd_compare,
    "traverse": traverse.cmd_traverse,
    "interpolate": traverse.cmd_interpolate,
    "report": report.cmd_report,
    "score": scores.cmd_score,
    "encode": scores.cmd_encode,
    "decode": scores.cmd_decode,
}


# the commands with --device: every one that computes with a model, but train, whose device is its own
DEVICE_COMMANDS = ("evaluate", "diagnose", "gaps", "sample", "prior", "reconstruct", "score", "encode", "decode",
                   "quality", "traverse", "interpolate", "report")  # fmt: skip


def _flush_denormals() -> None:
    """Flushes denormal floats to zero before PyTorch starts its worker threads, which inherit the
    setting only when they are created (the Trainer's own flush reaches the main thread alone).
    IWAE with K=50 on Fashion-MNIST, first 25 steps from initialization, 2 threads: 130 ms/step
    without flushing, 65 with the Trainer's flush, 48 with this one."""
    import torch

    torch.set_flush_denormal(True)


def _show_warnings() -> logging.Handler:
    """Library warnings (the "vaelab" logger, e.g. posterior collapse) as one line on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vaelab: warning: %(message)s"))
    logger = logging.getLogger("vaelab")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    return handler


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line; an unknown option is one line that names the closest known one."""
    args, extra = parser.parse_known_args(argv)
    commands = vars(args).pop("_commands")
    if not extra:
        return args
    sub = commands[args.command]
    unknown = extra[0]
    if not unknown.startswith("-") or unknown == "-":
        sub.error(f"unexpected argument {unknown!r}")
    name = unknown.split("=", 1)[0]
    known = [o for action in sub._actions for o in action.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f" (see {sub.prog} --help)"
    sub.exit(EXIT_USAGE, f"{sub.prog}: error: unknown option {name}{hint}\n")


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (`vaelab gaps ... | head`): the shell's convention is
    to end quietly with 128 + SIGPIPE. Output still buffered for the closed pipe is dropped, so
    the interpreter's final flush cannot fail with a traceback either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is no file (e.g. redirected in-process)
        pass
    return EXIT_BROKEN_PIPE


def options_of(parser: argparse.ArgumentParser, command: str) -> set[str]:
    """The Python names (``latent_dim``) of the long options (``--latent-dim``) of ``command``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        option[2:].replace("-", "_")
        for action in sub.choices[command]._actions
        for option in action.option_strings
        if option.startswith("--")
    }


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            code = _main(argv)
        except SystemExit:  # argparse's --help, --version and usage errors
            sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    handler = _show_warnings()
    _flush_denormals()
    try:
        if args.command in DEVICE_COMMANDS:
            check_device(args)
        if hasattr(args, "trust_code"):
            check_trust(args)
        return COMMANDS[args.command](args)
    except VaelabError as err:
        # the command's own options, and the configuration's, which are flags of vaelab train
        options = options_of(parser, args.command) | set(cfg.field_names())
        print(f"vaelab: error: {as_flags(str(err), options)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        hint = ""
        if args.command == "train":
            hint = f"; continue with: vaelab train --resume {args.resume or args.out or 'RUN'}"
        print(f"vaelab: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("vaelab").removeHandler(handler)
        import torch

        torch.set_flush_denormal(False)  # PyTorch's default, for callers of main() in-process


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
