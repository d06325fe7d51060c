"""vaelab: variational autoencoders, built, trained, measured honestly and looked inside.

The public API:

    x = vaelab.load_dataset("digits", split="test", binarize="threshold")
    model = vaelab.load("runs/demo")                 # an nn.Module in eval mode
    model = vaelab.load("runs/mine", nets={"mynets:small": small})  # a run of your own networks
    model = vaelab.load("runs/demo", device="auto")  # on CUDA, then MPS, then the CPU (resolve_device)
    q = model.encode(x); p = model.decode(q.rsample())  # torch.distributions objects
    ll = vaelab.log_likelihood(model, x, k=5000)     # importance-sampled log p(x) +- stderr
    ll = vaelab.ais(model, x, steps=1000, chains=16) # annealed importance sampling (HMC)
    bound = vaelab.elbo(model, x)                    # per-example ELBO and its parts
    s = vaelab.score(model, x, "iwae:50")            # per-example scores to take away (vaelab score)
    codes = vaelab.encode_codes(model, x)            # posterior means and scales (vaelab encode)
    vaelab.write_report("runs/demo")                 # runs/demo/report.html (vaelab report)
"""

__version__ = "0.3.0"

import logging as _logging

# Library warnings (e.g. posterior collapse) go to the "vaelab" logger; the CLI shows them, and a
# Python caller sees them once it configures logging (the standard NullHandler convention).
_logging.getLogger("vaelab").addHandler(_logging.NullHandler())

from .data import load_dataset, load_split
from .devices import resolve_device
from .errors import NotFoundError, UntrustedCodeError, VaelabError
from .diagnostics import gradient_snr, mutual_information, posterior_summary, snr_sweep
from .estimators import GRAD_ESTIMATORS, effective_sample_size, log_weights
from .evaluate import active_units, evaluate, log_likelihood
from .ais import ais, bdmc, reverse_ais
from .local import fit_local, gaps
from .models import VAE, GaussianMixture, LinearGaussian, build_model
from .posteriors import POSTERIORS, build_posterior
from .priors import PRIORS, build_prior
from .objectives import OBJECTIVES, ciwae, elbo, get_objective, iwae, miwae, piwae
from .runs import load
from .train import Trainer
from .scores import auroc, decode_means, encode_codes, score
from .report import interpolate, traverse
from .report_html import write_report
from .compare import compare_runs

__all__ = [
    "GRAD_ESTIMATORS",
    "OBJECTIVES",
    "POSTERIORS",
    "PRIORS",
    "GaussianMixture",
    "build_posterior",
    "build_prior",
    "fit_local",
    "gaps",
    "ciwae",
    "effective_sample_size",
    "get_objective",
    "gradient_snr",
    "iwae",
    "miwae",
    "mutual_information",
    "piwae",
    "posterior_summary",
    "snr_sweep",
    "VAE",
    "LinearGaussian",
    "Trainer",
    "NotFoundError",
    "UntrustedCodeError",
    "VaelabError",
    "active_units",
    "ais",
    "auroc",
    "compare_runs",
    "decode_means",
    "encode_codes",
    "interpolate",
    "score",
    "traverse",
    "write_report",
    "bdmc",
    "build_model",
    "elbo",
    "evaluate",
    "load",
    "load_dataset",
    "load_split",
    "log_likelihood",
    "log_weights",
    "resolve_device",
    "reverse_ais",
]
