"""Your own networks (--net package.module:Factory, encoder=/decoder= modules), the trust gate
that keeps a run directory from running the code it names, and Trainer(run_dir=) runs."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import vaelab
from vaelab.cli.main import main
from vaelab.core.errors import ConfigError, RunError, UntrustedCodeError, VaelabError
from vaelab.core.files import CONFIG_FILE
from vaelab.distributions.posteriors import build_posterior
from vaelab.inference.objectives import get_objective
from vaelab.models import build_model
from vaelab.models.vae import check_combination
from vaelab.nets.backbones import NetSpec
from vaelab.runs import config as cfg
from vaelab.runs.rundir import load_data, model_from_config

SHAPE = (1, 8, 8)


def small(spec, width=12):
    """A factory with the backbones' contract: (encoder, decoder) for a NetSpec."""
    n = math.prod(spec.event_shape)
    encoder = nn.Sequential(nn.Flatten(1), nn.Linear(n, width), nn.ReLU(), nn.Linear(width, spec.encoder_out))
    decoder = nn.Sequential(nn.Linear(spec.latent_dim, width), nn.ReLU(), nn.Linear(width, spec.params_per_dim * n),
                            nn.Unflatten(1, (spec.params_per_dim, *spec.event_shape)))  # fmt: skip
    return encoder, decoder


MINE = {"mine:small": small}

# A module that leaves a marker file when it is imported, and a factory that leaves another when
# it is called: a run directory that names it must do neither without the caller's opt-in.
MODULE = '''
import math
import pathlib
from torch import nn

pathlib.Path({imported!r}).write_text("imported")


def make(spec, width=12):  # the networks of the tests' own ``small``
    pathlib.Path({called!r}).write_text(str(width))
    n = math.prod(spec.event_shape)
    encoder = nn.Sequential(nn.Flatten(1), nn.Linear(n, width), nn.ReLU(), nn.Linear(width, spec.encoder_out))
    decoder = nn.Sequential(nn.Linear(spec.latent_dim, width), nn.ReLU(), nn.Linear(width, spec.params_per_dim * n),
                            nn.Unflatten(1, (spec.params_per_dim, *spec.event_shape)))
    return encoder, decoder
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A fresh importable module ``vaelab_test_nets_N`` under tmp_path; returns (name, imported
    marker, called marker)."""
    name = f"vaelab_test_nets_{abs(hash(str(tmp_path))) % 10**8}"
    imported, called = tmp_path / "imported", tmp_path / "called"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / f"{name}.py").write_text(MODULE.format(imported=str(imported), called=str(called)))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    yield name, imported, called
    sys.modules.pop(name, None)


def run_config(net: str, net_args=None, **model) -> cfg.RunConfig:
    options = {"net": net, "latent_dim": 2, "hidden": [8], **model}
    if net_args is not None:
        options["net_args"] = net_args
    return cfg.build({"data": {"data": "digits", "binarize": "threshold", "limit": 200},
                      "model": options, "train": {"epochs": 1, "batch_size": 50}})  # fmt: skip


def craft(run_dir, net: str, net_args=None) -> None:
    """A run directory whose config.json names ``net``, as someone could hand it over."""
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_bytes(cfg.save_json(run_config(net, net_args), SHAPE))


def one_line(message: str) -> bool:
    return "\n" not in message.strip()


# -- the factory contract ---------------------------------------------------------------------

FAMILIES = []
for _post, _prior, _lik, _inf in itertools.product(("gaussian", "full", "planar:2", "iaf:2"), ("standard", "mog:2", "vamp:2"),
                                                  ("bernoulli", "gaussian", "gaussian-learned"), ("amortized", "local")):  # fmt: skip
    try:
        check_combination(_post, _prior, _inf)
    except ConfigError:
        continue
    FAMILIES.append({"posterior": _post, "prior": _prior, "likelihood": _lik, "inference": _inf})


@pytest.mark.parametrize("options", FAMILIES, ids=lambda o: ",".join(o.values()))
def test_a_factory_serves_every_vae_the_configuration_accepts(options):
    """Every accepted combination of posterior, prior, likelihood and inference builds with the
    factory's networks (the encoder's width is the posterior's parameter count) and trains."""
    torch.manual_seed(0)
    model = build_model("vae", SHAPE, net="mine:small", net_args={"width": 6}, nets=MINE, latent_dim=2,
                        local_steps=2, **options)  # fmt: skip
    widths = [m.out_features for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    assert widths[0] == 6  # net_args reached the factory
    if options["inference"] == "amortized":
        assert model.encoder[-1].out_features == model.posterior.param_size
    x = torch.rand(4, *SHAPE).round()
    result = get_objective("elbo")(model, x)
    assert torch.isfinite(result.bound).all()
    result.objective.mean().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_the_factory_is_imported_from_its_path(factory_module):
    name, imported, called = factory_module
    model = build_model("vae", SHAPE, net=f"{name}:make", net_args={"width": 5}, latent_dim=2)
    assert imported.exists() and called.read_text() == "5"
    assert model.encoder[1].out_features == 5


@pytest.mark.parametrize(("encoder_out", "decoder_out", "which", "expected"), [
    (3, None, "encoder", "(B, 4)"),  # latent_dim 2, diagonal Gaussian: 4 numbers
    (4, (1, 7, 7), "decoder", "(B, 1, 1, 8, 8)"),
])  # fmt: skip
def test_wrong_shapes_are_one_line_errors_that_say_what_was_expected(encoder_out, decoder_out, which, expected):
    def wrong(spec):
        encoder = nn.Sequential(nn.Flatten(1), nn.Linear(64, encoder_out))
        shape = decoder_out or (spec.params_per_dim, *spec.event_shape)
        decoder = nn.Sequential(nn.Linear(spec.latent_dim, math.prod(shape)), nn.Unflatten(1, shape))
        return encoder, decoder

    with pytest.raises(ConfigError) as err:
        build_model("vae", SHAPE, net="x:wrong", nets={"x:wrong": wrong}, latent_dim=2)
    message = str(err.value)
    assert f"the {which}" in message and expected in message and "x:wrong" in message and one_line(message)


def test_a_failing_factory_or_a_wrong_return_is_one_line():
    def broken(spec, width):
        raise RuntimeError("broken\non two lines")

    with pytest.raises(ConfigError, match="x:broken.*RuntimeError") as err:
        build_model("vae", SHAPE, net="x:broken", nets={"x:broken": broken}, net_args={"width": 1})
    assert one_line(str(err.value))
    with pytest.raises(ConfigError, match="pair"):
        build_model("vae", SHAPE, net="x:one", nets={"x:one": lambda spec: nn.Linear(1, 1)})
    with pytest.raises(ConfigError, match="unexpected keyword"):  # net_args the factory does not take
        build_model("vae", SHAPE, net="mine:small", nets=MINE, net_args={"depth": 3})


def test_a_failing_import_names_the_module_and_the_attribute(factory_module):
    name, _, _ = factory_module
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'") as err:
        build_model("vae", SHAPE, net="no_such_module_xyz:make")
    assert one_line(str(err.value))
    with pytest.raises(ConfigError, match=f"module '{name}' has no attribute 'nope'"):
        build_model("vae", SHAPE, net=f"{name}:nope")


@pytest.mark.parametrize("net", ["a b:c", "pkg:", ":f", "pkg.:f", "1pkg:f"])
def test_a_malformed_import_path_is_refused_by_the_configuration(net):
    with pytest.raises(ConfigError, match="import path"):
        cfg.ModelConfig(net=net)


def test_net_args_are_a_json_object_for_a_factory_only():
    assert cfg.build({"model": {"net": "m:f", "net_args": '{"width": 3}'}}).model.net_args == {"width": 3}
    with pytest.raises(ConfigError, match=r"'\[1, 2\]' for net_args="):
        cfg.build({"model": {"net": "m:f", "net_args": "[1, 2]"}})
    with pytest.raises(ConfigError, match="built-in"):
        cfg.ModelConfig(net="mlp", net_args={"width": 3})
    with pytest.raises(ConfigError, match="JSON values"):
        cfg.ModelConfig(net="m:f", net_args={"f": object()})


@pytest.mark.parametrize("model", ["vqvae", "gan", "vaegan", "aae", "alphagan", "veegan"])
def test_other_families_refuse_a_factory_in_one_line(model):
    with pytest.raises(ConfigError) as err:
        cfg.ModelConfig(model=model, net="mine:small")
    assert one_line(str(err.value)) and "mine:small" in str(err.value)


def test_two_stochastic_layers_refuse_a_factory():
    with pytest.raises(ConfigError, match="mlp"):
        cfg.ModelConfig(net="mine:small", layers=2)


def test_ready_modules_from_python():
    torch.manual_seed(0)
    encoder, decoder = small(NetSpec(SHAPE, 2, 4, 1, (8,), "tanh"))
    model = build_model("vae", SHAPE, encoder=encoder, decoder=decoder, latent_dim=2)
    assert model.encoder is encoder and model.decoder is decoder
    assert torch.isfinite(get_objective("elbo")(model, torch.rand(3, *SHAPE).round()).bound).all()
    local = build_model("vae", SHAPE, decoder=decoder, latent_dim=2, inference="local")
    assert local.decoder is decoder
    with pytest.raises(ConfigError, match="together"):
        build_model("vae", SHAPE, encoder=encoder, latent_dim=2)
    with pytest.raises(ConfigError, match="not both"):
        build_model("vae", SHAPE, encoder=encoder, decoder=decoder, net="conv", latent_dim=2)
    full = build_posterior("full", 2).param_size  # mean and Cholesky factor: more than the 4 given
    with pytest.raises(ConfigError, match=rf"\(B, {full}\)"):
        build_model("vae", SHAPE, encoder=encoder, decoder=decoder, latent_dim=2, posterior="full")


# -- trust ------------------------------------------------------------------------------------


def test_a_run_naming_os_system_runs_nothing_without_the_opt_in(tmp_path):
    marker = tmp_path / "pwned"
    craft(tmp_path / "run", "os:system", {"command": f"touch {marker}"})
    with pytest.raises(UntrustedCodeError) as err:
        vaelab.load(tmp_path / "run")
    message = str(err.value)
    assert "'os'" in message and "trust_code=True" in message and "nets=" in message and one_line(message)
    assert not marker.exists()


def test_nothing_is_imported_until_the_caller_says_so(tmp_path, factory_module):
    name, imported, called = factory_module
    config = run_config(f"{name}:make", {"width": 4})
    train = load_data(config, "train")
    model = model_from_config(config, train.event_shape, trust_code=True)  # the caller's own config
    vaelab.Trainer(model, get_objective("elbo"), train, None, config, run_dir=tmp_path / "run", progress=False).fit()
    imported.unlink()
    called.unlink()
    sys.modules.pop(name)

    with pytest.raises(UntrustedCodeError, match=f"'{name}'"):
        vaelab.load(tmp_path / "run")
    assert not imported.exists() and not called.exists() and name not in sys.modules
    # the factory passed in: rebuilt from it, nothing imported
    model = vaelab.load(tmp_path / "run", nets={f"{name}:make": small})
    assert not imported.exists() and name not in sys.modules
    assert model.encoder[1].out_features == 4  # the recorded net_args
    # trust_code=True: imported and called with the recorded arguments
    vaelab.load(tmp_path / "run", trust_code=True)
    assert imported.exists() and called.read_text() == "4"


def _commands(run, other, tmp_path):
    """Every command that opens a run, on ``run`` (``other`` is a harmless run for --sampler)."""
    return {
        "evaluate": ["evaluate", run], "diagnose": ["diagnose", run], "gaps": ["gaps", run],
        "sample": ["sample", run], "prior": ["prior", run], "reconstruct": ["reconstruct", run],
        "score": ["score", run], "encode": ["encode", run, "-o", str(tmp_path / "c.npz")],
        "decode": ["decode", run, str(tmp_path / "c.npy"), "-o", str(tmp_path / "d.png")],
        "quality": ["quality", run], "traverse": ["traverse", run],
        "interpolate": ["interpolate", run, "--from", "0", "--to", "1"], "report": ["report", run],
        "train --resume": ["train", "--resume", run],
        "sample --sampler stage2": ["sample", other, "--sampler", f"stage2:{run}"],
        "quality --sampler stage2": ["quality", other, "--sampler", f"stage2:{run}"],
    }  # fmt: skip


COMMANDS = list(_commands("R", "O", Path("T")))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_run_naming_code_without_trust_code(command, tmp_path, capsys):
    marker = tmp_path / "pwned"
    craft(tmp_path / "run", "os:system", {"command": f"touch {marker}"})
    craft(tmp_path / "other", "mlp")
    argv = _commands(str(tmp_path / "run"), str(tmp_path / "other"), tmp_path)[command]
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "'os'" in err and "--trust-code" in err and "Traceback" not in err, err
    assert not marker.exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before  # nothing written


def test_every_command_that_opens_a_run_has_trust_code():
    from vaelab.cli.main import build_parser as _build_parser, options_of as _options_of

    parser = _build_parser()
    for argv in _commands("R", "O", Path("T")).values():
        assert "trust_code" in _options_of(parser, argv[0]), argv[0]


def test_trust_code_lets_the_commands_rebuild_the_run(tmp_path, factory_module, capsys):
    name, imported, called = factory_module
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--binarize", "threshold", "--limit", "200", "--net", f"{name}:make",
                 "--net-args", '{"width": 3}', "--latent-dim", "2", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    recorded = json.loads((out / CONFIG_FILE).read_text())["model"]
    assert recorded["net"] == f"{name}:make" and recorded["net_args"] == {"width": 3}
    assert called.read_text() == "3"
    capsys.readouterr()
    assert main(["evaluate", str(out), "--k", "5", "--limit", "20"]) == 2
    assert "--trust-code" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--k", "5", "--limit", "20", "--trust-code"]) == 0


# -- Trainer(run_dir=) ------------------------------------------------------------------------


def test_a_trainer_given_the_run_config_writes_a_complete_run(tmp_path, capsys):
    config = run_config("mlp")
    train, valid = load_data(config, "train"), load_data(config, "valid")
    torch.manual_seed(0)
    model = model_from_config(config, train.event_shape)
    run = tmp_path / "run"
    vaelab.Trainer(model, get_objective("elbo"), train, valid, config, run_dir=run, progress=False).fit()
    saved, shape = cfg.load_json(run / CONFIG_FILE)
    assert saved == config and shape == SHAPE
    loaded = vaelab.load(run)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
    assert main(["evaluate", str(run), "--k", "5", "--limit", "20"]) == 0
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()


def test_a_trainer_refuses_a_run_config_that_does_not_describe_its_model(tmp_path):
    config = run_config("mlp")
    train = load_data(config, "train")
    other = build_model("vae", SHAPE, latent_dim=3, hidden=(8,))
    trainer = vaelab.Trainer(other, get_objective("elbo"), train, None, config, run_dir=tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="does not describe this model"):
        trainer.fit()
    assert not (tmp_path / "run").exists()


def test_a_trainer_with_a_train_config_alone_keeps_no_run_config(tmp_path):
    config = run_config("mlp")
    train = load_data(config, "train")
    model = model_from_config(config, train.event_shape)
    vaelab.Trainer(model, get_objective("elbo"), train, None, config.train, run_dir=tmp_path / "run", progress=False).fit()
    assert not (tmp_path / "run" / CONFIG_FILE).exists()
    with pytest.raises(FileNotFoundError):
        vaelab.load(tmp_path / "run")


def test_untrusted_code_error_is_a_vaelab_error():
    assert issubclass(UntrustedCodeError, VaelabError)


def test_compare_reads_a_run_naming_code_without_running_it(tmp_path, capsys):
    """vaelab compare reads configurations and metrics only: it needs no --trust-code."""
    marker = tmp_path / "pwned"
    craft(tmp_path / "run", "os:system", {"command": f"touch {marker}"})
    craft(tmp_path / "other", "mlp")
    assert main(["compare", str(tmp_path / "run"), str(tmp_path / "other"), "--json",
                 "-o", str(tmp_path / "c.png")]) == 0  # fmt: skip
    assert "os:system" in capsys.readouterr().out
    assert not marker.exists()


def test_train_with_a_missing_factory_is_one_line_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--net", "no_such_module_xyz:make", "--epochs", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "cannot import module 'no_such_module_xyz'" in err and "--net no_such_module_xyz:make" in err
    assert not out.exists()


def test_a_trainer_refuses_to_record_ready_modules_as_a_built_in_backbone(tmp_path):
    """Ready modules of the mlp's very shapes would load into the mlp, but they are not the mlp:
    no configuration records them, so the Trainer refuses to write one."""
    config = run_config("mlp")
    train = load_data(config, "train")
    mlp = model_from_config(config, train.event_shape)
    model = build_model("vae", SHAPE, encoder=mlp.encoder, decoder=mlp.decoder, latent_dim=2)
    trainer = vaelab.Trainer(model, get_objective("elbo"), train, None, config, run_dir=tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="ready modules"):
        trainer.fit()
    assert not (tmp_path / "run").exists()
