"""The README's commands, code and tables are run or checked, so the docs cannot drift."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

from vaelab.cli.main import build_parser as _build_parser, main
from vaelab.runs import config as cfg

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_two_commands():
    first = re.search(r"```\w*\n(.*?)```", README, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_every_cli_example_parses():
    parser = _build_parser()
    lines = [line.split("  #")[0].strip() for block in blocks("bash") for line in block.splitlines()]
    examples = [line for line in lines if line.startswith("vaelab ")]
    assert len(examples) >= 6
    for line in examples:
        parser.parse_args(shlex.split(line)[1:])


def test_every_configuration_flag_is_documented():
    for cls in cfg.SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert f"`--{f.name.replace('_', '-')}`" in README, f.name


def test_toml_example_is_a_valid_configuration():
    import tomllib

    (toml,) = blocks("toml")
    built = cfg.build(tomllib.loads(toml))
    assert built.data.data == "fashion-mnist"


def test_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--binarize", "threshold", "--hidden", "32", "--latent-dim", "4",
                 "--epochs", "2", "--out", "runs/demo", "--quiet"]) == 0
    namespace: dict = {}
    checked = 0
    for code in blocks("python"):
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own docs
        checked += check_shape_comments(code, namespace)
    assert checked >= 3
    assert namespace["ll"].log_likelihood.shape == (360,)
    # the take-away and picture functions exported at the top level
    assert namespace["s"].score.shape == namespace["s"].stderr.shape == (360,) and namespace["s"].khat.shape == (360,)
    latent = namespace["codes"].mean.shape[1]
    assert namespace["codes"].samples.shape == (360, 3, latent) and namespace["codes"].scale.shape == (360, latent) and namespace["means"].shape == (360, 1, 8, 8)
    assert 0.0 <= namespace["auc"] <= 1.0
    assert namespace["t"].images.shape == (2, 7, 1, 8, 8) and namespace["path"].method == "spherical"
    assert namespace["page"].path == Path("runs/demo/report.html") and namespace["page"].path.is_file()
    assert namespace["result"].epochs == 5
    # your own networks: the run directory is rebuilt from the factory given by name
    assert namespace["mine_again"].encoder[1].out_features == 16
    assert (tmp_path / "runs" / "mine" / "config.json").is_file()


def check_shape_comments(code: str, namespace: dict) -> int:
    """Each `name = ...  # (a, b, ...)` line of a block states the shape of ``name`` once the block
    has run: checked here, so a wrong comment fails. Returns how many were checked."""
    checked = 0
    for name, dims in re.findall(r"^(\w+) = .*#\s*\(([\d, ]+)\)", code, flags=re.M):
        value = namespace[name]
        shape = tuple(int(d) for d in dims.replace(" ", "").split(",") if d)
        assert tuple(value.shape) == shape, f"README says {name} has shape {shape}, it has {tuple(value.shape)}"
        checked += 1
    return checked


def test_benchmark_table_is_filled_in():
    for placeholder in ("BENCHMARK_TABLE", "BOUNDS_TABLE", "GAPS_TABLE", "GAPS_DISCUSSION", "VAMP_STEP", "QUALITY_SECTION", "QUALITY_TABLE",
                        "OOD_TABLE", "TWO_STAGE_TABLE"):
        assert placeholder not in README, "run the benchmarks and put their tables in the README"


def test_every_readme_train_command_is_a_valid_configuration():
    """Each `vaelab train ...` line in the README parses and builds a valid configuration (the
    run itself is not started)."""
    import shlex

    from vaelab.cli.main import build_parser as _build_parser
    from vaelab.cli.common import config_from_args as _config_from_args

    parser = _build_parser()
    lines = [line.split("#")[0].strip() for code in blocks("bash") for line in code.splitlines()]
    commands = [line for line in lines if line.startswith("vaelab train") and "--resume" not in line]
    assert len(commands) >= 5
    for line in commands:
        args = parser.parse_args(shlex.split(line)[1:])
        _config_from_args(args)  # raises ConfigError on an impossible combination
