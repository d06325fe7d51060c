"""Package hygiene: the licence, type hints, error types, strict builders, and the one place where
library messages (Python arguments) become command-line flags."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

import vaelab
from vaelab.core.errors import (
    ConfigError,
    NotFoundError,
    UnknownOptionError,
    VaelabError,
)

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_licence_file_is_the_one_pyproject_names():
    licence = _pyproject()["project"]["license"]["text"]
    assert licence == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


def test_the_package_ships_py_typed():
    assert (ROOT / "vaelab" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["vaelab"]


def test_the_public_functions_have_type_hints():
    missing = []
    for name in vaelab.__all__:
        obj = getattr(vaelab, name)
        if not inspect.isfunction(obj):
            continue
        signature = inspect.signature(obj)
        if signature.return_annotation is inspect.Signature.empty:
            missing.append(f"{name} -> ?")
        for p in signature.parameters.values():
            if p.annotation is inspect.Parameter.empty:
                missing.append(f"{name}({p.name})")
    assert not missing, missing


def test_library_errors_are_value_errors_and_missing_things_file_not_found(tmp_path):
    assert issubclass(VaelabError, ValueError)
    assert vaelab.NotFoundError is NotFoundError and vaelab.VaelabError is VaelabError
    with pytest.raises(FileNotFoundError) as err:
        vaelab.load(tmp_path / "no-such-run")
    assert isinstance(err.value, NotFoundError) and "no-such-run" in str(err.value)
    with pytest.raises(FileNotFoundError):
        vaelab.load_dataset(str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError):  # an unknown name is a ValueError without importing our types
        vaelab.build_model("no-such-model", (4,))


# -- strict builders --------------------------------------------------------------------------


def test_a_misspelt_keyword_is_an_error_not_a_default():
    with pytest.raises(UnknownOptionError) as err:
        vaelab.build_model("vae", (1, 8, 8), latnet_dim=8)
    message = str(err.value)
    assert "latnet_dim" in message and "did you mean latent_dim=" in message and "\n" not in message
    assert isinstance(err.value, TypeError) and isinstance(err.value, VaelabError)


@pytest.mark.parametrize("name", sorted(vaelab.models.MODELS))
def test_every_family_refuses_unknown_keywords(name):
    with pytest.raises(UnknownOptionError, match="not_an_option"):
        vaelab.build_model(name, (1, 8, 8), not_an_option=1)


def test_the_builders_take_only_their_own_options():
    from vaelab.distributions.observation import build_observation
    from vaelab.inference.objectives import get_objective

    with pytest.raises(UnknownOptionError, match="m="):
        get_objective("elbo", m=2)  # an option of miwae and piwae, not of the ELBO
    with pytest.raises(UnknownOptionError, match="beta"):
        get_objective("iwae", beta=0.5)
    with pytest.raises(TypeError):
        build_observation("bernoulli", 3, precision=4.0)
    with pytest.raises(UnknownOptionError, match="hidden"):  # the VQ-VAE has no MLP widths
        vaelab.build_model("vqvae", (1, 8, 8), hidden=(8,))


def test_the_configuration_gives_each_objective_its_own_options():
    from vaelab.inference.objectives import get_objective
    from vaelab.runs.config import TrainConfig

    for objective in vaelab.OBJECTIVES:
        options = TrainConfig(objective=objective).objective_options()
        get_objective(objective, **options)  # nothing refused


# -- Python arguments become flags in one place -----------------------------------------------


@pytest.mark.parametrize(("message", "expected"), [
    ("latent_dim=0 must be at least 1", "--latent-dim 0 must be at least 1"),
    ("use net='mlp' for this data", "use --net mlp for this data"),
    ("pass trust_code=True, or nets={'a:b': f}", "pass --trust-code, or nets={'a:b': f}"),
    ("k=5 nearest neighbours", "k=5 nearest neighbours"),  # not an option of this command
    ("did you mean latent_dim=?", "did you mean --latent-dim?"),
    ("x.latent_dim=3 stays", "x.latent_dim=3 stays"),
])  # fmt: skip
def test_python_arguments_become_the_commands_flags(message, expected):
    from vaelab.cli.common import as_flags as _as_flags

    assert _as_flags(message, {"latent_dim", "net", "trust_code"}) == expected


def test_the_cli_shows_a_library_message_in_flags(tmp_path, capsys):
    from vaelab.cli.main import main

    assert main(["train", "--net", "mlp", "--net-args", '{"width": 3}', "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--net-args {'width': 3}" in err and "--net mlp" in err and "net_args=" not in err, err
    assert not (tmp_path / "r").exists()


def test_a_configuration_error_is_still_a_value_error():
    with pytest.raises(ValueError, match="latent"):
        vaelab.config.ModelConfig(latent_dim=0)
    assert issubclass(ConfigError, ValueError)
