"""Runs: the configuration, the Trainer, run directories (``load``), the run lifecycle, the
VQ-VAE's code prior, distributed training, speed options, TensorBoard and stored results."""

from .rundir import (  # noqa: F401
    CHECK_EXAMPLES,
    check_compatible,
    check_data_options,
    describe_data,
    load,
    load_data,
    model_from_config,
    read_config,
)
