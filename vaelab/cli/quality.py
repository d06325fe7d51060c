"""`vaelab quality`: sample quality of a run, or of samples from any generator."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..core.errors import VaelabError
from .common import GMM_EXAMPLES, add_device_flag, add_trust_flag, positive, sampler_choice, stage2_sampler


def add_quality_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab quality` and its flags."""
    p = subparsers.add_parser("quality", help="sample quality: Frechet distance, precision/recall, density/coverage, classifier score",
                              description="Scores samples against the dataset's first N test images in the features of a "
                              "small classifier trained on its labelled training images (on first use, then cached): "
                              "Frechet distance (Heusel et al. 2017), precision and recall (Kynkaanniemi et al. 2019), "
                              "density and coverage (Naeem et al. 2020), classifier score (Salimans et al. 2016), beside "
                              "the same metrics for N real training images (the reference a perfect model would reach). "
                              "On the mode-collapse datasets (Srivastava et al. 2017), mode metrics instead: ring8 and "
                              "grid25, modes captured and the share of high-quality samples; stacked-fashion-mnist, modes "
                              "hit of 1000 and the KL divergence of their histogram from uniform. "
                              "Either RUN (its own samples) or --data NAME --samples FILE.npy (samples from any generator).")  # fmt: skip
    p.add_argument("run", metavar="RUN", nargs="?", help="a run directory whose model draws the samples")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("--n", type=int, help="RUN: samples drawn, compared with the first N test images (default: 2500 "
                   "for ring8 and grid25, 10000 otherwise)")  # fmt: skip
    p.add_argument("--sampler", type=sampler_choice, metavar="prior|gmm|stage2:RUN2",
                   help="RUN: z from the prior, from a Gaussian mixture fitted to the encoder means of the "
                   "training data (Ghosh et al. 2020), or from the second VAE RUN2 trained on RUN's codes "
                   "(Dai & Wipf 2019) (default: prior)")  # fmt: skip
    p.add_argument("--components", type=int, help="RUN: mixture components for --sampler gmm (default: 10)")
    p.add_argument("--sample-pixels", action="store_true", default=None,
                   help="RUN: score draws x ~ p(x|z) instead of the decoder means")  # fmt: skip
    p.add_argument("--seed", type=int, help="RUN: seed of the samples (default: 0)")
    p.add_argument("--data", metavar="NAME", help="the dataset that --samples are compared with (digits, "
                   "fashion-mnist, mnist, a .npz with x_train, y_train, x_test, y_test, or one of the mode-collapse "
                   "datasets ring8, grid25, stacked-fashion-mnist)")  # fmt: skip
    p.add_argument("--samples", metavar="FILE.npy", help="with --data: an N x C x H x W (or N x H x W) float array "
                   "in [0, 1] (N x 2 floats for ring8 and grid25), from any generator")  # fmt: skip
    p.add_argument("--data-dir", metavar="DIR", help="the folder that holds the IDX files (in it, or in its subfolder "
                   "named after the dataset), the only place looked in (default for a RUN: its own)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_quality(args: argparse.Namespace) -> int:
    from ..core.errors import DataError
    from ..evaluation.quality import QualityScorer, get_scorer, read_samples

    progress = not args.json
    if args.run is not None and args.data is not None:
        raise VaelabError("give RUN (to score its samples) or --data NAME --samples FILE.npy, not both")
    if args.run is None:
        if args.data is None:
            if args.samples is not None:
                raise VaelabError("--samples needs --data NAME, the dataset the samples are compared with")
            raise VaelabError("give a RUN directory, or --data NAME --samples FILE.npy")
        if args.samples is None:
            raise VaelabError("--data needs --samples FILE.npy, the samples to score (or give a RUN instead)")
        run_only = {"--n": args.n, "--sampler": args.sampler, "--components": args.components,
                    "--sample-pixels": args.sample_pixels, "--seed": args.seed}  # fmt: skip
        given = [flag for flag, value in run_only.items() if value is not None]
        if given:
            raise VaelabError(f"{given[0]} applies to a RUN's own samples; with --samples every row of the file is scored")
        scorer = get_scorer(args.data, data_dir=args.data_dir, device=args.device, progress=progress)
        samples = scorer.check(read_samples(args.samples))
        what = f"{len(samples)} samples from {args.samples}"
    else:
        from ..evaluation.sampling import sample_images
        from ..runs.rundir import load, load_data, read_config

        if args.samples is not None:
            raise VaelabError("--samples is scored with --data NAME; a RUN draws its own samples: drop --samples")
        sampler = args.sampler or "prior"
        components = 10 if args.components is None else args.components
        positive("--components", components)
        config, event_shape = read_config(args.run)
        name = config.data.data
        if name.lower().endswith(".npy"):
            raise DataError(f"{args.run} was trained on {name}, a .npy file without labels; quality trains its feature "
                            "classifier on labelled images (digits, fashion-mnist, mnist, or a .npz with x_train, "
                            "y_train, x_test, y_test)")  # fmt: skip
        scorer = get_scorer(name, data_dir=args.data_dir or config.data.data_dir, device=args.device, progress=progress)
        if tuple(event_shape) != scorer.event_shape:
            raise DataError(f"{args.run} models data of shape {list(event_shape)}, but {name} now holds examples of "
                            f"shape {list(scorer.event_shape)}")  # fmt: skip
        n = scorer.DEFAULT_N if args.n is None else args.n
        scorer.check_n(n)
        model = load(args.run, trust_code=args.trust_code, device=args.device)
        own = hasattr(model, "sample_images")
        train_x = load_data(config, "train", limit=GMM_EXAMPLES).fixed() if sampler == "gmm" and not own else None
        stage2 = None
        if sampler.startswith("stage2:"):
            stage2 = stage2_sampler(sampler, config, args.run, model, args.trust_code).stage2
            sampler, run2 = "stage2", sampler[len("stage2:"):]
        samples = sample_images(model, n, sampler=sampler, components=components, sample_pixels=bool(args.sample_pixels),
                                seed=args.seed or 0, train_x=train_x, stage2=stage2)  # fmt: skip
        pixels = "draws from p(x|z)" if args.sample_pixels else "means of p(x|z)"
        latent = ("codes from the learned prior" if own else "z ~ p(z)" if sampler == "prior"
                  else f"z from the stage-2 VAE {run2}" if sampler == "stage2"
                  else f"z from a GMM({components}) of encoder means")  # fmt: skip
        what = f"{n} samples of {args.run} ({pixels}, {latent})"
    result = scorer.score(samples)
    if args.json:
        print(json.dumps(result))
        return 0
    if not isinstance(scorer, QualityScorer):
        _print_mode_table(scorer, result, what)
        return 0
    c = scorer.classifier
    how = f"trained now in {c.seconds:.0f} s" if c.trained else "from the cache"
    print(f"{what} against the first {result['n_samples']} test images of {result['dataset']}")
    print(f"feature classifier: test accuracy {c.accuracy:.4f} ({how}: {c.path})")
    print(f"  {'':<18}{'samples':>10}{'reference':>12}")
    better = {"fd": "lower is better", "precision": "fidelity", "recall": "diversity", "density": "fidelity, ~1 for real data",
              "coverage": "diversity", "classifier_score": f"1 to {int(scorer.train.y.max()) + 1}, higher is better"}  # fmt: skip
    for key, note in better.items():
        print(f"  {key.replace('_', ' '):<18}{result[key]:>10.4f}{result['reference'][key]:>12.4f}   {note}")
    print(f"reference: {result['n_samples']} real training images in place of the samples, what a model drawing "
          "from the data distribution would score")  # fmt: skip
    return 0


def _print_mode_table(scorer: Any, result: dict[str, Any], what: str) -> None:
    """The mode metrics of `vaelab quality` on ring8, grid25 or stacked-fashion-mnist, as a table."""
    n, total = result["n_samples"], result["num_modes"]
    if "min_samples_per_mode" in result:
        print(f"{what} on {result['dataset']}: {total} Gaussians of standard deviation {scorer.sd:g}")
        notes = {"modes": f"of {total}: with at least {result['min_samples_per_mode']} samples within 3 sd of the centre",
                 "high_quality": "share of samples within 3 sd of a centre"}  # fmt: skip
    else:
        c = scorer.classifier  # None when a caller gave the scorer its own predict
        print(f"{what} on {result['dataset']}: each channel classified, {total} class triples")
        if c is not None:
            how = f"trained now in {c.seconds:.0f} s" if c.trained else "from the cache"
            print(f"feature classifier: fashion-mnist test accuracy {c.accuracy:.4f} ({how}: {c.path})")
        notes = {"modes": f"of {total} class triples hit", "mode_kl": "KL(mode histogram || uniform), nats, 0 is best"}
    print(f"  {'':<18}{'samples':>10}{'reference':>12}")
    for key, note in notes.items():
        cell = (lambda v: f"{v:>10d}") if isinstance(result[key], int) else (lambda v: f"{v:>10.4f}")
        print(f"  {key.replace('_', ' '):<18}{cell(result[key])}{cell(result['reference'][key]):>12}   {note}")
    print(f"reference: the first {n} examples of the training file in place of the samples, what a model drawing "
          "from the data distribution would score")  # fmt: skip
