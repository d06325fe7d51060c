"""Images from a trained model, for figures and for scoring their quality.

Two latent samplers for a VAE: the prior p(z), or a Gaussian mixture fitted to the encoder means
of the training data ("ex-post density estimation", Ghosh et al. 2020, "From variational to
deterministic autoencoders"), which fills the holes between the aggregate posterior and the prior.
A third, ``stage2``, draws z from a second VAE trained on the first one's codes (the two-stage VAE
of Dai & Wipf 2019, "Diagnosing and enhancing VAE models"): u ~ p2(u), z = the mean of p2(z|u).
A model with a latent of its own kind (a VQ-VAE with a learned prior over code grids) provides a
``sample_images(n, *, sample_pixels, generator)`` method, which is used instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.devices import fork_rng, module_device
from ..core.devices import generator as device_generator
from ..core.errors import ConfigError
from ..models import GaussianMixture

__all__ = ["SAMPLERS", "Stage2Sampler", "can_reconstruct", "fit_latent_gmm", "reconstruct", "sample_images"]

SAMPLERS = ("prior", "gmm", "stage2")
CHUNK = 1000  # images decoded at a time


def can_reconstruct(model: nn.Module) -> bool:
    """Whether ``reconstruct`` works for the model: it has an encoder (every model but the GAN)."""
    return hasattr(model, "reconstruct") or hasattr(model, "encode")


@torch.no_grad()
def reconstruct(model: nn.Module, x: Tensor) -> Tensor:
    """x^ for x: a model's own reconstruction where it has one (a VQ-VAE: the decoder at the
    nearest codes; an adversarial model with an encoder: G(E(x))), else the mean of p(x|z) at
    z = E_q[z|x]; x is moved to the model's device, where the result is."""
    x = x.to(module_device(model))
    own = getattr(model, "reconstruct", None)
    return own(x) if own is not None else model.decode(model.encode(x).mean).mean


@torch.no_grad()
def fit_latent_gmm(model: nn.Module, train_x: Tensor, components: int, *, seed: int = 0) -> GaussianMixture:
    """A Gaussian mixture fitted by EM to the encoder means E_q[z|x] of ``train_x``.

    Args:
        model: a VAE (``encode(x)`` returns q(z|x) with a ``mean``).
        train_x: training data ``(N, *event)``, as the model was trained on (e.g. binarized).
        components: mixture components K (at most N).
        seed: the k-means++ start of EM.

    Returns:
        the mixture, in float64 on the CPU (its ``sample(n, generator)`` draws ``(z, component)``).
    """
    device = module_device(model)
    means = torch.cat([model.encode(train_x[i : i + CHUNK].to(device)).mean.cpu() for i in range(0, len(train_x), CHUNK)])
    mixture, _ = GaussianMixture.fit(means, components, seed=seed, tol=1e-4, max_iter=100)
    return mixture


class Stage2Sampler:
    """Latent codes of a first VAE drawn from a second VAE trained on them (Dai & Wipf 2019):
    u ~ p2(u) from the second VAE's prior, z = the mean of its p2(z|u), as in their paper (the
    second stage's decoder, with a learned variance, is nearly deterministic at its optimum).

    Args:
        stage2: the second VAE, whose data are vectors of the first VAE's ``latent_dim``.
        latent_dim: the first VAE's latent size, checked against the second VAE's data size.
    """

    def __init__(self, stage2: nn.Module, latent_dim: int) -> None:
        parameter = next(stage2.parameters())
        with torch.no_grad():  # the shape of what the second VAE decodes, read off one code
            shape = tuple(stage2.decode(parameter.new_zeros(1, stage2.latent_dim)).mean.shape[1:])
        if shape != (latent_dim,):
            raise ConfigError(
                f"the stage-2 model draws data of shape {list(shape)}, but the first model's latent has "
                f"{latent_dim} dimensions; train the second VAE on the first one's codes (vaelab encode)"
            )
        self.stage2 = stage2

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor]:
        """(z,) with z (n, latent_dim) on the second model's device; the seed comes from
        ``generator`` (the second VAE's prior draws from the global stream, forked here)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else 0
        with fork_rng(module_device(self.stage2)):
            torch.manual_seed(seed)
            chunks = [self.stage2.decode(self.stage2.prior().sample((min(CHUNK, n - i),))).mean for i in range(0, n, CHUNK)]
        return (torch.cat(chunks),)


@torch.no_grad()
def sample_images(
    model: nn.Module,
    n: int,
    *,
    sampler: str = "prior",
    components: int = 10,
    sample_pixels: bool = False,
    seed: int = 0,
    train_x: Tensor | None = None,
    stage2: nn.Module | None = None,
) -> Tensor:
    """n samples from a trained model: images clamped to [0, 1], vector data as decoded.

    A model with a ``sample_images(n, *, sample_pixels, generator)`` method (a VQ-VAE with a
    learned prior) draws its own; otherwise z comes from ``model.prior()`` (``sampler="prior"``)
    or from a Gaussian mixture fitted to the encoder means of ``train_x`` (``sampler="gmm"``,
    Ghosh et al. 2020), or from the second VAE ``stage2`` (``sampler="stage2"``, Dai & Wipf 2019,
    ``Stage2Sampler``), and each image is the mean of p(x|z), or one draw from it with
    ``sample_pixels``. Decoded in chunks of 1000, without gradients. The same seed gives the same
    images; the caller's random state is left as it was.

    Args:
        model: a trained model, in eval mode.
        n: number of images (>= 1).
        sampler: "prior" or "gmm".
        components: mixture components for ``sampler="gmm"``.
        sample_pixels: draw x ~ p(x|z) instead of taking its mean.
        seed: seeds the latent draws, the mixture fit and the pixel draws.
        train_x: training data whose encoder means the mixture is fitted to (``sampler="gmm"``).
        stage2: the second VAE, trained on the model's codes (``sampler="stage2"``).

    Returns:
        ``(n, *event)`` tensor on the model's device. Images (an event of three dimensions,
        C x H x W) are clamped to [0, 1]: a Gaussian decoder's mean or draw can leave the unit
        interval, which grey levels cannot. Vector data (points ``(n, D)``, e.g. ``ring8``) is
        returned as it is: clamping would pull points in the plane onto the unit square.
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive number of images, got {n!r}")
    if isinstance(components, bool) or not isinstance(components, int) or components < 1:
        raise ConfigError(f"components must be a positive integer, got {components!r}")
    own = getattr(model, "sample_images", None)
    if own is not None and sampler in ("gmm", "stage2"):
        raise ConfigError(f"sampler={sampler!r} needs a VAE's continuous latent")
    if own is None and sampler == "stage2" and stage2 is None:
        raise ConfigError("sampler='stage2' draws z from a second VAE trained on the model's codes; pass stage2")
    if own is None and sampler == "gmm" and train_x is None:
        raise ConfigError("sampler='gmm' fits a mixture to the encoder means of training data; pass train_x")
    device = module_device(model)
    generator = device_generator(device, seed)
    chunks: list[Tensor] = []
    if own is not None:
        for start in range(0, n, CHUNK):
            chunks.append(own(min(CHUNK, n - start), sample_pixels=sample_pixels, generator=generator))
        return _clamp_images(torch.cat(chunks))
    mixture = fit_latent_gmm(model, train_x, components, seed=seed) if sampler == "gmm" else None
    if sampler == "stage2":
        mixture = Stage2Sampler(stage2, model.latent_dim)
    # prior().sample() and the decoder's .sample() take no generator: fork the global streams
    # (those of the model's device too), seed them, and put them back afterwards.
    with fork_rng(device):
        torch.manual_seed(seed)
        cpu = torch.Generator().manual_seed(seed)
        for start in range(0, n, CHUNK):
            b = min(CHUNK, n - start)
            if mixture is None:
                z = model.prior().sample((b,))  # (b, latent)
            else:
                z = mixture.sample(b, generator=cpu)[0]  # the mixture: float64 on the CPU
                z = z.to(device=device, dtype=next(model.parameters()).dtype)
            p = model.decode(z)
            chunks.append(p.sample() if sample_pixels else p.mean)
    return _clamp_images(torch.cat(chunks))


def _clamp_images(x: Tensor) -> Tensor:
    """Clamps images ``(n, C, H, W)`` to [0, 1] in place; leaves any other shape as it is."""
    return x.clamp_(0.0, 1.0) if x.ndim == 4 else x
