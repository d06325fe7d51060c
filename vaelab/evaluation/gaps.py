"""The inference gaps of Cremer et al. 2018: approximation and amortization gaps from the
per-example fit (``fit_local``), IS and AIS estimates of log p(x)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..core.devices import module_device
from ..core.errors import ConfigError
from ..distributions.posteriors import DiagonalGaussianPosterior, Posterior
from ..inference.local import fit_local
from .ais import ais, summarize_ais
from .evaluate import log_likelihood

GAP_METHODS = ("is", "ais")  # estimators of log p(x) in ``gaps``


def gaps(
    model: nn.Module,
    x: Tensor,
    *,
    k: int = 5000,
    steps: int = 2000,
    lr: float = 0.01,
    samples: int = 10,
    progress: bool = False,
    method: str = "is",
    ais_options: Mapping[str, Any] | None = None,
) -> dict:
    """The inference gaps of Cremer et al. (2018) on examples x, means in nats:

    - ``log_likelihood``: log p(x), importance sampling with K=k from the encoder's q
      (``method="is"``), or annealed importance sampling (``method="ais"``, ``ais.ais`` with
      ``ais_options`` such as steps, chains, leapfrog, start), as Cremer et al. do; with AIS
      the output adds ``acceptance_rate`` and ``log_likelihood_is`` (the K=k importance-sampling
      estimate, a by-product of the amortized ELBO);
    - ``local_elbo``: L[q*], the best bound within the encoder's posterior family, each example's
      parameters optimized from the encoder's output (``fit_local``, ``steps`` Adam steps,
      ``samples`` particles per step, the bound estimated from k particles);
    - ``amortized_elbo``: L[q], the encoder's own bound (from the same K particles as log p);
    - ``approximation_gap`` = log p - L[q*], ``amortization_gap`` = L[q*] - L[q].

    For a posterior other than the diagonal Gaussian (flows, full covariance), also
    ``local_elbo_gaussian``: L[q*] of the diagonal Gaussian family under the same decoder, fitted
    from the Gaussian with the mean and variances of 256 draws from the encoder's q (Cremer et
    al.'s L[q*_FFG] row), so the two families' approximation gaps can be
    compared on one model.
    """

    x = x.to(module_device(model))

    if method not in GAP_METHODS:
        raise ConfigError(f"unknown log-likelihood method {method!r}; choose one of: {', '.join(GAP_METHODS)}")
    if ais_options and method != "ais":
        raise ConfigError("ais_options are used only with method='ais'")
    if getattr(model, "encoder", 0) is None:
        raise ConfigError(
            "this model has no encoder (trained with inference= local), so it has no amortized q "
            "and no amortization gap; gaps needs a run with an encoder"
        )
    # AIS first: an option it refuses (e.g. a planar flow as its start) fails before the long fits
    annealed = summarize_ais(ais(model, x, progress=progress, **(ais_options or {}))) if method == "ais" else None
    ll = log_likelihood(model, x, k, progress=progress)
    local = fit_local(model, x, steps=steps, lr=lr, k=samples, init="encoder", eval_samples=k, progress=progress)
    log_p, local_elbo, amortized = ll.log_likelihood.mean().item(), local.elbo.mean().item(), ll.elbo.mean().item()
    log_p_se = (ll.stderr.square().sum().sqrt() / x.shape[0]).item()
    extra = {}
    if annealed is not None:
        extra = {"log_likelihood_is": log_p, "acceptance_rate": annealed["acceptance_rate"]}
        log_p, log_p_se = annealed["log_likelihood"], annealed["log_likelihood_stderr"]
    family = getattr(model, "posterior", None)
    out = {
        "log_likelihood": log_p,
        "local_elbo": local_elbo,
        "amortized_elbo": amortized,
        "approximation_gap": log_p - local_elbo,
        "amortization_gap": local_elbo - amortized,
        "n_examples": int(x.shape[0]),
        "posterior": family_name(model),
        "log_likelihood_stderr": log_p_se,
        **extra,
    }
    if isinstance(family, Posterior) and not isinstance(family, DiagonalGaussianPosterior):
        with torch.no_grad():  # start from the diagonal Gaussian matching the encoder's moments
            z = model.encode(x).rsample((256,))  # (256, B, D)
            start = torch.cat([z.mean(0), z.var(0).log()], dim=-1)
        diagonal = _DiagonalView(model)
        fit = fit_local(diagonal, x, steps=steps, lr=lr, k=samples, init=start, eval_samples=k, progress=progress)
        out["local_elbo_gaussian"] = fit.elbo.mean().item()
    return out


def family_name(model: nn.Module) -> str:
    """A readable name of the model's posterior family."""
    family = getattr(model, "posterior", None)
    names = {"DiagonalGaussianPosterior": "diagonal Gaussian", "FullGaussianPosterior": "full-covariance Gaussian",
             "PlanarPosterior": "planar flow", "IAFPosterior": "inverse autoregressive flow"}  # fmt: skip
    if family is None or not isinstance(family, Posterior):
        return "diagonal Gaussian"
    name = names.get(type(family).__name__, type(family).__name__)
    flows = getattr(family, "flows", None)
    return f"{name} ({flows} steps)" if flows else name


class _DiagonalView(nn.Module):
    """The same decoder and prior, with the diagonal Gaussian as posterior family."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.posterior = DiagonalGaussianPosterior(model.latent_dim)

    def prior(self):
        return self.model.prior()

    def decode(self, z: Tensor):
        return self.model.decode(z)
