"""The benchmark scripts of issue 12 run end to end on tiny data (digits, one epoch), so a broken
call in them (a renamed helper, a changed keyword) fails here, not an hour into `make bench-*`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))

    def load(name: str):
        import importlib

        return importlib.import_module(name)

    return load


def test_ood_benchmark_runs_and_its_table_matches_its_json(bench, tmp_path, capsys):
    ood = bench("bench_ood")
    out = tmp_path / "ood"
    code = ood.main(["--data", "digits", "--epochs", "1", "--time-limit", "60", "--k", "4", "--hidden", "16",
                     "--latent-dim", "2", "--limit", "60", "--out", str(out), "--json", str(tmp_path / "ood.json"), "--quiet"])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "ood.json").read_text())
    assert result["protocol"]["trained_on"].startswith("vaelab train --classes")
    for bound in ("is:4", "elbo"):
        s = result["scores"][bound]
        assert 0.0 <= s["auroc"] <= 1.0
        with np.load(out / "class_9.npz") as f:
            assert s["n_class_9"] == len(f["y_test"]) > 0 and set(f["y_test"].tolist()) == {9}
        assert np.isfinite(s["mean_class_9"]) and np.isfinite(s["mean_heldout_0_8"])
        assert set(s["mean_by_class"]) <= {str(c) for c in range(10)} and "9" in s["mean_by_class"]
    table = capsys.readouterr().out
    assert f"| `is:4` | {result['scores']['is:4']['auroc']:.3f} |" in table


def test_second_correctness_benchmark_runs(bench, tmp_path):
    c2 = bench("bench_correctness2")
    out = tmp_path / "c2.json"
    assert c2.main(["--parts", "weights,upper,coverage", "--replicas", "200", "--upper-n", "10", "--redraws", "5",
                    "--coverage-n", "50", "--json", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result["weights"]) == {"10", "100"} and set(result["upper"]) == {"10", "100"}
    assert result["coverage"]["5"]["expected"] > result["coverage"]["3"]["expected"]


def test_two_stage_benchmark_runs_and_draws_its_figure(bench, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))  # the quality classifier of digits, never the user's
    two = bench("bench_two_stage")
    figure = tmp_path / "samples.png"
    code = two.main(["--data", "digits", "--epochs", "1", "--time-limit", "60", "--time-limit2", "60", "--n", "100",
                     "--hidden", "16", "--hidden2", "16", "--latent-dim", "3", "--limit", "200", "--out", str(tmp_path / "two"),
                     "--json", str(tmp_path / "two.json"), "--figure", str(figure), "--quiet"])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "two.json").read_text())
    assert [r["sampler"] for r in result["rows"]] == ["prior", "GMM(10)", "stage 2", "stage 2, means only"]
    assert all(np.isfinite(r["fd"]) and 0 <= r["precision"] <= 1 for r in result["rows"])
    assert len(result["codes"]["std_of_means"]) == 3
    codes = result["codes"]
    assert len(codes["aggregate_variance"]) == 3 and all(0 < share <= 1 for share in codes["means_share_of_variance"])
    stage2_config = json.loads((tmp_path / "two" / "stage2" / "config.json").read_text())
    assert stage2_config["data"]["codes"] == "draw"  # stage 2 learns the aggregate posterior
    ablation_config = json.loads((tmp_path / "two" / "stage2-means" / "config.json").read_text())
    assert ablation_config["data"]["codes"] == "mean"  # the ablation, the means alone
    from PIL import Image

    with Image.open(figure) as image:
        assert image.size[0] > 100 and image.size[1] > 50
    assert "| stage 2 |" in capsys.readouterr().out


def test_foundation_benchmark_reports_rates_shares_of_peak_and_ratios(bench, tmp_path, capsys):
    foundation = bench("bench_foundation")
    out = tmp_path / "foundation.json"
    code = foundation.main(["--data", "digits", "--limit", "200", "--epochs", "1", "--eval-images", "3", "--k", "20",
                            "--eval-repeats", "1", "--iwae-k", "4", "--iwae-steps", "1", "--gemm-size", "128",
                            "--compile", "off", "--json", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert result["gemm_peak_gflops_per_s"] > 0 and result["compiled"] is False
    # sampled at the start, between training and evaluation, after evaluation and at the end; the best counts
    assert len(result["gemm_peaks_measured"]) == 4
    assert result["gemm_peak_gflops_per_s"] == max(result["gemm_peaks_measured"])
    # 3 x the forward products of the 64-200-200-100 encoder and 50-200-200-64 decoder, per image
    per_image = 3 * 2 * (64 * 200 + 200 * 200 + 200 * 100 + 50 * 200 + 200 * 200 + 200 * 64)
    assert result["train_epoch_gflop"] == pytest.approx(200 * per_image / 1e9)
    for key in ("train_vaelab", "train_plain", "eval_vaelab", "eval_minimal", "iwae"):
        assert np.isfinite(result[key]["gflops_per_s"]) and 0 < result[key]["percent_of_peak"]
    for key in ("train_speedup_vaelab_over_plain", "eval_speedup_vaelab_over_minimal", "eval_log_likelihood_vaelab"):
        assert np.isfinite(result[key])
    assert result["eval_peak_memory_mb"] >= result["eval_memory_before_mb"] > 0
    parts = result["train_parts_seconds"]
    assert parts["sum"] == pytest.approx(parts["products"] + parts["adam"] + parts["data"]) and min(parts.values()) > 0
    # the parts alone are a floor: a whole epoch cannot beat its own products, Adam steps and data
    assert result["train_epoch_seconds_vaelab"] > parts["sum"] and result["eval_seconds_vaelab"] > result["eval_products_alone_seconds"]
    assert result["train_speedup_ceiling"] == pytest.approx(result["train_epoch_seconds_plain"] / parts["sum"])


def test_the_change_table_reads_a_replaced_module_from_git_history_or_skips_its_row(bench):
    import subprocess

    changes = bench("bench_speed_changes")
    assert changes._previous_module("fused", "0" * 40) is None  # no such commit: the row is left out
    known = subprocess.run(["git", "cat-file", "-e", "406c2ad^{commit}"], cwd=ROOT, capture_output=True)
    if known.returncode != 0:
        pytest.skip("this checkout has no history back to 406c2ad (a shallow clone)")
    old = changes._previous_module("fused", "406c2ad")
    # that version's evaluator: no fold() yet, its own softplus_sum_, and no log_cosh_sum_
    assert hasattr(old, "FusedLogWeights") and not hasattr(old.FusedLogWeights, "fold")
    assert hasattr(old, "softplus_sum_") and not hasattr(old, "log_cosh_sum_")
