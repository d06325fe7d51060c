"""Devices: what ``device=`` and ``--device`` accept and refuse, every computing command with
``--device`` (the same output on the CPU with it as without it; an unusable device refused in one
line before anything is written), and the library's functions on the ``meta`` device, where a
tensor created on the CPU by mistake (which would break the same function on a GPU) fails."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, run_cli

import vaelab
from vaelab.cli.main import DEVICE_COMMANDS, build_parser as _build_parser
from vaelab.core.devices import fork_rng, generator, module_device, resolve_device
from vaelab.core.errors import ConfigError
from vaelab.runs import config as cfg
from vaelab.runs.rundir import model_from_config

GPU = torch.cuda.is_available()
MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
META = torch.device("meta")

# -- names -------------------------------------------------------------------------------------


def test_auto_picks_cuda_then_mps_then_the_cpu():
    want = "cuda" if GPU else "mps" if MPS else "cpu"
    assert resolve_device("auto").type == resolve_device(None).type == want
    assert resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(META) is META  # a torch.device is taken as it is


@pytest.mark.parametrize("name, needle", [
    ("cuda", "not available here"), ("cuda:0", "not available here"), ("cuda:7", "device='cuda:7'"), ("mps", "Apple GPU"),
    ("gpu", "unknown device='gpu'"), ("cuda:x", "cuda:N"), ("", "unknown device=''"), (0, "not a device name"),
])  # fmt: skip
def test_unusable_or_unknown_devices_are_one_line_errors_naming_device(name, needle):
    if (GPU and str(name).startswith("cuda") and name != "cuda:x" and name != "cuda:7") or (MPS and name == "mps"):
        pytest.skip("this machine can use that device")
    with pytest.raises(ConfigError) as err:
        resolve_device(name)
    message = str(err.value)
    assert "\n" not in message and "device=" in message and needle in message


def test_module_device_fork_rng_and_generator():
    model = torch.nn.Linear(2, 2)
    assert module_device(model) == torch.device("cpu") == module_device(torch.nn.Identity())
    assert module_device(model.to(META)) == META
    state = torch.get_rng_state()
    with fork_rng(torch.device("cpu")):
        torch.manual_seed(5)
        torch.rand(3)
    assert torch.equal(state, torch.get_rng_state())  # the caller's stream is left as it was
    with fork_rng(META):  # meta draws no values: the CPU's stream alone is forked
        torch.manual_seed(5)
    assert torch.equal(state, torch.get_rng_state())
    # a CPU generator draws as torch.Generator().manual_seed always did; meta's is a CPU one
    assert torch.equal(torch.rand(4, generator=generator(torch.device("cpu"), 3)),
                       torch.rand(4, generator=torch.Generator().manual_seed(3)))  # fmt: skip
    assert torch.randn(2, generator=generator(META, 3), device=META).device == META


# -- runs ---------------------------------------------------------------------------------------

TINY = ["--epochs", "1", "--limit", "200", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A VAE with a 2-D latent, a VQ-VAE with its code prior, a VQ-VAE without one (to train its
    prior again), and a VAE of points in the plane (for vaelab quality without a classifier)."""
    root = tmp_path_factory.mktemp("runs")
    out = {"vae": root / "vae", "vq": root / "vq", "ring": root / "ring"}
    for name, flags in (
        ("vae", ["--data", "digits", "--binarize", "threshold", "--hidden", "16", "--latent-dim", "2"]),
        ("vq", ["--model", "vqvae", "--data", "digits", "--binarize", "threshold", "--codebook-size", "6",
                "--code-dim", "3", "--resnet-channels", "4", "--res-blocks", "1"]),
        ("ring", ["--data", "ring8", "--binarize", "none", "--likelihood", "gaussian", "--hidden", "16",
                  "--latent-dim", "2", "--limit", "500"]),
    ):  # fmt: skip
        proc = run_cli("train", *TINY, *flags, "--out", str(out[name]))
        assert proc.returncode == 0, proc.stderr
    out["vq-bare"] = root / "vq-bare"
    shutil.copytree(out["vq"], out["vq-bare"])
    proc = run_cli("prior", str(out["vq"]), *PRIOR)
    assert proc.returncode == 0, proc.stderr
    codes = root / "codes.npy"
    np.save(codes, np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32))
    out["codes"] = codes
    return out


PRIOR = ["--epochs", "1", "--layers", "1", "--channels", "4", "--batch-size", "64", "--quiet"]


def _command(name: str, runs: dict[str, Path], out: Path) -> list[str]:
    """A small command line of each computing command; files it writes go to ``out``."""
    vae, o = str(runs["vae"]), lambda f: str(out / f)
    return {
        "evaluate": ["evaluate", vae, "--k", "20", "--limit", "10", "--bounds", "5", "--json", "--quiet"],
        "diagnose": ["diagnose", vae, "--k-list", "1,5", "--reps", "3", "--batch", "10", "--json", "--quiet",
                     "-o", o("snr.png")],
        "gaps": ["gaps", vae, "--limit", "3", "--k", "20", "--steps", "3", "--samples", "2", "--json", "--quiet"],
        "sample": ["sample", vae, "-n", "4", "-o", o("samples.png")],
        "prior": ["prior", str(out / "vq"), *PRIOR],
        "reconstruct": ["reconstruct", vae, "-n", "4", "-o", o("reconstructions.png")],
        "score": ["score", vae, "--bound", "iwae:3", "--draws", "2", "--limit", "10", "-o", o("scores.csv"), "--json",
                  "--quiet"],
        "encode": ["encode", vae, "-o", o("codes.npz"), "--limit", "10", "--samples", "2"],
        "decode": ["decode", vae, str(runs["codes"]), "-o", o("decoded.npy")],
        "quality": ["quality", str(runs["ring"]), "--n", "200", "--json"],
        "traverse": ["traverse", vae, "--steps", "3", "-o", o("traversal.png")],
        "interpolate": ["interpolate", vae, "--from", "0", "--to", "1", "--steps", "3", "-o", o("interpolation.png")],
        "report": ["report", vae, "-o", o("report.html")],
    }[name]  # fmt: skip


def _written(out: Path) -> dict[str, object]:
    """What a command wrote under ``out``, comparable between runs of it: arrays by value (a .npz
    records when it was written), the report without its creation time, other files by bytes."""
    found: dict[str, object] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        key = str(path.relative_to(out))
        if path.suffix == ".npz":
            with np.load(path) as arrays:
                found[key] = {name: arrays[name].tolist() for name in arrays.files}
        elif path.suffix == ".html":
            found[key] = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "TIME", path.read_text())
        elif path.suffix == ".lock" or path.name == "metrics.jsonl" or path.parent.name == "checkpoint":
            continue  # a lock file, and records with the seconds training took
        else:
            found[key] = path.read_bytes()
    return found


def _snapshot(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))}


def test_every_computing_command_has_the_device_flag():
    """--device on every command but train (its device is its own) and compare (it computes nothing),
    each defaulting to auto."""
    parser = _build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    with_flag = {name for name, p in sub.choices.items() if any("--device" in a.option_strings for a in p._actions)}
    assert with_flag - {"train"} == set(DEVICE_COMMANDS) == set(sub.choices) - {"train", "compare"}
    for name in DEVICE_COMMANDS:
        action = next(a for a in sub.choices[name]._actions if "--device" in a.option_strings)
        assert action.default == "auto"


@pytest.mark.parametrize("name", DEVICE_COMMANDS)
def test_device_cpu_and_auto_give_the_same_output_as_no_flag(name, runs, tmp_path, capsys):
    results = []
    for i, flags in enumerate(([], ["--device", "cpu"], ["--device", "auto"])):
        out = tmp_path / str(i)
        out.mkdir()
        if name == "prior":
            shutil.copytree(runs["vq-bare"], out / "vq")
        proc = run_cli(*_command(name, runs, out), *flags)
        assert proc.returncode == 0, proc.stderr
        stdout = proc.stdout.replace(str(out), "OUT")
        results.append((stdout, _written(out)))
    assert results[0][0].strip() or results[0][1], "the command gave nothing to compare"
    if GPU or MPS:  # auto is a GPU there: the same keys and files, other random draws
        assert results[0] == results[1]
    else:
        assert results[0] == results[1] == results[2]


@pytest.mark.skipif(GPU, reason="this machine has a GPU")
@pytest.mark.parametrize("name", DEVICE_COMMANDS)
def test_a_device_this_machine_lacks_is_one_line_and_writes_nothing(name, runs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    if name == "prior":
        shutil.copytree(runs["vq-bare"], out / "vq")
    before = {key: _snapshot(runs[key]) for key in ("vae", "vq", "ring")}
    inside = _snapshot(out)
    for device in ("cuda", "cuda:1"):
        proc = run_cli(*_command(name, runs, out), "--device", device)
        assert_one_line_error(proc, f"--device {device}", "not available here")
        assert "device=" not in proc.stderr  # the CLI speaks in flags
    assert_one_line_error(run_cli(*_command(name, runs, out), "--device", "tpu"), "unknown --device tpu")
    assert _snapshot(out) == inside
    assert {key: _snapshot(runs[key]) for key in ("vae", "vq", "ring")} == before


# -- the library on the meta device -------------------------------------------------------------


def test_load_puts_the_model_and_its_code_prior_on_the_device(runs):
    model = vaelab.load(runs["vq"], device="cpu")
    assert module_device(model).type == "cpu" and module_device(model.code_prior).type == "cpu"
    meta = vaelab.load(runs["vq"], device=META)
    assert all(t.device == META for t in (*meta.parameters(), *meta.buffers()))
    assert all(t.device == META for t in meta.code_prior.parameters())
    assert not meta.training and not meta.code_prior.training
    with pytest.raises(ConfigError, match="device="):  # refused before anything is read
        vaelab.load(runs["vae"] / "missing", device="tpu")
    if not GPU:
        with pytest.raises(ConfigError, match="device='cuda'"):
            vaelab.load(runs["vae"], device="cuda")


def test_a_code_prior_interrupted_on_one_device_continues_on_the_cpu(runs, tmp_path):
    """The prior's checkpoint holds CPU tensors whatever device wrote it, so an interrupted prior
    continues elsewhere (here: started with device='auto', stopped after its first epoch, and
    continued with device='cpu'); the weights load on the CPU."""
    from vaelab.core.files import CHECKPOINT_DIR, CHECKPOINT_FILE, load_tensors
    from vaelab.runs.codeprior import PriorConfig, fit_code_prior

    run = tmp_path / "vq"
    shutil.copytree(runs["vq-bare"], run)
    config = PriorConfig(layers=1, channels=4, epochs=2, batch_size=64)

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_code_prior(run, config, progress=False, callbacks=[stop], device="auto")
    tensors, _ = load_tensors(run / "prior" / CHECKPOINT_DIR / CHECKPOINT_FILE)
    assert all(t.device.type == "cpu" for t in tensors.values())
    assert fit_code_prior(run, config, progress=False, device="cpu").epochs == 2
    assert module_device(vaelab.load(run).code_prior).type == "cpu"


def _meta_models(runs):
    """Trained runs loaded on meta, and models of other posteriors and priors built there."""
    yield "vae run", vaelab.load(runs["vae"], device=META), (1, 8, 8)
    for posterior, prior, layers in (("full", "mog:3", 1), ("planar:2", "standard", 1), ("iaf:2", "mog:3", 1),
                                     ("gaussian", "vamp:3", 1), ("gaussian", "standard", 2)):  # fmt: skip
        model = {"posterior": posterior, "prior": prior, "hidden": [8], "latent_dim": 2, "layers": layers}
        config = cfg.build({"model": model})
        yield f"{posterior}/{prior}/{layers}", model_from_config(config, (6,)).to(META).eval(), (6,)


def test_estimators_scores_and_codes_run_on_the_meta_device(runs):
    from vaelab.evaluation.evaluate import log_likelihood
    from vaelab.evaluation.sampling import reconstruct, sample_images
    from vaelab.evaluation.scores import decode_means, encode_codes, score

    for name, model, event in _meta_models(runs):
        x = torch.empty(4, *event, device=META)
        ll = log_likelihood(model, x, 8, rows=16, bounds=(2,))  # several passes and chunks, with k-hat
        fields = [t for t in ll if isinstance(t, torch.Tensor)]
        assert all(t.device == META for t in fields), name
        assert ll.log_likelihood.shape == (4,) and ll.bounds.shape == (4, 1)
        for bound in ("elbo", "iwae:2", "is:8"):
            s = score(model, x, bound, draws=2)
            assert s.score.device == META and s.score.shape == (4,), (name, bound)
        codes = encode_codes(model, x, samples=2)
        assert all(t.device == META for t in codes) and codes.samples.shape == (4, 2, model.latent_dim), name
        z = torch.empty(3, model.latent_dim, device=META)
        assert decode_means(model, z).shape == (3, *event) and decode_means(model, z).device == META
        assert sample_images(model, 3).device == META, name
        assert reconstruct(model, x).device == META, name


@pytest.mark.parametrize("name", ["gan", "vaegan", "aae", "alphagan", "veegan"])
def test_the_adversarial_models_sample_and_reconstruct_on_the_meta_device(name):
    from vaelab.evaluation.sampling import can_reconstruct, reconstruct, sample_images

    config = cfg.build({"model": {"model": name, "hidden": [8], "latent_dim": 2, "likelihood": "gaussian"},
                        "data": {"binarize": "none"}})  # fmt: skip
    model = model_from_config(config, (6,)).to(META).eval()
    assert sample_images(model, 3).device == META
    if can_reconstruct(model):
        assert reconstruct(model, torch.empty(4, 6, device=META)).device == META


def test_the_per_example_fit_starts_and_scores_on_the_meta_device(runs):
    """fit_local's starting point and its final ELBO (its steps report a history of numbers,
    which meta tensors do not have)."""
    from vaelab.inference.local import fit_local

    for name, model, event in _meta_models(runs):
        if getattr(model, "layer_sizes", None) is not None:
            continue  # per-example fits are for one stochastic layer
        fit = fit_local(model, torch.empty(4, *event, device=META), steps=0, eval_samples=4)
        assert fit.elbo.device == META and fit.params.device == META, name


def test_a_vqvae_and_its_code_prior_run_on_the_meta_device(runs):
    from vaelab.evaluation.sampling import sample_images
    from vaelab.runs.codeprior import code_grids, code_log_likelihood

    model = vaelab.load(runs["vq"], device=META)
    x = torch.empty(3, 1, 8, 8, device=META)
    grids = code_grids(model, x)
    assert grids.device == META and grids.shape[0] == 3
    assert code_log_likelihood(model.code_prior, grids.float()).bound.device == META
    assert sample_images(model, 2).device == META


def test_data_on_the_cpu_and_a_model_elsewhere_gives_results_on_the_cpu(runs):
    """The commands keep data on the CPU and the model on --device: each batch moves to the model,
    and per-example results come back to the data's device. Here both are the CPU, through the
    same code path, and equal to the model's own numbers."""
    from vaelab.evaluation.scores import decode_means, encode_codes

    model = vaelab.load(runs["vae"], device="cpu")
    x = vaelab.load_dataset("digits", split="test", binarize="threshold", limit=5)
    codes = encode_codes(model, x)
    with torch.no_grad():
        torch.testing.assert_close(codes.mean, model.encode(x).mean)
    assert decode_means(model, codes.mean).device.type == "cpu"


def test_readme_documents_the_device_flag():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "--device auto|cpu|cuda|cuda:N|mps" in text and "device=" in text
