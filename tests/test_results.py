"""Results kept in the run directory: appended, replaced when re-run, strict JSON."""

from __future__ import annotations

import json

import pytest

from vaelab.core.errors import RunError
from vaelab.runs.results import RESULT_FILES, load_results, save_result


def test_records_are_appended_and_replaced_by_equal_options(tmp_path):
    save_result(tmp_path, "evaluate", {"k": 10, "split": "test"}, {"log_likelihood": -90.0})
    save_result(tmp_path, "evaluate", {"k": 100, "split": "test"}, {"log_likelihood": -89.0})
    save_result(tmp_path, "evaluate", {"k": 10, "split": "test"}, {"log_likelihood": -91.0})
    records = load_results(tmp_path)["evaluate"]
    assert [(r["options"]["k"], r["result"]["log_likelihood"]) for r in records] == [(100, -89.0), (10, -91.0)]
    assert load_results(tmp_path)["gaps"] == [] and load_results(tmp_path)["diagnose"] == []


def test_non_finite_values_are_stored_as_null(tmp_path):
    path = save_result(tmp_path, "gaps", {"seed": 0}, {"gap": float("nan"), "xs": [1.0, float("inf")]})
    assert path.name == RESULT_FILES["gaps"]
    stored = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert stored[0]["result"] == {"gap": None, "xs": [1.0, None]}


def test_a_corrupt_results_file_is_a_one_line_error_and_left_alone(tmp_path):
    (tmp_path / "evaluation.json").write_text("{not json")
    with pytest.raises(RunError, match="evaluation.json is not a results file"):
        save_result(tmp_path, "evaluate", {}, {})
    assert (tmp_path / "evaluation.json").read_text() == "{not json"


def test_unknown_command_is_refused(tmp_path):
    with pytest.raises(ValueError, match="command must be one of"):
        save_result(tmp_path, "sample", {}, {})
