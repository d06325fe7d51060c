"""Every model family declares what training, evaluation and the commands need from it."""

import pytest

from vaelab.evaluation.diagnostics import CodebookMonitor, CollapseMonitor
from vaelab.inference.objectives import vq
from vaelab.models import MODELS, build_model
from vaelab.runs import config as cfg
from vaelab.runs.families import FAMILIES, LIKELIHOODS, Family, family


def test_every_buildable_model_has_a_family_and_no_family_lacks_a_builder():
    assert FAMILIES.names() == MODELS.names()


@pytest.mark.parametrize("name", MODELS.names())
def test_each_family_declares_what_it_trains_on_and_watches(name):
    kind = family(name)
    assert kind.likelihood in LIKELIHOODS
    objective = kind.objective(cfg.TrainConfig())
    options = {"hidden": (8,), "latent_dim": 2} if name != "vqvae" else {"codebook_size": 4, "code_dim": 2, "net": "resnet"}
    model = build_model(name, (1, 8, 8), **options)
    monitors = kind.monitors(model)
    if kind.likelihood == "none":  # several players, each with its own loss
        assert objective is None and monitors == [] and hasattr(model, "players")
    elif kind.likelihood == "codes":
        assert objective is vq and [type(m) for m in monitors] == [CodebookMonitor]
        assert not model.trains_across_processes
    else:
        assert objective is not None and [type(m) for m in monitors] == [CollapseMonitor]
        assert kind.continuous_latent


def test_a_family_must_name_a_known_kind_of_likelihood():
    with pytest.raises(ValueError, match="likelihood must be one of"):
        Family("x", likelihood="exact", continuous_latent=False, objective=lambda t: None, monitors=lambda m: [])
