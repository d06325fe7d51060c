"""Run directories: what a run is made of, and how to get its model and data back.

```
runs/NAME/
  config.json          the resolved configuration (enough to rebuild the model and its data)
  model.safetensors    the best weights by validation bound (the last ones without validation)
  checkpoint/          the latest training state, for --resume
  metrics.jsonl        one JSON object per epoch
  samples.png  reconstructions.png  latent.png (2-D latent)
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..core.devices import resolve_device
from ..core.errors import ConfigError, RunError, RunNotFoundError
from ..core.files import CONFIG_FILE, MODEL_FILE, load_weights
from ..data.imagefolder import StreamSplit
from ..data.load import load_split
from ..data.sources import describe_source, is_folder
from ..data.splits import Split
from ..models import build_model
from ..nets.backbones import NetFactory, check_trusted
from . import config as cfg
from .families import family
from .prior_files import attach_code_prior


def model_from_config(
    config: cfg.RunConfig,
    event_shape: tuple[int, ...],
    *,
    nets: Mapping[str, NetFactory] | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Builds an untrained model from a run configuration.

    A configuration that names your own network factory (``net="package.module:Factory"``) is
    built only with that factory given in ``nets`` or with ``trust_code=True`` (which imports it);
    otherwise UntrustedCodeError, raised before anything is imported.
    """
    check_trusted(config.model.net, nets, trust_code)
    options = config.model.builder_options()
    if nets is not None and config.model.model == "vae":
        options["nets"] = nets
    return build_model(config.model.model, event_shape, **options)


def load_data(
    config: cfg.RunConfig, split: str, *, limit: int | None = None, progress: bool = False, stream: bool = False
) -> Split | StreamSplit:
    """Loads one split of the run's data as the run's configuration prepares it.

    Args:
        config: the run configuration (data source, binarization, validation fraction, seed).
        split: "train", "valid" or "test".
        limit: first N examples; defaults to the run's own ``--limit``.
        stream: an image folder split larger than the run's ``memory_budget`` comes back as a
            ``StreamSplit`` read from disk (training does this); otherwise every split is a
            ``Split`` in memory.
    """
    d = config.data
    # a folder-trained run's image options shape its folders only: other data it is given (e.g. an
    # array to score) is taken as it is
    folder = is_folder(d.data)
    return load_split(
        d.data,
        split,
        binarize=d.binarize,
        data_dir=d.data_dir,
        limit=limit if limit is not None else d.limit,
        valid_fraction=d.valid_fraction,
        seed=config.train.seed,
        dequantize=d.dequantize,
        codes=d.codes,
        progress=progress,
        classes=d.classes,
        image_size=d.image_size if folder else None,
        channels=d.channels if folder else None,
        memory_budget=d.memory_budget if stream else None,
        workers=d.workers,
    )


def describe_data(config: cfg.RunConfig) -> str:
    """Where ``load_data(config, ...)`` takes the run's data from, in a few words (``data.
    describe_source``: the loader's own search, nothing downloaded or read): e.g. ``fashion-mnist
    from /usr/share/datasets/fashion-mnist`` or ``digits (scikit-learn's bundled copy)``."""
    d = config.data
    folder = is_folder(d.data)
    return describe_source(d.data, d.data_dir, image_size=d.image_size if folder else None,
                           channels=d.channels if folder else None)  # fmt: skip


def check_data_options(config: cfg.RunConfig) -> None:
    """Refuses --image-size and --channels for data that is not a folder of images, where they
    would be ignored."""
    d = config.data
    given = [flag for flag, value in (("image_size=", d.image_size), ("channels=", d.channels)) if value is not None]
    if given and not is_folder(d.data):
        raise ConfigError(
            f"{given[0]} applies to folders of images, and {d.data} is not one; drop {given[0]}"
        )


# examples of a streamed split whose values check_compatible reads
CHECK_EXAMPLES = 1000


def check_compatible(config: cfg.RunConfig, split: Split | StreamSplit) -> None:
    """Refuses a Bernoulli likelihood on grey levels: its "log-likelihood" would not be one. The
    adversarial models have no likelihood: for them ``bernoulli`` is the sigmoid output layer
    (and cross-entropy reconstruction), which suits grey levels in [0, 1] too. Of a streamed
    split, the first ``CHECK_EXAMPLES`` examples are checked."""
    if family(config.model.model).likelihood == "none":
        return
    if config.model.likelihood != "bernoulli" or config.data.binarize != "none" or len(split) == 0:
        return  # binarized data is binary by construction
    x = split.x if isinstance(split, Split) else split.head(CHECK_EXAMPLES)
    if not bool(((x == 0) | (x == 1)).all()):
        raise ConfigError(
            f"likelihood= bernoulli needs binary data, but {config.data.data} with binarize= "
            f"{config.data.binarize} has grey levels; use binarize= dynamic, threshold or static, "
            f"or likelihood= gaussian"
        )


def read_config(run_dir: str | Path) -> tuple[cfg.RunConfig, tuple[int, ...]]:
    """A run's configuration and data shape; RunError if the directory is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunNotFoundError(f"run directory {run_dir} does not exist")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunNotFoundError(f"{run_dir / CONFIG_FILE} does not exist: is {run_dir} a vaelab run directory?")
    try:
        return cfg.load_json(run_dir / CONFIG_FILE)
    except ConfigError as err:
        raise RunError(str(err)) from None


def load(
    run_dir: str | Path,
    *,
    code_prior: bool = True,
    nets: Mapping[str, NetFactory] | None = None,
    trust_code: bool = False,
    device: str | torch.device | None = None,
) -> nn.Module:
    """The trained model of a run directory, as an ``nn.Module`` in eval mode. A VQ-VAE comes
    with its learned prior over code grids when ``vaelab prior`` has trained one (unless
    ``code_prior=False``).

    ``device`` says where the model (and its code prior) is put: ``auto`` (CUDA, then MPS, then
    the CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``; None keeps it on the
    CPU. Weights are read on the CPU and then moved, so a run trained on any device loads on any
    other. The library's functions that take this model move each batch of data to its device.

    Loading never unpickles, and never imports or calls code the run directory names unless you
    say so: a run trained with ``net="package.module:Factory"`` is rebuilt with the factory you
    pass in ``nets={"package.module:Factory": factory}``, or imported with ``trust_code=True``
    (as Hugging Face's ``trust_remote_code``); otherwise UntrustedCodeError names the module.

    Example:
        >>> model = vaelab.load("runs/demo")
        >>> q = model.encode(x)             # q(z|x), a torch.distributions object
        >>> p = model.decode(q.mean)        # p(x|z)
    """
    run_dir = Path(run_dir)
    target = resolve_device(device) if device is not None else None  # an unusable device fails before any reading
    config, event_shape = read_config(run_dir)
    model = model_from_config(config, event_shape, nets=nets, trust_code=trust_code)
    weights = run_dir / MODEL_FILE
    if not weights.exists():
        raise RunNotFoundError(
            f"{weights} does not exist: the run has not finished an epoch yet "
            f"(resume it with: vaelab train --resume {run_dir})"
        )
    load_weights(model, weights)
    if code_prior:

        attach_code_prior(model, run_dir)
    if target is not None:
        model.to(target)
        prior = getattr(model, "code_prior", None)  # held outside the module tree, so moved on its own
        if isinstance(prior, nn.Module):
            prior.to(target)
    return model.eval()
