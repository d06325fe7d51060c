"""Runs trained by vaelab before the move to packages (main at d3914ef, tests/fixtures/main-d3914ef)
load and resume bitwise: each fixture is a run stopped early, next to the weights the same
command reached when run for one more epoch in one go on that version."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab.runs.lifecycle import resume_run

FIXTURES = Path(__file__).parent / "fixtures" / "main-d3914ef"


@pytest.mark.parametrize("run, epochs, reference", [("vae2", 3, "after-3-epochs"), ("aae1", 2, "after-2-epochs")])
def test_a_run_of_the_previous_layout_loads_and_resumes_bitwise(tmp_path, run, epochs, reference):
    copy = tmp_path / run
    shutil.copytree(FIXTURES / run, copy)
    model = vaelab.load(copy)  # the old config.json builds the same model
    saved = load_file(FIXTURES / run / "model.safetensors")
    assert set(saved) == set(model.state_dict())
    assert all(torch.equal(saved[name], value) for name, value in model.state_dict().items())
    resume_run(copy, epochs=epochs, progress=False)
    expected = load_file(FIXTURES / run / f"{reference}.safetensors")
    resumed = load_file(copy / "model.safetensors")
    assert set(resumed) == set(expected)
    different = [name for name in expected if not torch.equal(resumed[name], expected[name])]
    assert not different, f"resumed weights differ from the uninterrupted run's in {different}"
