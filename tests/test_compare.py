"""`vaelab evaluate`, `gaps` and `diagnose` store what they print; `vaelab compare` shows runs side
by side from what is stored, and refuses bad input in one line without touching the runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, run_cli

from vaelab.cli.main import main
from vaelab.runs.results import json_finite, load_results

TINY = ["--data", "digits", "--binarize", "threshold", "--hidden", "16", "--limit", "200", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "a", root / "b"
    assert main(["train", *TINY, "--latent-dim", "2", "--epochs", "2", "--out", str(a)]) == 0
    assert main(["train", *TINY, "--latent-dim", "3", "--epochs", "3", "--out", str(b)]) == 0
    return a, b


EVALUATE = ["--k", "20", "--limit", "10", "--bounds", "1,5", "--quiet"]


@pytest.fixture(scope="module")
def compared(runs) -> tuple[Path, Path]:
    """The two runs with results stored: an evaluation in both, gaps in b only."""
    a, b = runs
    for run in runs:
        assert run_cli("evaluate", str(run), *EVALUATE).returncode == 0
    assert run_cli("gaps", str(b), "--limit", "4", "--k", "20", "--steps", "5", "--quiet").returncode == 0
    return runs


def _json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _stored(run: Path, command: str, options: dict) -> dict:
    (record,) = [r for r in load_results(run)[command] if r["options"] == options]
    return record["result"]


def test_evaluate_stores_what_it_prints_for_every_method(runs):
    a, _ = runs
    printed = _json(run_cli("evaluate", str(a), *EVALUATE, "--json"))
    options = {"method": "is", "split": "test", "limit": 10, "seed": 0, "k": 20, "bounds": [1, 5], "proposal": "posterior"}
    assert _stored(a, "evaluate", options) == json_finite(printed)
    printed = _json(run_cli("evaluate", str(a), "--method", "ais", "--steps", "3", "--chains", "2", "--limit", "4", "--json", "--quiet"))
    options = {"method": "ais", "split": "test", "limit": 4, "seed": 0, "steps": 3, "chains": 2, "leapfrog": 10, "ais_start": "prior"}
    assert _stored(a, "evaluate", options) == json_finite(printed)
    printed = _json(run_cli("evaluate", str(a), "--method", "bdmc", "--steps", "3", "--chains", "2", "--limit", "3", "--json", "--quiet"))
    options = {"method": "bdmc", "limit": 3, "seed": 0, "steps": 3, "chains": 2, "leapfrog": 10, "ais_start": "prior"}
    assert _stored(a, "evaluate", options) == json_finite(printed)
    # the table is stored too: the same options replace the earlier record instead of adding one
    assert run_cli("evaluate", str(a), *EVALUATE).returncode == 0
    assert len(load_results(a)["evaluate"]) == 3


def test_gaps_and_diagnose_store_what_they_print(runs, tmp_path):
    _, b = runs
    printed = _json(run_cli("gaps", str(b), "--limit", "4", "--k", "20", "--steps", "5", "--json", "--quiet"))
    options = {"method": "is", "split": "test", "limit": 4, "seed": 0, "k": 20, "steps": 5, "lr": 0.01, "samples": 10}
    assert _stored(b, "gaps", options) == json_finite(printed)
    printed = _json(run_cli("diagnose", str(b), "--k-list", "1,4", "--reps", "3", "--batch", "5", "--json",
                            "-o", str(tmp_path / "snr.png")))  # fmt: skip
    (record,) = load_results(b)["diagnose"]
    assert record["result"] == json_finite(printed)
    assert record["options"]["k_list"] == [1, 4] and record["options"]["reps"] == 3 and record["options"]["batch"] == 5
    assert record["options"]["objective"] == printed["objective"]


def test_a_result_that_cannot_be_stored_is_still_printed_with_a_warning(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    (run / "evaluation.json").write_text("{not json")
    proc = run_cli("evaluate", str(run), "--k", "5", "--limit", "3", "--json", "--quiet")
    assert proc.returncode == 0 and "log_likelihood" in json.loads(proc.stdout)
    assert [line for line in proc.stderr.splitlines() if "not stored" in line][0].startswith("vaelab: warning:")
    assert (run / "evaluation.json").read_text() == "{not json"


def test_compare_json(compared, tmp_path):
    a, b = runs = compared
    plot = tmp_path / "curves.png"
    out = _json(run_cli("compare", str(a), str(b), "-o", str(plot), "--json"))
    assert set(out) == {"runs", "config", "epochs", "best_epoch", "best_valid_bound", "results", "plot"}
    assert out["runs"] == [str(a), str(b)] and out["plot"] == str(plot)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert out["config"] == {"latent_dim": [2, 3], "epochs": [2, 3]}
    assert out["epochs"] == [2, 3]
    for i, run in enumerate(runs):  # the Trainer's choice: the first epoch with the highest bound
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        best = max(records, key=lambda r: (r["valid_bound"], -r["epoch"]))
        assert out["best_epoch"][i] == best["epoch"] and out["best_valid_bound"][i] == best["valid_bound"]
    # every stored number, in one row per (command, options, metric), per run
    rows = {(r["command"], json.dumps(r["options"], sort_keys=True), r["metric"]): r for r in out["results"]}
    for i, run in enumerate(runs):
        for command, records in load_results(run).items():
            for record in records:
                if command == "evaluate" and "log_likelihood" in record["result"]:
                    row = rows[(command, json.dumps(record["options"], sort_keys=True), "log_likelihood")]
                    assert row["values"][i] == record["result"]["log_likelihood"]
                    assert row["stderr"][i] == record["result"].get("log_likelihood_stderr")
    shared = rows[("evaluate", json.dumps({"method": "is", "split": "test", "limit": 10, "seed": 0, "k": 20,
                                           "bounds": [1, 5], "proposal": "posterior"}, sort_keys=True), "L_5")]  # fmt: skip
    assert None not in shared["values"]  # both runs have it
    gaps = [r for r in out["results"] if r["command"] == "gaps"]
    assert gaps and all(r["values"][0] is None and r["values"][1] is not None for r in gaps)  # b only


def test_compare_prints_one_table(compared, tmp_path):
    a, b = compared
    out = _json(run_cli("compare", str(a), str(b), "-o", str(tmp_path / "c.png"), "--json"))
    proc = run_cli("compare", str(a), str(b), "-o", str(tmp_path / "c.png"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["a", "b"]
    (row,) = [line for line in lines if line.strip().startswith("--latent-dim")]
    assert row.split() == ["--latent-dim", "2", "3"]
    (row,) = [line for line in lines if line.strip().startswith("best validation bound")]
    assert row.split()[-2:] == [f"{v:.3f}" for v in out["best_valid_bound"]]
    assert any(line.startswith("gaps (") for line in lines)
    assert str(tmp_path / "c.png") in lines[-1]


def test_compare_errors_are_one_line_and_leave_the_runs_alone(runs, tmp_path):
    a, b = runs
    before = {p: p.read_bytes() for run in runs for p in run.rglob("*") if p.is_file()}
    assert_one_line_error(run_cli("compare", str(a), str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")), "nope", "does not exist")
    assert_one_line_error(run_cli("compare", str(a), "-o", str(tmp_path / "x.png")), "at least two")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(run_cli("compare", str(a), str(b), "-o", str(blocker / "x.png")), "cannot write", str(blocker))
    assert_one_line_error(run_cli("compare", str(a), str(b), "-o", str(tmp_path / "x.bmpx")), "image format")
    assert_one_line_error(run_cli("compare"), "RUN")
    assert not (tmp_path / "x.png").exists()
    assert {p: p.read_bytes() for run in runs for p in run.rglob("*") if p.is_file()} == before


def test_compare_shows_a_different_data_shape(runs, tmp_path):
    import shutil

    a, b = runs
    other = tmp_path / "other"
    shutil.copytree(a, other)
    config = json.loads((other / "config.json").read_text())
    config["event_shape"] = [1, 4, 4]
    (other / "config.json").write_text(json.dumps(config))
    out = _json(run_cli("compare", str(a), str(other), "-o", str(tmp_path / "c.png"), "--json"))
    assert out["config"] == {"event_shape": [[1, 8, 8], [1, 4, 4]]}
    text = run_cli("compare", str(a), str(other), "-o", str(tmp_path / "c.png")).stdout
    assert [line.split()[-2:] for line in text.splitlines() if line.strip().startswith("data shape")] == [["1,8,8", "1,4,4"]]
