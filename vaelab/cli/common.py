"""What the commands share: the argument parser class, flags built from the configuration
dataclasses, the flags and argparse types several commands take, library messages turned into
flags, and the helpers more than one command calls. Nothing here imports another cli module."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
from pathlib import Path
from typing import Any

from ..core.errors import VaelabError
from ..runs import config as cfg


EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the usage block, then the error),
    and a flag must be spelled out: with abbreviations, `--epoch 1` would silently be taken as
    `--epochs 1`, and a flag added later could change what an old command line means."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per configuration field; defaults are SUPPRESSed so we know what was given."""
    for section, cls in cfg.SECTIONS.items():
        group = parser.add_argument_group(f"{section} options ([{section}] in the config file)")
        for f in dataclasses.fields(cls):
            meta = dict(f.metadata)
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, tuple):
                default = ",".join(str(v) for v in default)
            help_text = meta.get("help", "") + (f" (default: {default})" if default is not None else "")
            kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": f"{section}.{f.name}"}
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            if f.type == "bool":
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["metavar"] = meta.get("metavar", f.name.upper())
            group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_from_args(args: argparse.Namespace) -> cfg.RunConfig:
    layers = [cfg.read_toml(args.config)] if args.config else []
    flags: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if "." in dest:
            section, name = dest.split(".", 1)
            flags.setdefault(section, {})[name] = value
    return cfg.build(cfg.merge(*layers, flags))


def add_trust_flag(parser: argparse.ArgumentParser) -> None:
    """--trust-code, on every command that opens a run directory: a run trained with --net
    package.module:Factory is rebuilt by importing and calling that factory, which runs its code;
    a run directory someone handed you runs nothing unless you say so."""
    parser.add_argument("--trust-code", action="store_true",
                        help="allow a run trained with --net package.module:Factory to import and run that factory "
                        "to rebuild its networks (only for runs whose code you trust)")  # fmt: skip


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """--device, on every command that computes with a model: where the model is put and its
    batches computed. A run opens on any device, whichever one trained it."""
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                        help="where the model computes: auto (CUDA, then Apple's MPS, then the CPU), cpu, cuda "
                        "(the current GPU), cuda:N or mps (default: auto)")  # fmt: skip


def check_device(args: argparse.Namespace) -> None:
    """Resolves --device once, before any work: a device this machine cannot use is one line and
    nothing is read or written; every part of the command then runs on the same device."""
    from ..core.devices import resolve_device

    args.device = resolve_device(args.device)


def check_trust(args: argparse.Namespace) -> None:
    """Refuses, before any work, a run directory of the command whose configuration names code to
    import (--net package.module:Factory) unless --trust-code is given. ``runs.load`` refuses it
    too; checking here makes every command fail at once, before reading data or training anything."""
    from ..core.files import CONFIG_FILE
    from ..nets.backbones import check_trusted
    from ..runs.rundir import read_config

    sampler = getattr(args, "sampler", None) or ""
    dirs = [getattr(args, "run", None), getattr(args, "resume", None),
            sampler[len("stage2:"):] if sampler.startswith("stage2:") else None]  # fmt: skip
    for run in dirs:
        if run is None or not (Path(run) / CONFIG_FILE).is_file():
            continue  # the command itself says what is wrong with a missing run
        try:
            config, _ = read_config(run)
        except VaelabError:
            continue  # likewise a corrupt one
        check_trusted(config.model.net, None, args.trust_code)


def sampler_choice(text: str) -> str:
    """argparse type of --sampler: prior, gmm or stage2:RUN2."""
    if text in ("prior", "gmm") or (text.startswith("stage2:") and len(text) > len("stage2:")):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from prior, gmm, stage2:RUN2 with RUN2 a run "
                                     "trained on this run's codes)")  # fmt: skip


AIS_DEFAULTS = {"steps": 1000, "chains": 16, "leapfrog": 10, "ais_start": "prior"}


def add_ais_flags(parser: argparse.ArgumentParser, steps_flag: str) -> None:
    """The AIS options, None when not given (so that --method is can refuse them)."""
    parser.add_argument(steps_flag, dest="ais_steps", type=int, metavar="STEPS",
                        help="AIS: annealing steps (intermediate distributions) (default: 1000)")  # fmt: skip
    parser.add_argument("--chains", type=int, help="AIS: independent chains per example (default: 16)")
    parser.add_argument("--leapfrog", type=int, help="AIS: leapfrog steps per HMC transition (default: 10)")
    parser.add_argument("--ais-start", choices=("prior", "posterior"),
                        help="AIS: anneal from the prior p(z) or from the encoder's q(z|x) (default: prior)")  # fmt: skip


def read_ais_options(args: argparse.Namespace, steps_flag: str) -> dict[str, Any]:
    """Checks the AIS flags against --method and returns ``ais.ais`` keywords (empty for is)."""
    flags = {steps_flag: args.ais_steps, "--chains": args.chains, "--leapfrog": args.leapfrog,
             "--ais-start": args.ais_start}  # fmt: skip
    if args.method == "is":
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise VaelabError(f"{', '.join(given)}: AIS options, unused by --method is; add --method ais or drop them")
        return {}
    for flag in (steps_flag, "--chains", "--leapfrog"):
        positive(flag, flags[flag])
    values = [v if v is not None else d for v, d in zip(flags.values(), AIS_DEFAULTS.values())]
    return dict(zip(("steps", "chains", "leapfrog", "start"), values))


def ais_keys(options: dict[str, Any]) -> dict[str, Any]:
    """AIS options under the names of the --json objects (steps, chains, leapfrog, ais_start)."""
    return {"steps": options["steps"], "chains": options["chains"], "leapfrog": options["leapfrog"],
            "ais_start": options["start"]}  # fmt: skip


def ais_header(options: dict[str, Any]) -> str:
    start = "the prior" if options["start"] == "prior" else "q(z|x)"
    return f"{options['steps']} steps x {options['chains']} chains, HMC with {options['leapfrog']} leapfrog steps, from {start}"


def int_list(flag: str):
    """argparse type for comma-separated positive integers such as 1,5,50."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} needs comma-separated integers such as 1,5,50, got {text!r}") from None
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} needs positive integers such as 1,5,50, got {text!r}")
        return values

    return parse


def index_list(flag: str):
    """argparse type for comma-separated indices counted from 0, such as 0,3,7."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} needs comma-separated integers such as 0,3,7, got {text!r}") from None
        if not values or any(v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} needs indices counted from 0, such as 0,3,7, got {text!r}")
        return values

    return parse


def positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise VaelabError(f"{name} must be at least 1, got {value}")


def epoch_printer(args: argparse.Namespace, epochs: int) -> tuple:
    """The Trainer callback that prints one line per epoch on stdout (none under --silent)."""
    if args.silent:
        return ()
    from tqdm.auto import tqdm

    from ..runs.lifecycle import epoch_line

    def show(record: dict) -> None:
        # through tqdm, so a progress bar on the same terminal is redrawn below the line
        tqdm.write(epoch_line(record, epochs), file=sys.stdout)
        sys.stdout.flush()  # one line per epoch as it happens, also into a pipe or a file

    return (show,)


def store_result(run: str, command: str, options: dict[str, Any], result: dict[str, Any]) -> None:
    """Keeps a command's result (its --json object) in the run directory, for compare and report.
    A run directory that cannot take it (read-only, a corrupt results file) costs a warning line,
    not the result just computed, which is still printed."""
    from ..runs.results import save_result

    try:
        save_result(run, command, options, result)
    except (OSError, VaelabError) as err:
        logging.getLogger("vaelab").warning("the result was not stored in %s (%s)", run, err)


# a Python argument in a library message: name=, then maybe a quoted value or True
_PYTHON_ARGUMENT = re.compile(r"(?<![\w.-])([a-z][a-z0-9_]*)=(?:'([^'\s]*)'|(True)\b)?")


def as_flags(message: str, options: set[str]) -> str:
    """Library messages name Python arguments; the command line speaks in flags. Turns
    ``latent_dim=8`` into ``--latent-dim 8``, ``latent_dim= must`` into ``--latent-dim must``,
    ``net='mlp'`` into ``--net mlp`` and ``trust_code=True`` into ``--trust-code``, for the names
    in ``options`` only, so that any other ``=`` in a message (``nets={...}``) is left as it is."""

    def flag(match: re.Match) -> str:
        name, quoted, true = match.groups()
        if name not in options:
            return match.group(0)
        text = "--" + name.replace("_", "-")
        if true:
            return text
        if quoted is not None:
            return f"{text} {quoted}"
        following = message[match.end() : match.end() + 1]
        return text if following in ("", " ", "?", ")", ",", ";", ":", ".") else text + " "

    return _PYTHON_ARGUMENT.sub(flag, message)


def needs_continuous_latent(config: cfg.RunConfig, run: str, what: str) -> None:
    """Refuses, in one line, a VAE-only analysis of a VQ-VAE or adversarial run."""
    from ..runs.families import family

    kind = family(config.model.model)
    if kind.likelihood == "none":
        raise VaelabError(
            f"{what} needs a VAE's q(z|x) and likelihood; {run} is a --model {config.model.model} run, which has "
            f"neither (use vaelab evaluate, sample, reconstruct or quality)"
        )
    if not kind.continuous_latent:
        raise VaelabError(
            f"{what} needs a VAE's continuous latent and its q(z|x); {run} is a --model vqvae run, whose "
            f"posterior is one-hot on the nearest codes (use vaelab evaluate, sample, reconstruct or quality)"
        )


GMM_EXAMPLES = 10000  # training examples whose encoder means the --sampler gmm mixture is fitted to


def stage2_sampler(sampler: str, config: cfg.RunConfig, run: str, model, trust_code: bool) -> Any:
    """The ``--sampler stage2:RUN2`` latent sampler: RUN2, a VAE trained on RUN's codes, checked to
    draw vectors of RUN's latent size."""
    from ..core.devices import module_device
    from ..evaluation.sampling import Stage2Sampler
    from ..runs.rundir import load, read_config

    run2 = sampler[len("stage2:"):]
    needs_continuous_latent(config, run, "--sampler stage2")
    config2, shape2 = read_config(run2)
    needs_continuous_latent(config2, run2, "--sampler stage2:RUN2")
    if tuple(shape2) != (model.latent_dim,):
        raise VaelabError(
            f"--sampler stage2:{run2}: {run2} models data of shape {list(shape2)}, but {run} has a latent of "
            f"{model.latent_dim} dimensions; train RUN2 on {run}'s codes (vaelab encode {run} -o codes.npz, then "
            f"vaelab train --data codes.npz --binarize none --likelihood gaussian-learned)"
        )
    return Stage2Sampler(load(run2, trust_code=trust_code, device=module_device(model)), model.latent_dim)
