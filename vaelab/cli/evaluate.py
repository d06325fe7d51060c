"""`vaelab evaluate`: log p(x) by importance sampling, AIS or BDMC bounds; the VQ-VAE's bound;
what an adversarial model defines instead."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import logging
import math
from typing import Any

from ..core.errors import VaelabError
from ..runs import config as cfg
from .common import (
    add_ais_flags,
    add_device_flag,
    add_trust_flag,
    ais_header,
    ais_keys,
    int_list,
    positive,
    read_ais_options,
    store_result,
)

METHODS = ("is", "ais", "bdmc")


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab evaluate` and its flags."""
    p = subparsers.add_parser("evaluate", help="importance-sampled log-likelihood, ELBO, KL, active units",
                              description="Scores a run: log p(x) by importance sampling (--method is, with the "
                              "ELBO, KL, active units), by annealed importance sampling (--method ais), or "
                              "bidirectional Monte Carlo bounds on data simulated from the model (--method bdmc). The result (the --json "
                              "object) is kept in RUN/evaluation.json for vaelab compare.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("--method", default="is", choices=METHODS,
                   help="is: importance sampling from q(z|x); ais: annealed importance sampling with HMC "
                   "(Neal 2001); bdmc: AIS lower and reverse-AIS upper bounds on --limit examples "
                   "simulated from the model (Grosse et al. 2015) (default: is)")  # fmt: skip
    p.add_argument("--k", type=int, help="importance samples per example (default: 5000)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split (default: test)")
    p.add_argument("--limit", type=int, help="only the first N examples of the split (--method bdmc: the number of "
                   "examples simulated from the model, default 100)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed for the importance samples or AIS chains (default: 0)")
    p.add_argument("--bounds", metavar="K,K,...", type=int_list("--bounds"), default=(),
                   help="also estimate the bounds L_K for these K (each at most --k), from the same "
                   "particles, e.g. 1,5,50")  # fmt: skip
    p.add_argument("--proposal", choices=("posterior", "prior"),
                   help="posterior: importance sampling from the encoder's q(z|x); prior: naive Monte "
                   "Carlo from p(z), for comparison (default: posterior)")  # fmt: skip
    add_ais_flags(p, "--steps")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _evaluate_options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The arguments an evaluation depends on, as stored beside its result."""
    return {"method": args.method, "split": args.split, "limit": args.limit, **extra}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..core import distributed

    if not distributed.launched():
        return _evaluate(args, main=True)
    # under torchrun: the importance-sampling estimate is split over the processes; rank 0 speaks
    if args.method != "is":
        raise VaelabError(f"under torchrun, vaelab evaluate splits --method is over the processes; run --method "
                          f"{args.method} in one process")  # fmt: skip
    from ..runs.families import family
    from ..runs.rundir import read_config

    model = read_config(args.run)[0].model.model
    if family(model).likelihood != "bound":
        raise VaelabError(f"under torchrun, vaelab evaluate splits the importance-sampling estimate of a VAE; "
                          f"evaluate this --model {model} run in one process")  # fmt: skip
    args.device = distributed.init(args.device)[1]
    main = distributed.world().is_main
    if not main:
        args.quiet = True
    try:
        with contextlib.nullcontext() if main else contextlib.redirect_stdout(io.StringIO()):
            return _evaluate(args, main=main)
    finally:
        distributed.finish()


def _evaluate(args: argparse.Namespace, main: bool) -> int:
    import torch

    from ..evaluation.evaluate import KHAT_THRESHOLD, evaluate, mean_bound
    from ..inference.objectives import get_objective
    from ..runs.rundir import load, load_data, read_config

    positive("--k", args.k)
    positive("--limit", args.limit)
    ais_options = read_ais_options(args, "--steps")
    if args.method != "is":
        is_only = [flag for flag, given in (("--k", args.k is not None), ("--bounds", bool(args.bounds)),
                                            ("--proposal", args.proposal is not None)) if given]  # fmt: skip
        if is_only:
            raise VaelabError(
                f"{', '.join(is_only)}: importance-sampling options, unused by --method {args.method}; drop "
                f"them (AIS anneals from the prior, or from q(z|x) with --ais-start posterior)"
            )
    args.k = 5000 if args.k is None else args.k
    args.proposal = args.proposal or "posterior"
    config, _ = read_config(args.run)
    from ..runs.families import family

    likelihood = family(config.model.model).likelihood
    if likelihood == "none":
        given = [flag for flag, on in (("--method", args.method != "is"), ("--k", args.k != 5000), ("--bounds", bool(args.bounds)),
                                       ("--proposal", args.proposal != "posterior")) if on]  # fmt: skip
        if given:
            raise VaelabError(f"{given[0]} estimates a likelihood, which --model {config.model.model} does not define; "
                              f"drop it (vaelab quality {args.run} scores its samples)")  # fmt: skip
        split = load_data(config, args.split, limit=args.limit, progress=not args.quiet)
        if len(split) == 0:
            raise VaelabError(f"the {args.split} split of {args.run} is empty (the run has --valid-fraction 0?)")
        return _evaluate_adversarial(args, config, load(args.run, trust_code=args.trust_code, device=args.device), split)
    if args.method != "is" and likelihood == "codes":
        raise VaelabError(
            f"--method {args.method} anneals a continuous latent; {args.run} is a --model vqvae run, whose "
            f"bound log p(x|z_q) + log p(z_q) is exact given x: use --method is"
        )
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    if args.method == "bdmc":
        return _evaluate_bdmc(args, config, model, ais_options)
    split = load_data(config, args.split, limit=args.limit, progress=not args.quiet)
    if len(split) == 0:
        raise VaelabError(f"the {args.split} split of {args.run} is empty (the run has --valid-fraction 0?)")
    x = split.fixed()
    if args.method == "ais":
        return _evaluate_ais(args, config, model, split, ais_options)
    if likelihood == "codes":
        if args.bounds or args.proposal != "posterior":
            raise VaelabError(
                "--bounds and --proposal are importance-sampling options; a --model vqvae run's bound "
                "log p(x|z_q) + log p(z_q) is exact given x, with nothing to sample: drop them"
            )
        return _evaluate_vqvae(args, config, model, split)
    torch.manual_seed(args.seed)
    summary = evaluate(model, x, args.k, progress=not (args.quiet or args.json), bounds=args.bounds,
                       proposal=args.proposal)  # fmt: skip
    summary["proposal"] = args.proposal
    local = config.model.inference == "local"
    if args.proposal == "prior":
        # the KL and active units of the proposal p(z) are 0 by construction and say nothing of the model
        summary["kl"] = summary["active_units"] = None
        summary.pop("active_units_per_layer", None)
        summary["kl_of"] = None
    else:
        # which q the KL and active units describe: the encoder's, or (--inference local, no encoder)
        # the q fitted to each example by variational inference during evaluation
        summary["kl_of"] = "fitted local q" if local else "encoder"
    t = config.train
    trained = get_objective(t.objective, **{**t.objective_options(), "free_bits": 0.0})
    summary["trained_objective"] = _describe_objective(config)
    summary["trained_bound"], summary["trained_bound_stderr"] = mean_bound(trained, model, x)
    what = _what_is_scored(config, split)
    if split.dequantize:
        _add_discrete_bound(summary, split, "log_likelihood")
    if main:
        store_result(args.run, "evaluate", _evaluate_options(args, seed=args.seed, k=args.k, bounds=list(args.bounds),
                                                       proposal=args.proposal), summary)  # fmt: skip
    if args.json:
        print(json.dumps(summary))
        _warn_heavy_tails(summary, args.proposal)
        return 0
    s = summary
    print(f"{args.run}: {s['n_examples']} {args.split} examples of {config.data.data}, {what}, K={s['k']}")
    how = "importance sampling from q(z|x)" if args.proposal == "posterior" else "naive Monte Carlo from p(z)"
    print(f"  log-likelihood  {s['log_likelihood']:.3f} +- {s['log_likelihood_stderr']:.3f} nats ({how}, +- Monte-Carlo standard error)")
    if split.dequantize:
        print(f"  discrete data   >= {s['discrete_log_likelihood_bound']:.3f} nats ({s['bits_per_dim']:.4f} bits/dim)")
    print(f"  ELBO            {s['elbo']:.3f} nats")
    print(f"  trained bound   {s['trained_bound']:.3f} +- {s['trained_bound_stderr']:.3f} nats ({s['trained_objective']}, one draw per example, +- standard error over examples)")
    for kb, value in s["bounds"].items():
        print(f"  L_{kb:<13} {value:.3f} +- {s['bounds_stderr'][kb]:.3f} nats")
    print(f"  reconstruction  {s['reconstruction']:.3f} nats")
    if s["kl"] is not None:  # not for --proposal prior, where they would describe p(z) itself
        of = " (of the fitted local q: no encoder, q is fitted to each example)" if local else ""
        print(f"  KL              {s['kl']:.3f} nats{of}")
        print(f"  active units    {s['active_units']} of {model.latent_dim}{of}")
    if "active_units_per_layer" in s:
        per_layer = ", ".join(f"{a} of {n}" for a, n in zip(s["active_units_per_layer"], model.layer_sizes))
        print(f"  per layer       {per_layer} (z1, next to x, first)")
    if math.isnan(s["khat_mean"]):
        print("  Pareto k-hat    not estimated (needs K >= 6)")
    else:
        print(f"  Pareto k-hat    mean {s['khat_mean']:.2f}, {s['khat_above_0_7']:.1%} of examples above {KHAT_THRESHOLD} (of the importance weights: < 0.5 good, > {KHAT_THRESHOLD} unreliable)")
    _warn_heavy_tails(summary, args.proposal)
    return 0


def _evaluate_ais(args: argparse.Namespace, config: cfg.RunConfig, model, split, options: dict[str, Any]) -> int:
    """``vaelab evaluate --method ais``: log p(x) by annealed importance sampling."""
    from ..evaluation.ais import ais, summarize_ais

    result = ais(model, split.fixed(), **options, seed=args.seed, progress=not (args.quiet or args.json))
    summary = {**summarize_ais(result), "method": "ais", "steps": options["steps"], "chains": options["chains"],
               "leapfrog": options["leapfrog"], "ais_start": options["start"]}  # fmt: skip
    if split.dequantize:
        _add_discrete_bound(summary, split, "log_likelihood")
    store_result(args.run, "evaluate", _evaluate_options(args, seed=args.seed, **ais_keys(options)), summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    s = summary
    print(f"{args.run}: {s['n_examples']} {args.split} examples of {config.data.data}, "
          f"{_what_is_scored(config, split)}, AIS ({ais_header(options)})")  # fmt: skip
    print(f"  log-likelihood  {s['log_likelihood']:.3f} +- {s['log_likelihood_stderr']:.3f} nats (annealed importance "
          f"sampling, a stochastic lower bound; +- Monte-Carlo standard error over chains)")  # fmt: skip
    if split.dequantize:
        print(f"  discrete data   >= {s['discrete_log_likelihood_bound']:.3f} nats ({s['bits_per_dim']:.4f} bits/dim)")
    _print_hmc(s)
    return 0


def _print_hmc(s: dict) -> None:
    from ..evaluation.ais import ais

    target = inspect.signature(ais).parameters["target_accept"].default
    if math.isnan(s["acceptance_rate"]):
        print("  HMC             no transitions (--steps 1 is importance sampling with --chains particles)")
    else:
        print(f"  HMC             acceptance rate {s['acceptance_rate']:.3f} (step sizes set by a pilot run adapted towards {target}), "
              f"final step size {s['step_size']:.4g} (mean over examples)")  # fmt: skip


def _evaluate_bdmc(args: argparse.Namespace, config: cfg.RunConfig, model, options: dict[str, Any]) -> int:
    """``vaelab evaluate --method bdmc``: AIS lower and reverse-AIS upper bounds on simulated data."""
    from ..evaluation.ais import bdmc, summarize_bdmc

    n = 100 if args.limit is None else args.limit
    result = bdmc(model, n, **options, seed=args.seed, progress=not (args.quiet or args.json))
    summary = {**summarize_bdmc(result), "method": "bdmc", "steps": options["steps"], "chains": options["chains"],
               "leapfrog": options["leapfrog"], "ais_start": options["start"]}  # fmt: skip
    # simulated from the model: no split is read
    store_result(args.run, "evaluate", {"method": "bdmc", "limit": n, "seed": args.seed, **ais_keys(options)}, summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    s = summary
    print(f"{args.run}: bidirectional Monte Carlo on {s['n_examples']} examples simulated from the model "
          f"(Grosse et al. 2015), AIS ({ais_header(options)})")  # fmt: skip
    print(f"  AIS lower bound {s['ais_lower']:.3f} +- {s['ais_lower_stderr']:.3f} nats (forward AIS from the start)")
    print(f"  AIS upper bound {s['ais_upper']:.3f} +- {s['ais_upper_stderr']:.3f} nats (reverse AIS from the exact "
          f"posterior sample that generated each example; +- from the spread of upper - lower over the examples, "
          f"which covers the draw of that sample)")  # fmt: skip
    print(f"  BDMC gap        {s['bdmc_gap']:.3f} +- {s['bdmc_gap_stderr']:.3f} nats (upper - lower: bounds the error of "
          f"AIS with these settings on data like the model's own; more --steps close it)")  # fmt: skip
    _print_hmc(s)
    return 0


def _warn_heavy_tails(summary: dict, proposal: str) -> None:
    """One warning line when too many examples have Pareto k-hat > 0.7: for them the importance
    weights have no finite variance, so the estimate and its standard error cannot be trusted."""
    from ..evaluation.evaluate import KHAT_THRESHOLD, KHAT_WARN_FRACTION

    share = summary["khat_above_0_7"]
    if share > KHAT_WARN_FRACTION:  # False for nan (K too small to estimate k-hat)
        better = "--proposal posterior" if proposal == "prior" else "train with a richer --posterior"
        logging.getLogger("vaelab").warning(
            "Pareto k-hat > %s for %.1f%% of examples (mean k-hat %.2f): the log-likelihood estimate and "
            "its standard error are unreliable for them; use a larger --k or a better proposal (e.g. %s).",
            KHAT_THRESHOLD, 100 * share, summary["khat_mean"], better,
        )  # fmt: skip


def _evaluate_vqvae(args: argparse.Namespace, config: cfg.RunConfig, model, split) -> int:
    """``vaelab evaluate`` of a VQ-VAE: the bound log p(x|z_q(x)) + log p(z_q(x)), exact given x."""
    import torch

    from ..evaluation.evaluate import vq_summary

    summary = vq_summary(model, split.fixed())
    if split.dequantize:
        _add_discrete_bound(summary, split, "elbo")
    torch.manual_seed(args.seed)  # unused: the VQ bound has no sampling; kept for a uniform interface
    store_result(args.run, "evaluate", _evaluate_options(args), summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    s = summary
    print(f"{args.run}: {s['n_examples']} {args.split} examples of {config.data.data}, VQ-VAE with the {s['prior']} prior over codes")
    print("  log-likelihood  not estimated: q(z|x) is one-hot on the nearest codes, so importance sampling has nothing to sample")
    print(f"  ELBO            {s['elbo']:.3f} +- {s['elbo_stderr']:.3f} nats (log p(x|z_q) + log p(z_q), +- standard error over examples)")
    if split.dequantize:
        print(f"  discrete data   >= {s['discrete_log_likelihood_bound']:.3f} nats ({s['bits_per_dim']:.4f} bits/dim)")
    print(f"  reconstruction  {s['reconstruction']:.3f} nats")
    print(f"  KL (rate)       {s['kl']:.3f} nats (-log p(z_q))")
    print(f"  codebook        perplexity {s['codebook_perplexity']:.1f}, {s['codes_used']} of {model.codebook_size} codes used")
    return 0


def _evaluate_adversarial(args: argparse.Namespace, config: cfg.RunConfig, model, split) -> int:
    """What is defined for an adversarial model: its reconstruction error where it has an
    encoder, and a plain statement that there is no likelihood bound."""
    from ..evaluation.evaluate import reconstruction_error

    name = config.model.model
    note = (f"--model {name} defines no density p(x) (its generator is implicit), so there is no log-likelihood or "
            f"bound to report; judge its samples with: vaelab quality {args.run}")  # fmt: skip
    summary: dict[str, Any] = {"model": name, "log_likelihood": None, "bound": None, "note": note,
                               "n_examples": len(split)}  # fmt: skip
    from ..evaluation.sampling import can_reconstruct

    has_encoder = can_reconstruct(model)
    if has_encoder:
        summary["reconstruction_error"], summary["reconstruction_error_stderr"] = reconstruction_error(model, split.fixed())
    else:
        summary["reconstruction_error"] = summary["reconstruction_error_stderr"] = None
    store_result(args.run, "evaluate", _evaluate_options(args), summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.run}: {len(split)} {args.split} examples of {config.data.data}, --model {name}")
    print(f"  no likelihood bound: {note}")
    if has_encoder:
        what = "G(F(x)), F the reconstructor" if name == "veegan" else "G(E(x))"
        print(f"  reconstruction error  {summary['reconstruction_error']:.3f} +- "
              f"{summary['reconstruction_error_stderr']:.3f} (||x - {what}||^2 summed over dimensions, mean over examples)")  # fmt: skip
    else:
        print(f"  reconstruction error  not defined: --model {name} has no encoder")
    return 0


def _add_discrete_bound(summary: dict, split, key: str) -> None:
    """For dequantized data, the bound on the discrete log-likelihood that the density ``key``
    gives, log P(k) >= E_u[log p((k + u) / L)] - D log L (Theis et al. 2016), and its bits/dim."""
    dims = math.prod(split.event_shape)
    bound = summary[key] - dims * math.log(split.levels)
    summary["discrete_log_likelihood_bound"] = bound
    summary["bits_per_dim"] = -bound / (dims * math.log(2))


def _describe_objective(config: cfg.RunConfig) -> str:
    """The training objective with its options, as in the papers: iwae(k=50), miwae(m=8, k=8)."""
    import inspect

    from ..inference.objectives import OBJECTIVES, objective_options

    t = config.train
    accepted = objective_options(t.objective)
    beta = t.beta if t.beta is not None else inspect.signature(OBJECTIVES[t.objective]).parameters.get("beta")
    beta = getattr(beta, "default", beta)  # the objective's own default when --beta was not given
    parts = [f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
             for name, value in (("m", t.m), ("k", t.k), ("beta", beta)) if name in accepted and value is not None]  # fmt: skip
    if t.grad_estimator != "reparam":
        parts.append(t.grad_estimator)
    return f"{t.objective}({', '.join(parts)})"


def _what_is_scored(config: cfg.RunConfig, split) -> str:
    """Says what the log-likelihood is a likelihood of, so no number is mistaken for another."""
    if config.data.binarize != "none":
        return f"binarized ({config.data.binarize})"
    if split.dequantize:
        return f"density of dequantized grey levels ((k + u) / {split.levels})"
    if config.model.likelihood == "bernoulli":
        return "binary data"
    if split.levels:
        return "density of the grey levels as given (use --dequantize for a bound on discrete pixels)"
    return "density of the values as given"
