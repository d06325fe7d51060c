"""The vector-quantised VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning").

The encoder maps an image to a grid of vectors z_e(x) (code_dim x h x w, h = H/4, w = W/4); each
position is replaced by its nearest codebook vector, z_q(x) = e_i with i = argmin_j ||z_e - e_j||,
and the decoder maps the grid of code vectors to p(x|z_q). The posterior q(z|x) is one-hot on
the nearest codes, so with a prior p(z) over code grids

    log p(x) >= log p(x | z_q(x)) + log p(z_q(x))

(the entropy of q is 0). Before a prior is learned the uniform prior gives the rate h w log K;
``vaelab prior RUN`` fits a gated PixelCNN over the code grids of the training data
(``pixelcnn.GatedPixelCNN``), which samples need and which tightens the bound.

Training (``objectives.vq``) maximizes log p(x|z_q) - ||sg[z_e] - e||^2 - beta ||z_e - sg[e]||^2,
with the straight-through gradient from z_q to z_e. With ``codebook_update="ema"`` the codebook
follows exponential moving averages of the encoder outputs assigned to each code (the paper's
appendix A.1, with Laplace-smoothed counts) instead of the codebook loss. Codes unused for
``dead_code_restart`` training steps are re-initialised from random encoder outputs of the
batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..core.errors import ConfigError, RunError
from ..distributions.observation import Observation, build_observation, full_precision
from ..nets.backbones import resnet_decoder_grid, resnet_encoder_grid
from .registry import MODELS

CODEBOOK_UPDATES = ("loss", "ema")


class Quantized(NamedTuple):
    """What the quantizer returns for a grid z_e (B, D, h, w)."""

    z_q: Tensor  # (B, D, h, w): the nearest codes, with the straight-through gradient to z_e
    codes: Tensor  # (B, h, w) int64: their indices
    codebook_loss: Tensor  # (B,) sum over positions of ||sg[z_e] - e||^2
    commitment_loss: Tensor  # (B,) sum over positions of ||z_e - sg[e]||^2 (before the weight beta)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantization against a codebook of K vectors of dimension D.

    Args:
        codebook_size: K.
        code_dim: D.
        update: "loss" (the codebook is a parameter trained by the codebook loss) or "ema" (a
            buffer following moving averages; the codebook loss is then not part of the objective).
        decay: the moving averages' decay (EMA).
        dead_code_restart: re-initialise codes unused for this many training steps (0: never).
        eps: Laplace smoothing of the EMA counts.
    """

    def __init__(self, codebook_size: int, code_dim: int, *, update: str = "loss", decay: float = 0.99,
                 dead_code_restart: int = 0, eps: float = 1e-5) -> None:  # fmt: skip
        super().__init__()
        if update not in CODEBOOK_UPDATES:
            raise ConfigError(f"unknown codebook update {update!r}; choose one of: {', '.join(CODEBOOK_UPDATES)}")
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.update, self.decay, self.dead_code_restart, self.eps = update, decay, dead_code_restart, eps
        init = torch.empty(codebook_size, code_dim).uniform_(-1 / codebook_size, 1 / codebook_size)
        if update == "loss":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            # each code starts as if its initial vector had been assigned to it once, so the
            # averages' ratio is the initial codebook until data moves it (no zero-count codes)
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", init.clone())
        # training steps since each code was last chosen (for dead-code restarts)
        self.register_buffer("idle_steps", torch.zeros(codebook_size, dtype=torch.long))
        # the codebook is set from encoder outputs of the first training batch (below)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code for each row of ``flat`` (N, D) -> (N,)."""
        e = self.codebook
        # ||z||^2 is the same for every code and does not change the argmin
        distance = e.square().sum(-1) - 2 * flat @ e.T  # (N, K)
        return distance.argmin(-1)

    def lookup(self, codes: Tensor) -> Tensor:
        """Code vectors of an index grid (B, h, w) -> (B, D, h, w)."""
        return self.codebook[codes].permute(0, 3, 1, 2)

    def forward(self, z_e: Tensor) -> Quantized:
        z_e = full_precision(z_e)  # distances to the codebook in fp32 under mixed precision
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (B h w, D)
        if self.training and not self.initialized:
            # Codes drawn from the first batch's encoder outputs: a codebook initialised near the
            # origin, far from every z_e, sends all positions to one code and the others never
            # move (the codebook collapse the paper's small uniform initialisation invites).
            with torch.no_grad():
                self._reset(torch.arange(self.codebook_size, device=flat.device), flat.detach())
                self.initialized.fill_(True)
        codes = self.nearest(flat.detach())
        e = self.codebook[codes].view(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w), a copy
        if self.training:  # after the lookup: this batch is quantized with the codebook it was assigned by
            self._learn(flat.detach(), codes)
        codebook_loss = (z_e.detach() - e).square().sum((1, 2, 3))
        commitment_loss = (z_e - e.detach()).square().sum((1, 2, 3))
        z_q = z_e + (e - z_e).detach()  # straight-through: forward e, gradient identity to z_e
        return Quantized(z_q, codes.view(b, h, w), codebook_loss, commitment_loss)

    @torch.no_grad()
    def _learn(self, flat: Tensor, codes: Tensor) -> None:
        """The training-time updates: EMA codebook and dead-code restarts (none with the codebook
        loss and no restarts: the training step then pays nothing here)."""
        if self.update == "loss" and self.dead_code_restart == 0:
            return
        counts = torch.bincount(codes, minlength=self.codebook_size).to(flat.dtype)  # (K,)
        if self.update == "ema":
            sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, flat)  # (K, D)
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(-1))
        if self.dead_code_restart > 0:
            self.idle_steps.add_(1).masked_fill_(counts > 0, 0)
            dead = (self.idle_steps >= self.dead_code_restart).nonzero().squeeze(-1)
            if dead.numel() > 0:
                self._reset(dead, flat)

    def _reset(self, which: Tensor, flat: Tensor) -> None:
        """Sets codes ``which`` to random rows of ``flat`` (encoder outputs of the batch), drawn
        without replacement where the batch has enough rows: two codes set from one row would
        stay equal, and the one of higher index would never be chosen (argmin takes the first)."""
        n, wanted = flat.shape[0], which.numel()
        if n >= wanted:
            picks = torch.randperm(n, device=flat.device)[:wanted]
        else:  # fewer rows than codes: every row once, the rest drawn again
            picks = torch.cat([torch.randperm(n, device=flat.device),
                               torch.randint(n, (wanted - n,), device=flat.device)])  # fmt: skip
        fresh = flat[picks].to(self.codebook.dtype)
        self.codebook.data[which] = fresh
        if self.update == "ema":
            # the moving averages restart at the new vector with a count of one
            self.ema_count[which] = 1.0
            self.ema_sum[which] = fresh
        self.idle_steps[which] = 0


class VQVAE(nn.Module):
    """A VQ-VAE: encoder to a grid, vector quantizer, decoder from the grid, observation model.

    Args:
        encoder: (B, *event) -> (B, code_dim, h, w).
        decoder: (B, code_dim, h, w) -> (B, params_per_dim * C, H, W).
        quantizer: the codebook.
        observation: turns decoder outputs (B, params_per_dim, C, H, W) into p(x|z).
        event_shape: (C, H, W).
        commitment: beta, the commitment loss's weight.
    """

    # what it declares to the Trainer and the figures
    trains_across_processes = False  # the codebook is initialised and updated from each batch
    samples_description = "mean of p(x|z), code grids z from the learned prior"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, quantizer: VectorQuantizer,
                 observation: Observation, event_shape: tuple[int, int, int], commitment: float = 0.25) -> None:  # fmt: skip
        super().__init__()
        self.encoder, self.decoder, self.quantizer, self.observation = encoder, decoder, quantizer, observation
        self.event_shape = tuple(event_shape)
        self.grid_shape = (event_shape[1] // 4, event_shape[2] // 4)
        self.commitment = commitment
        # The learned prior over code grids lives in RUN/prior/, trained after the VQ-VAE: kept
        # out of the module tree so model.safetensors holds the VQ-VAE alone.
        self.__dict__["code_prior"] = None

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def set_code_prior(self, prior: nn.Module | None) -> None:
        """Attaches a learned prior over code grids (``pixelcnn.GatedPixelCNN``), or removes it."""
        self.__dict__["code_prior"] = prior

    def quantize(self, x: Tensor) -> Quantized:
        """Encodes x (B, *event) and quantizes the grid."""
        return self.quantizer(self.encoder(x))

    def codes(self, x: Tensor) -> Tensor:
        """The code grid z_q(x) as indices (B, h, w)."""
        return self.quantize(x).codes

    def decode_grid(self, z_q: Tensor) -> Distribution:
        """p(x | z_q) for a grid of code vectors (B, D, h, w)."""
        out = self.decoder(z_q)  # (B, params * C, H, W)
        return self.observation(out.view(out.shape[0], self.observation.params_per_dim, *self.event_shape))

    def decode_codes(self, codes: Tensor) -> Distribution:
        """p(x | z) for index grids (B, h, w)."""
        return self.decode_grid(self.quantizer.lookup(codes))

    def reconstruct(self, x: Tensor) -> Tensor:
        """The mean of p(x | z_q(x)): x (B, *event) through its nearest codes."""
        return self.decode_grid(self.quantize(x).z_q).mean

    def log_prior(self, codes: Tensor) -> Tensor:
        """log p(z) of index grids (B, h, w) -> (B,): the learned prior's, or the uniform rate
        -h w log K without one."""
        if self.code_prior is not None:
            return self.code_prior.log_prob(codes)
        h, w = codes.shape[-2:]
        return codes.new_full((codes.shape[0],), -h * w * math.log(self.codebook_size), dtype=self.quantizer.codebook.dtype)

    def sample_images(self, n: int, *, sample_pixels: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """n images from the learned prior: code grids drawn ancestrally, decoded to the mean of
        p(x|z) (or a draw from it with ``sample_pixels``)."""
        if self.code_prior is None:
            raise RunError("this VQ-VAE has no learned prior to sample from; train one with: vaelab prior RUN")
        codes = self.code_prior.sample(n, self.grid_shape, generator=generator)
        p = self.decode_codes(codes)
        return p.sample() if sample_pixels else p.mean

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Encoder (and the codebook, which the encoder's outputs move) against decoder."""
        decoder = {id(p) for p in (*self.decoder.parameters(), *self.observation.parameters())}
        return {"encoder": [p for p in self.parameters() if id(p) not in decoder],
                "decoder": [p for p in self.parameters() if id(p) in decoder]}  # fmt: skip


@MODELS.register("vqvae")
def build_vqvae(
    event_shape: tuple[int, ...],
    *,
    likelihood: str = "bernoulli",
    obs_precision: float = 100.0,
    net: str = "resnet",
    resnet_channels: int = 64,
    res_blocks: int = 2,
    codebook_size: int = 512,
    code_dim: int = 64,
    commitment: float = 0.25,
    codebook_update: str = "loss",
    ema_decay: float = 0.99,
    dead_code_restart: int = 0,
) -> VQVAE:
    """Builds a VQ-VAE from the fields of ``config.ModelConfig`` (the VAE's posterior, prior,
    latent_dim and hidden fields do not apply; ``config`` refuses non-default values)."""
    check_vqvae(event_shape, net, codebook_size, code_dim, commitment, codebook_update, ema_decay, dead_code_restart)
    observation = build_observation(likelihood, len(event_shape), obs_precision=obs_precision)
    c = event_shape[0]
    encoder = resnet_encoder_grid(c, resnet_channels, res_blocks, code_dim)
    decoder = resnet_decoder_grid(code_dim, resnet_channels, res_blocks, observation.params_per_dim * c)
    quantizer = VectorQuantizer(codebook_size, code_dim, update=codebook_update, decay=ema_decay,
                                dead_code_restart=dead_code_restart)  # fmt: skip
    return VQVAE(encoder, decoder, quantizer, observation, tuple(event_shape), commitment)


def check_vqvae(event_shape: tuple[int, ...] | None, net: str, codebook_size: int, code_dim: int, commitment: float,
                codebook_update: str, ema_decay: float, dead_code_restart: int) -> None:  # fmt: skip
    """Refuses VQ-VAE settings that cannot work (ConfigError)."""
    if net != "resnet":
        raise ConfigError(f"model= vqvae quantizes a grid of feature vectors and needs net= resnet, got net= {net}")
    if event_shape is not None and (len(event_shape) != 3 or event_shape[1] % 4 or event_shape[2] % 4):
        raise ConfigError(
            f"model= vqvae needs images whose height and width are multiples of 4 (e.g. 1x28x28, "
            f"3x32x32), got data of shape {tuple(event_shape)}"
        )
    if codebook_size < 2 or code_dim < 1:
        raise ConfigError(f"codebook_size= must be at least 2 and code_dim= at least 1, got {codebook_size} and {code_dim}")
    if not (commitment >= 0 and math.isfinite(commitment)):
        raise ConfigError(f"commitment= must be a non-negative number, got {commitment}")
    if codebook_update not in CODEBOOK_UPDATES:
        raise ConfigError(f"unknown codebook_update= {codebook_update!r}; choose one of: {', '.join(CODEBOOK_UPDATES)}")
    if not 0 < ema_decay < 1:
        raise ConfigError(f"ema_decay= must be in (0, 1), got {ema_decay}")
    if dead_code_restart < 0:
        raise ConfigError(f"dead_code_restart= must be 0 (off) or a number of steps, got {dead_code_restart}")


def codebook_usage(codes: Tensor, codebook_size: int) -> dict[str, float]:
    """``codebook_perplexity`` exp(H(p)) of the codes' empirical distribution p (K when all codes
    are used equally, 1 when one code is used) and ``codes_used``, the number of distinct codes."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p * p.clamp_min(1e-300).log()).sum()
    return {"codebook_perplexity": entropy.exp().item(), "codes_used": int((counts > 0).sum())}
