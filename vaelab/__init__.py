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

import logging as _logging

from .core.version import __version__  # noqa: F401

# Library warnings (e.g. posterior collapse) go to the "vaelab" logger; the CLI shows them, and a
# Python caller sees them once it configures logging (the standard NullHandler convention).
_logging.getLogger("vaelab").addHandler(_logging.NullHandler())

from .core.devices import resolve_device
from .core.errors import NotFoundError, UntrustedCodeError, VaelabError
from .data.load import load_dataset, load_split
from .distributions.posteriors import POSTERIORS, build_posterior
from .distributions.priors import PRIORS, build_prior
from .evaluation.ais import ais, bdmc, reverse_ais
from .evaluation.diagnostics import (
    gradient_snr,
    mutual_information,
    posterior_summary,
    snr_sweep,
)
from .evaluation.evaluate import active_units, evaluate, log_likelihood
from .evaluation.gaps import gaps
from .evaluation.scores import auroc, decode_means, encode_codes, score
from .inference.estimators import GRAD_ESTIMATORS, effective_sample_size, log_weights
from .inference.local import fit_local
from .inference.objectives import (
    OBJECTIVES,
    ciwae,
    elbo,
    get_objective,
    iwae,
    miwae,
    piwae,
)
from .models import VAE, GaussianMixture, LinearGaussian, build_model
from .report.compare import compare_runs
from .report.figures import interpolate, traverse
from .report.html import write_report
from .runs.rundir import load
from .runs.trainer import Trainer

# The modules of vaelab 0.3's flat layout, at their new floors. ``import vaelab.train``,
# ``from vaelab.local import gaps`` and the other old spellings keep working: each old name is an
# alias of the module that now holds it (or, where one module became two, a view of both).
_MOVED = {
    "errors": ("core.errors",), "registry": ("core.registry",), "files": ("core.files",),
    "devices": ("core.devices",), "sharding": ("core.sharding",), "imagefolder": ("data.imagefolder",),
    "pixelcnn": ("nets.pixelcnn",), "posteriors": ("distributions.posteriors",),
    "priors": ("distributions.priors",), "objectives": ("inference.objectives",),
    "estimators": ("inference.estimators",), "local": ("inference.local", "evaluation.gaps"),
    "schedules": ("inference.schedules",), "fused": ("models.fused",),
    "evaluate": ("evaluation.evaluate",), "ais": ("evaluation.ais",), "diagnostics": ("evaluation.diagnostics",),
    "scores": ("evaluation.scores",), "quality": ("evaluation.quality",), "sampling": ("evaluation.sampling",),
    "config": ("runs.config",), "train": ("runs.trainer", "runs.lifecycle"),
    "codeprior": ("runs.codeprior", "runs.prior_files"), "distributed": ("core.distributed",),
    "speed": ("runs.speed",), "tensorboard": ("runs.tensorboard",), "results": ("runs.results",),
    "report_html": ("report.html",), "compare": ("report.compare",),
}


def _install_moved() -> None:
    import importlib
    import sys
    import types

    package = sys.modules[__name__]
    for old, homes in _MOVED.items():
        modules = [importlib.import_module(f"{__name__}.{home}") for home in homes]
        if len(modules) == 1:
            alias = modules[0]
        else:
            alias = types.ModuleType(f"{__name__}.{old}", f"vaelab.{old}: now {' and '.join(m.__name__ for m in modules)}")

            def lookup(name: str, _modules=tuple(modules), _old=old):
                for module in _modules:
                    if hasattr(module, name):
                        return getattr(module, name)
                raise AttributeError(f"module 'vaelab.{_old}' has no attribute {name!r}")

            alias.__getattr__ = lookup  # PEP 562
        sys.modules.setdefault(f"{__name__}.{old}", alias)
        if not hasattr(package, old):  # vaelab.ais and vaelab.evaluate stay the functions
            setattr(package, old, alias)


_install_moved()

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
