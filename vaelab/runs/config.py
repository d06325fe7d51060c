"""Typed, validated run configuration: one frozen dataclass per component.

A run is configured from defaults, then an optional TOML file (sections ``[data]``, ``[model]``,
``[train]``), then command-line flags; the CLI builds its flags from the fields below (their
``help`` metadata is the flag's help text). The resolved configuration is written to
``runs/NAME/config.json`` and is enough to rebuild the model and its data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import data as _data
from ..core.errors import ConfigError
from ..distributions.observation import OBSERVATIONS
from ..distributions.posteriors import FLOWS, check_posterior
from ..distributions.priors import check_prior
from ..inference.estimators import GRAD_ESTIMATORS
from ..inference.objectives import KL_MODES, OBJECTIVES, objective_options, supported_estimators
from ..models import MODELS
from ..models.adversarial import ADVERSARIAL, ENCODERS, check_adversarial
from ..models.two_layer import check_layers
from ..models.vae import INFERENCE, check_combination
from ..models.vqvae import check_vqvae
from ..nets.backbones import ACTIVATIONS, check_net

PRECISIONS = ("32", "bf16-mixed", "16-mixed")  # training arithmetic: fp32, or mixed with bf16 / fp16 autocast

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIG_VERSION = 1


def _help(text: str, **extra: Any) -> Any:
    return {"help": text, **extra}


def _changed(section: Any, names: Sequence[str]) -> list[str]:
    """The fields among ``names`` that differ from their defaults (options a user gave)."""
    defaults = {f.name: f.default for f in dataclasses.fields(section)}
    return [name for name in names if getattr(section, name) != defaults[name]]


def _flag(name: str) -> str:
    """An option as library messages name it, the Python argument (``latent_dim=``); the CLI
    shows it as its flag (``--latent-dim``)."""
    return f"{name}="


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how it is prepared."""

    data: str = field(default="digits", metadata=_help("dataset name (digits, fashion-mnist, mnist, stacked-fashion-mnist, ring8, grid25), a .npy/.npz path, or a folder of PNG/JPEG images (subfolders: class labels); paths are stored absolute"))
    data_dir: str | None = field(default=None, metadata=_help("the folder that holds the IDX files of fashion-mnist, mnist or stacked-fashion-mnist (in it, or in its subfolder named after the dataset); nothing else is searched, so a folder that does not exist or lacks the files is an error"))
    image_size: int | None = field(default=None, metadata=_help("image folders: resize every image to S x S pixels (default: keep the size, which all images must then share)"))
    channels: int | None = field(default=None, metadata=_help("image folders: 1 (greyscale) or 3 (RGB) (default: 1 when every image is greyscale, else 3)"))
    classes: tuple[int, ...] | None = field(default=None, metadata=_help("keep only these labels of a labelled dataset, comma-separated, e.g. 0,1,2 (labels keep their values)"))
    workers: int = field(default=2, metadata=_help("image folders: worker processes that decode the images, once into memory or batch by batch when streamed (0: decode in the main process)"))
    memory_budget: float = field(default=4.0, metadata=_help("image folders: GiB a split may take decoded (float32) in memory; larger splits are streamed from disk during training (0: always stream)"))
    binarize: str = field(default="dynamic", metadata=_help("none | dynamic | threshold | static", choices=_data.BINARIZE_MODES))
    dequantize: bool = field(default=False, metadata=_help("add uniform noise to grey levels, (k + u) / levels, for continuous likelihoods; needs --binarize none"))
    codes: str = field(default="draw", metadata=_help("a .npz of posterior codes with scale_train/scale_test (vaelab encode's output): draw serves z = mean + scale * N(0, I) afresh every training pass (one seeded draw for validation and test), samples of the aggregate posterior a two-stage VAE's second stage learns (Dai & Wipf 2019); mean serves the means alone", choices=_data.CODE_MODES))
    valid_fraction: float = field(default=0.1, metadata=_help("fraction of the training file held out for validation (0 disables validation)"))
    limit: int | None = field(default=None, metadata=_help("use only the first N examples (file order) of each split"))

    def __post_init__(self) -> None:
        if self.binarize not in _data.BINARIZE_MODES:
            raise ConfigError(
                f"unknown binarize mode {self.binarize!r}; choose one of: {', '.join(_data.BINARIZE_MODES)}"
            )
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError(f"valid_fraction= must be in [0, 1), got {self.valid_fraction}")
        if self.dequantize and self.binarize != "none":
            raise ConfigError("dequantize= adds noise to grey levels; use it with binarize= none")
        if self.codes not in _data.CODE_MODES:
            raise ConfigError(f"unknown codes mode {self.codes!r}; choose one of: {', '.join(_data.CODE_MODES)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit= must be a positive number of examples, got {self.limit}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"image_size= must be a positive number of pixels, got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels= must be 1 (greyscale) or 3 (RGB), got {self.channels}")
        if self.classes is not None:
            if not self.classes:
                raise ConfigError("classes= needs at least one label, e.g. classes= 0,1,2")
            if len(set(self.classes)) != len(self.classes):
                raise ConfigError(f"classes= lists a label twice ({','.join(map(str, self.classes))}); list each once")
        if self.workers < 0:
            raise ConfigError(f"workers= must be 0 (decode in the main process) or more, got {self.workers}")
        if not (self.memory_budget >= 0 and math.isfinite(self.memory_budget)):
            raise ConfigError(f"memory_budget= must be 0 (always stream) or a positive number of GiB, got {self.memory_budget}")
        # Paths are stored absolute, so a run directory works from any working directory.
        if _data.is_path(self.data):
            object.__setattr__(self, "data", os.path.abspath(os.path.expanduser(self.data)))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", os.path.abspath(os.path.expanduser(self.data_dir)))


# Which model-specific options each model family uses: the one home of that rule. An option a
# family would silently ignore is refused when given (set to other than its default).
VAE_ONLY = ("posterior", "prior", "inference", "latent_dim", "hidden", "activation", "local_steps", "local_lr", "layers",
            "net_args")
VQ_ONLY = ("codebook_size", "code_dim", "commitment", "codebook_update", "ema_decay", "dead_code_restart")
_GENERATOR = ("latent_dim", "hidden", "activation")
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "vae": VAE_ONLY,
    "vqvae": VQ_ONLY,
    "gan": _GENERATOR,
    "vaegan": (*_GENERATOR, "gamma", "feature_layer"),
    "aae": (*_GENERATOR, "prior", "encoder"),
    "alphagan": (*_GENERATOR, "encoder"),
    "veegan": _GENERATOR,
}
# the options every family's builder takes
COMMON_MODEL_OPTIONS = ("likelihood", "obs_precision", "net", "resnet_channels", "res_blocks")
# why an option does not apply, where the family's nature says it
_WHY = {"vqvae": " (its latent is a grid of --codebook-size codes of --code-dim numbers)"}
# training options of the VAE's objectives; the VQ-VAE and the adversarial models train on their
# own losses and refuse them
VAE_TRAIN_ONLY = ("objective", "beta", "alpha", "k", "m", "kl", "grad_estimator", "kl_warmup", "kl_cycles", "free_bits")
# the discriminators' optimizer settings, for the adversarial models only
DISC_TRAIN_ONLY = ("lr_disc", "adam_betas_disc")


@dataclass(frozen=True)
class ModelConfig:
    """The model's architecture and observation model."""

    model: str = field(default="vae", metadata=_help("model family: vae | vqvae | gan | vaegan | aae | alphagan | veegan"))
    likelihood: str = field(default="bernoulli", metadata=_help("bernoulli | gaussian | gaussian-learned: the observation model p(x|z) (adversarial models: the generator output, sigmoid or unbounded, and the aae/alphagan reconstruction loss)"))
    obs_precision: float = field(default=100.0, metadata=_help("precision (1/variance) of the fixed-variance gaussian likelihood"))
    net: str | None = field(default=None, metadata=_help("backbone: mlp | conv | resnet, or your own factory package.module:Factory for the vae (default: mlp for the vae, resnet for the vqvae)"))
    net_args: dict[str, Any] | None = field(default=None, metadata=_help("--net package.module:Factory: a JSON object of keyword arguments for the factory, e.g. '{\"width\": 32}'"))
    resnet_channels: int = field(default=64, metadata=_help("--net resnet: channels of the convolutional stages"))
    res_blocks: int = field(default=2, metadata=_help("--net resnet: residual blocks after the downsampling (and before the upsampling) stages"))
    hidden: tuple[int, ...] = field(default=(200, 200), metadata=_help("hidden layer widths, comma-separated (conv uses the first)"))
    activation: str = field(default="tanh", metadata=_help("activation between layers"))
    latent_dim: int = field(default=50, metadata=_help("dimension of the latent z"))
    posterior: str = field(default="gaussian", metadata=_help("q(z|x): gaussian (diagonal) | full (Cholesky) | planar:K | iaf:K (K flow steps)"))
    prior: str = field(default="standard", metadata=_help("p(z): standard (N(0, I)) | mog:K (learned mixture) | vamp:K (VampPrior, K pseudo-inputs)"))
    inference: str = field(default="amortized", metadata=_help("amortized (an encoder) | local (no encoder: per-example q fitted by --local-steps of VI, variational EM)", choices=INFERENCE))
    local_steps: int = field(default=20, metadata=_help("--inference local: Adam steps per example each time q is fitted"))
    local_lr: float = field(default=0.1, metadata=_help("--inference local: initial learning rate of those steps (decays linearly to 0)"))
    codebook_size: int = field(default=512, metadata=_help("--model vqvae: number of codebook vectors K"))
    code_dim: int = field(default=64, metadata=_help("--model vqvae: dimension of each codebook vector"))
    commitment: float = field(default=0.25, metadata=_help("--model vqvae: weight beta of the commitment loss beta ||z_e - sg[e]||^2"))
    codebook_update: str = field(default="loss", metadata=_help("--model vqvae: loss (codebook loss ||sg[z_e] - e||^2) | ema (exponential moving averages)", choices=("loss", "ema")))
    ema_decay: float = field(default=0.99, metadata=_help("--model vqvae --codebook-update ema: decay of the moving averages"))
    dead_code_restart: int = field(default=0, metadata=_help("--model vqvae: re-initialise a code unused for this many training steps from an encoder output of the batch (0: off)"))
    layers: int = field(default=1, metadata=_help("stochastic layers: 1, or 2 (Burda et al. 2015: 784-200-200-100-100-50)"))
    encoder: str = field(default="deterministic", metadata=_help("--model aae, alphagan: deterministic (z = E(x)) | gaussian (z ~ q(z|x), reparameterized)", choices=ENCODERS))
    gamma: float = field(default=1.0, metadata=_help("--model vaegan: weight of the discriminator-feature reconstruction in the decoder's loss (gamma L_Dis_l - L_GAN)"))
    feature_layer: int = field(default=0, metadata=_help("--model vaegan: the discriminator layer whose features measure reconstructions (0: its last hidden layer)"))

    def __post_init__(self) -> None:
        if self.net is None:  # resolved here, so config.json always names the backbone
            object.__setattr__(self, "net", "resnet" if self.model == "vqvae" else "mlp")
        for registry, value in (
            (MODELS, self.model),
            (OBSERVATIONS, self.likelihood),
            (ACTIVATIONS, self.activation),
        ):
            registry[value]  # raises ConfigError listing the valid names
        check_net(self.net, self.net_args)  # a registered name or an import path; imports nothing
        if self.net_args is not None:  # a JSON object, kept as a plain dict of its own
            try:
                object.__setattr__(self, "net_args", json.loads(json.dumps(dict(self.net_args), allow_nan=False)))
            except (TypeError, ValueError):
                raise ConfigError(f"net_args={self.net_args!r} must hold JSON values (numbers, strings, lists, "
                                  "objects), which config.json records") from None  # fmt: skip
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden= needs positive layer widths such as 200,200, got {self.hidden}")
        if self.latent_dim < 1:
            raise ConfigError(f"latent_dim= must be at least 1, got {self.latent_dim}")
        check_combination(self.posterior, self.prior, self.inference)
        if self.model == "vae":
            check_layers(self.layers, posterior=self.posterior, prior=self.prior, inference=self.inference, net=self.net)
        if self.resnet_channels < 1 or self.res_blocks < 0:
            raise ConfigError(f"resnet_channels= must be at least 1 and res_blocks= at least 0, got {self.resnet_channels} and {self.res_blocks}")
        if self.model == "vqvae":
            check_vqvae(None, self.net, self.codebook_size, self.code_dim, self.commitment, self.codebook_update,
                        self.ema_decay, self.dead_code_restart)  # fmt: skip
        if self.model in ADVERSARIAL:
            check_adversarial(self.model, prior=self.prior, encoder=self.encoder, gamma=self.gamma,
                              feature_layer=self.feature_layer, net=self.net, hidden=self.hidden,
                              res_blocks=self.res_blocks)  # fmt: skip
        own = MODEL_OPTIONS.get(self.model, ())
        specific = sorted({name for names in MODEL_OPTIONS.values() for name in names} - set(own))
        ignored = _changed(self, specific)
        if ignored:
            users = [m for m, names in MODEL_OPTIONS.items() if ignored[0] in names]
            raise ConfigError(
                f"{_flag(ignored[0])} does not apply to model= {self.model}{_WHY.get(self.model, '')}; it is an "
                f"option of model= {' | '.join(users)}: drop it"
            )
        if self.local_steps < 1:
            raise ConfigError(f"local_steps= must be at least 1, got {self.local_steps}")
        if not (self.local_lr > 0 and math.isfinite(self.local_lr)):
            raise ConfigError(f"local_lr= must be a positive number, got {self.local_lr}")
        if not (self.obs_precision > 0 and math.isfinite(self.obs_precision)):
            raise ConfigError(f"obs_precision= must be a positive number, got {self.obs_precision}")

    def builder_options(self) -> dict[str, Any]:
        """The keywords of ``models.build_model`` for this family: the common options and the
        family's own (``MODEL_OPTIONS``), and none that the family's builder does not take."""
        values = dataclasses.asdict(self)
        return {name: values[name] for name in (*COMMON_MODEL_OPTIONS, *MODEL_OPTIONS[self.model])}


@dataclass(frozen=True)
class TrainConfig:
    """The objective and the optimization."""

    objective: str = field(default="elbo", metadata=_help("training objective: elbo | iwae | miwae | ciwae | piwae | renyi"))
    beta: float | None = field(default=None, metadata=_help("elbo: weight of the KL term (beta-VAE), default 1; ciwae: beta ELBO + (1 - beta) IWAE, default 0.5"))
    alpha: float = field(default=0.5, metadata=_help("renyi: alpha of the Rényi bound, in [0, 1] (0: IWAE's L_K, 1: the ELBO)"))
    k: int = field(default=1, metadata=_help("samples per example (per group for miwae and piwae)"))
    m: int = field(default=1, metadata=_help("miwae, piwae: number of groups of k samples"))
    kl: str = field(default="analytic", metadata=_help("elbo: analytic | mc, how the KL term is computed", choices=KL_MODES))
    grad_estimator: str = field(default="reparam", metadata=_help("reparam | stl | dreg | score (score: elbo only)", choices=GRAD_ESTIMATORS))
    kl_warmup: int = field(default=0, metadata=_help("raise the KL weight linearly from 0 over this many epochs (0: off)"))
    kl_cycles: int = field(default=0, metadata=_help("cyclical KL annealing with this many cycles over --epochs (0: off)"))
    free_bits: float = field(default=0.0, metadata=_help("free bits: nats per latent dimension below which the KL is not penalized (0: off)"))
    epochs: int = field(default=100, metadata=_help("maximum number of passes over the training data"))
    batch_size: int = field(default=100, metadata=_help("examples per optimizer step"))
    lr: float = field(default=1e-3, metadata=_help("Adam learning rate"))
    adam_betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=_help("Adam betas, e.g. 0.9,0.999"))
    adam_eps: float = field(default=1e-8, metadata=_help("Adam epsilon"))
    lr_disc: float | None = field(default=None, metadata=_help("adversarial models: Adam learning rate of the discriminators (default: --lr)"))
    adam_betas_disc: tuple[float, float] | None = field(default=None, metadata=_help("adversarial models: Adam betas of the discriminators, e.g. 0.5,0.999 (default: --adam-betas)"))
    patience: int = field(default=20, metadata=_help("stop after this many epochs without a better validation bound (0: never)"))
    time_limit: float = field(default=0.0, metadata=_help("stop after the epoch in which the run's wall-clock seconds (training, validation, monitors; summed over resumes) reach this (0: no limit)"))
    seed: int = field(default=0, metadata=_help("seed for initialization, data order, binarization and sampling"))
    precision: str = field(default="32", metadata=_help("32 | bf16-mixed | 16-mixed: the networks' arithmetic (mixed: autocast, and a gradient scaler for 16); densities, KL and log-sum-exp stay in fp32", choices=PRECISIONS))
    tensorboard: bool = field(default=False, metadata=_help("log every epoch's metrics and its samples and reconstructions for TensorBoard in RUN/tensorboard (needs: pip install 'vaelab[tensorboard]')"))
    # a warm start: the path of another run (stored absolute), whose model weights the new model starts from
    init_from: str | None = field(default=None, metadata=_help("start from the model weights of this run (built with the same model options and data shape); the optimizer, epoch count and random state start fresh", metavar="RUN"))

    def objective_options(self) -> dict[str, Any]:
        """The options to build the objective with (``objectives.get_objective``), those it takes;
        beta is left out when unset so each objective uses its own default."""
        options = {
            "k": self.k,
            "m": self.m,
            "kl": self.kl,
            "grad_estimator": self.grad_estimator,
            "free_bits": self.free_bits,
            "alpha": self.alpha,
        }
        if self.beta is not None:
            options["beta"] = self.beta
        # one configuration serves every objective: each gets the options it takes (__post_init__
        # refuses non-default values of the others)
        accepted = objective_options(self.objective)
        return {name: value for name, value in options.items() if name in accepted}

    def __post_init__(self) -> None:
        accepted = objective_options(self.objective)  # raises ConfigError listing the objectives
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)} (a string)")
        if self.kl not in KL_MODES:
            raise ConfigError(f"unknown kl mode {self.kl!r}; choose one of: {', '.join(KL_MODES)}")
        if self.grad_estimator not in GRAD_ESTIMATORS:
            raise ConfigError(
                f"unknown grad estimator {self.grad_estimator!r}; choose one of: {', '.join(GRAD_ESTIMATORS)}"
            )
        # an option the objective would silently ignore is a mistake worth reporting
        for name in _changed(self, ("beta", "m", "kl", "alpha", "free_bits")):
            if name not in accepted:
                users = [o for o in OBJECTIVES if name in objective_options(o)]
                raise ConfigError(
                    f"{name}= is not used by objective= {self.objective}; it applies to: {', '.join(users)}"
                )
        allowed = supported_estimators(self.objective)  # what the objective declares
        if self.grad_estimator not in allowed:
            users = [o for o in OBJECTIVES if self.grad_estimator in supported_estimators(o)]
            raise ConfigError(
                f"grad_estimator= {self.grad_estimator} is not available for objective= {self.objective}; use "
                f"{', '.join(allowed)} with {self.objective}, or {self.grad_estimator} with objective= {', '.join(users)}"
            )
        if self.objective == "ciwae" and self.beta is not None and not 0 <= self.beta <= 1:
            raise ConfigError(f"beta= for ciwae mixes ELBO and IWAE and must be in [0, 1], got {self.beta}")
        if self.kl_warmup < 0 or self.kl_cycles < 0:
            raise ConfigError("kl_warmup= and kl_cycles= must be 0 (off) or positive")
        if self.kl_warmup and self.kl_cycles:
            raise ConfigError("kl_warmup= and kl_cycles= are two different schedules; choose one")
        if not (self.free_bits >= 0 and math.isfinite(self.free_bits)):
            raise ConfigError(f"free_bits= must be a non-negative number of nats, got {self.free_bits}")
        positive = {"k": self.k, "m": self.m, "epochs": self.epochs, "batch_size": self.batch_size}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name}= must be at least 1, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr= must be a positive number, got {self.lr}")
        if self.beta is not None and not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ConfigError(f"beta= must be a non-negative number, got {self.beta}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"adam_betas= needs two numbers in [0, 1) such as 0.9,0.999, got {self.adam_betas}")
        if self.lr_disc is not None and not (self.lr_disc > 0 and math.isfinite(self.lr_disc)):
            raise ConfigError(f"lr_disc= must be a positive number, got {self.lr_disc}")
        if self.adam_betas_disc is not None and (len(self.adam_betas_disc) != 2 or not all(0 <= b < 1 for b in self.adam_betas_disc)):
            raise ConfigError(f"adam_betas_disc= needs two numbers in [0, 1) such as 0.5,0.999, got {self.adam_betas_disc}")
        if not self.adam_eps > 0:
            raise ConfigError(f"adam_eps= must be positive, got {self.adam_eps}")
        if self.init_from is not None:
            # stored absolute, like data paths, so the run's record holds wherever it is read from
            object.__setattr__(self, "init_from", os.path.abspath(os.path.expanduser(self.init_from)))
        if self.patience < 0:
            raise ConfigError(f"patience= must be 0 (off) or a positive number of epochs, got {self.patience}")
        if not (self.time_limit >= 0 and math.isfinite(self.time_limit)):
            raise ConfigError(f"time_limit= must be 0 (off) or a positive number of seconds, got {self.time_limit}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # combinations of model and training options that cannot work, refused before any run starts
        m, t = self.model, self.train
        if m.model == "vqvae":
            ignored = _changed(t, VAE_TRAIN_ONLY)
            if ignored:
                raise ConfigError(
                    f"{_flag(ignored[0])} does not apply to model= vqvae: it trains on its own loss "
                    f"(reconstruction, codebook and commitment= terms) with a deterministic one-hot "
                    f"posterior, so there is no KL to schedule or importance-weight; drop it"
                )
        if m.model in ADVERSARIAL:
            ignored = _changed(t, (*VAE_TRAIN_ONLY, "patience"))
            if ignored:
                why = ("it has no likelihood bound to select weights or stop early on: the last epoch's weights are kept"
                       if ignored[0] == "patience" else "it trains each player on its own adversarial loss")  # fmt: skip
                raise ConfigError(f"{_flag(ignored[0])} does not apply to model= {m.model}: {why}; drop it")
        else:
            ignored = _changed(t, DISC_TRAIN_ONLY)
            if ignored:
                raise ConfigError(
                    f"{_flag(ignored[0])} sets the discriminators' optimizer, which only the adversarial models "
                    f"(model= {' | '.join(ADVERSARIAL)}) have; drop it"
                )
        posterior = check_posterior(m.posterior)[0]
        if posterior in FLOWS and t.grad_estimator != "reparam":
            raise ConfigError(
                f"grad_estimator= {t.grad_estimator} is not implemented for flow posteriors "
                f"(posterior= {m.posterior}); use grad_estimator= reparam"
            )
        if posterior in FLOWS and t.objective == "piwae":
            raise ConfigError(
                "objective= piwae trains the encoder through a detached log q, which flow posteriors "
                f"do not provide; use iwae, miwae or ciwae with posterior= {m.posterior}"
            )
        if t.free_bits > 0 and m.layers == 2:
            raise ConfigError(
                "free_bits= needs the KL per latent dimension in closed form, which the two-layer "
                "model (layers= 2) does not have; drop free_bits= or use layers= 1"
            )
        factorized = posterior == "gaussian" and check_prior(m.prior)[0] == "standard"
        if t.free_bits > 0 and not factorized:
            raise ConfigError(
                "free_bits= needs the KL per latent dimension: use posterior= gaussian and "
                "prior= standard with it"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Converts a TOML/JSON/CLI value to the type the field declares, or raises ConfigError."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    kind = f.type if isinstance(f.type, str) else str(f.type)
    flag = _flag(name)
    try:
        if value is None:
            if "None" in kind:
                return None
            raise ValueError("a value is required")
        if kind.startswith("dict"):
            parsed = json.loads(value) if isinstance(value, str) else value
            if not isinstance(parsed, dict):
                raise ValueError('not a JSON object such as {"width": 32}')
            return parsed
        if kind.startswith("tuple[int"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(int(v) for v in items)
        if kind.startswith("tuple[float"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(float(v) for v in items)
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError("not true or false")
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("not an integer")
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError("not a number")
            return float(value)
        if kind.startswith("str"):
            if not isinstance(value, str):
                raise ValueError("not a string")
            return value
    except (TypeError, ValueError) as err:
        raise ConfigError(f"bad value {value!r} for {flag} ({err})") from None
    raise AssertionError(f"unhandled field type {kind}")  # pragma: no cover


def field_value(section: str, name: str, value: Any) -> Any:
    """A single field's value converted to its declared type (ConfigError if it cannot be)."""
    return _coerce(SECTIONS[section], name, value)


def field_names() -> dict[str, str]:
    """Maps every configuration field name to its section."""
    names = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            names[f.name] = section
    return names


def build(values: Mapping[str, Mapping[str, Any]] | None = None) -> RunConfig:
    """Builds a validated RunConfig from ``{section: {field: value}}``; missing fields take defaults."""
    values = values or {}
    unknown_sections = set(values) - set(SECTIONS)
    if unknown_sections:
        raise ConfigError(
            f"unknown configuration section(s) {', '.join(sorted(unknown_sections))}; "
            f"valid sections: {', '.join(SECTIONS)}"
        )
    parts = {}
    for section, cls in SECTIONS.items():
        given = dict(values.get(section, {}))
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = set(given) - set(valid)
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(sorted(unknown))} in [{section}]; valid keys: {', '.join(valid)}"
            )
        parts[section] = cls(**{k: _coerce(cls, k, v) for k, v in given.items()})
    return RunConfig(**parts)


def read_toml(path: str | Path) -> dict[str, dict[str, Any]]:
    """Reads a configuration file with ``[data]``, ``[model]`` and ``[train]`` tables."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"config file {path}: {section!r} must be a table such as [train]; "
                f"valid sections: {', '.join(SECTIONS)}"
            )
    return doc


def merge(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merges ``{section: {field: value}}`` layers; later layers win."""
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, table in layer.items():
            out.setdefault(section, {}).update(table)
    return out


def save_json(config: RunConfig, event_shape: tuple[int, ...]) -> bytes:
    """The bytes of ``config.json``: the resolved configuration plus the data shape."""
    doc = {"version": CONFIG_VERSION, **config.to_dict(), "event_shape": list(event_shape)}
    return (json.dumps(doc, indent=2) + "\n").encode()


def load_json(path: str | Path) -> tuple[RunConfig, tuple[int, ...]]:
    """Reads a run's ``config.json`` back into a RunConfig and the data shape."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        event_shape = tuple(int(s) for s in doc.pop("event_shape"))
        doc.pop("version", None)
        model = doc.get("model")
        if isinstance(model, dict) and "channels" in model:
            # runs written before the data's --channels existed named the resnet width "channels"
            model.setdefault("resnet_channels", model.pop("channels"))
        return build(doc), event_shape
    except ConfigError:
        raise  # a ConfigError is a ValueError too: it names the bad value, which "corrupt" would hide
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: is {path.parent} a vaelab run directory?") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path} is corrupt ({err}); it cannot be used to rebuild the model") from None
