"""vaelab: variational autoencoders, built, trained, measured honestly and looked inside.

The public API:

    x = vaelab.load_dataset("digits", split="test", binarize="threshold")
    model = vaelab.load("runs/demo")                 # an nn.Module in eval mode
    q = model.encode(x); p = model.decode(q.rsample())  # torch.distributions objects
    ll = vaelab.log_likelihood(model, x, k=5000)     # importance-sampled log p(x) +- stderr
    bound = vaelab.elbo(model, x)                    # per-example ELBO and its parts
"""

__version__ = "0.1.0"

from .data import load_dataset, load_split
from .errors import VaelabError
from .estimators import log_weights
from .evaluate import active_units, evaluate, log_likelihood
from .models import VAE, LinearGaussian, build_model
from .objectives import OBJECTIVES, elbo
from .runs import load
from .train import Trainer

__all__ = [
    "OBJECTIVES",
    "VAE",
    "LinearGaussian",
    "Trainer",
    "VaelabError",
    "active_units",
    "build_model",
    "elbo",
    "evaluate",
    "load",
    "load_dataset",
    "load_split",
    "log_likelihood",
    "log_weights",
]
