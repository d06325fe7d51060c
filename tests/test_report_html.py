"""`vaelab report`: one self-contained HTML page per run, for every model family, with every
value from the run escaped; opened in headless Chromium when one is installed."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_cli import assert_one_line_error, run_cli

from vaelab.report.html import CSP, write_report
from vaelab.runs.results import save_result

TINY = ["--data", "digits", "--binarize", "threshold", "--limit", "200", "--epochs", "2", "--quiet"]
IMG = re.compile(r"<img\b[^>]*>")
SRC = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"<>]*">')


def _train(out: Path, *flags: str) -> Path:
    proc = run_cli("train", *TINY, *flags, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def vae2(tmp_path_factory) -> Path:
    """A tiny VAE with a 2-D latent and stored results of each command."""
    run = _train(tmp_path_factory.mktemp("report") / "vae2", "--hidden", "16", "--latent-dim", "2")
    save_result(run, "evaluate", {"k": 50, "split": "test"}, {"log_likelihood": -31.25, "elbo": -33.5, "n_examples": 20})
    save_result(run, "gaps", {"limit": 10}, {"approximation_gap": 1.75, "amortization_gap": 0.5})
    save_result(run, "diagnose", {"k_list": [1, 5]}, {"k": [1, 5], "encoder_snr": [0.25, 0.125]})
    return run


def _images(page: str) -> list[Image.Image]:
    """Every image of the page, decoded; each must be an inline PNG."""
    tags = IMG.findall(page)
    found = SRC.findall(page)
    assert len(found) == len(tags), "every image is an inline data: PNG"
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


def test_report_has_every_section_for_a_vae_with_a_2d_latent(vae2, tmp_path):
    out = tmp_path / "page.html"
    proc = run_cli("report", str(vae2), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(str(out)) and "not shown" not in proc.stdout
    page = out.read_text()
    for title in ("Configuration", "Training curves", "Evaluations and diagnostics", "Samples", "Reconstructions",
                  "Latent map", "Traversals", "Interpolation"):  # fmt: skip
        assert f"<h2>{title}</h2>" in page
    # the stored results, each with its options
    for text in ("-31.25", "-33.5", "1.75", "0.125", "k=50", "limit=10", "vaelab evaluate", "vaelab gaps", "vaelab diagnose"):
        assert text in page, text
    assert "Spherical interpolation (the prior is N(0, I))" in page
    config = json.loads((vae2 / "config.json").read_text())
    assert f"<td class=\"v\">{config['train']['lr']}</td>" in page
    assert "<th>dequantize</th><td class=\"v\">false</td>" in page and "<th>beta</th><td class=\"v\">null</td>" in page
    images = _images(page)
    assert len(images) == 6  # curves, samples, reconstructions, latent map, traversal, interpolation
    assert all(im.format == "PNG" and im.size[0] > 50 and im.size[1] > 20 for im in images)
    # self-contained: nothing to fetch, nothing to run
    assert f'content="{CSP}"' in page and "default-src 'none'" in CSP
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert not re.search(r'\b(?:src|href)="(?!data:)', page)


def test_report_is_written_into_the_run_by_default(vae2):
    proc = run_cli("report", str(vae2))
    assert proc.returncode == 0, proc.stderr
    assert (vae2 / "report.html").exists()


def test_report_leaves_out_what_does_not_apply_and_says_why(tmp_path):
    """Every family gets a page; sections that do not apply are named with the reason."""
    gan = _train(tmp_path / "gan", "--model", "gan", "--hidden", "16", "--latent-dim", "3", "--epochs", "1")
    proc = run_cli("report", str(gan))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "  not shown: Evaluations and diagnostics: none stored yet; vaelab evaluate, gaps and diagnose keep their results in the run directory"
    assert "  not shown: Reconstructions: --model gan has no encoder to reconstruct with" in lines
    assert lines[-1].endswith(str(gan / "report.html"))
    report = write_report(gan)
    omitted = dict(report.omitted)
    assert report.sections == ["Configuration", "Training curves", "Samples"]
    for title in ("Reconstructions", "Latent map", "Traversals", "Interpolation"):
        assert "no encoder" in omitted[title]
    page = report.path.read_text()
    assert "Not shown: --model gan has no encoder to reconstruct with" in page
    assert len(_images(page)) == 2  # the players' loss curves and the samples

    aae = _train(tmp_path / "aae", "--model", "aae", "--hidden", "16", "--latent-dim", "3", "--epochs", "1")
    report = write_report(aae)
    assert {"Samples", "Reconstructions", "Traversals", "Interpolation"} <= set(report.sections)
    assert "2-D latent" in dict(report.omitted)["Latent map"]
    page = report.path.read_text()
    assert "activity Cov_x E[z_d|x]" in page  # a deterministic encoder has no KL to rank by

    vq = _train(tmp_path / "vq", "--model", "vqvae", "--resnet-channels", "8", "--res-blocks", "1", "--codebook-size", "8",
                "--code-dim", "4", "--epochs", "1")  # fmt: skip
    report = write_report(vq)
    omitted = dict(report.omitted)
    assert "Reconstructions" in report.sections and "vaelab prior" in omitted["Samples"]
    for title in ("Latent map", "Traversals", "Interpolation"):
        assert "discrete codes" in omitted[title]

    ring = _train(tmp_path / "ring", "--data", "ring8", "--binarize", "none", "--likelihood", "gaussian", "--hidden", "16",
                  "--latent-dim", "2", "--epochs", "1")  # fmt: skip
    report = write_report(ring)
    assert "Samples" in report.sections  # a scatter plot over the data
    for title in ("Reconstructions", "Latent map", "Traversals", "Interpolation"):
        assert "points in the plane" in dict(report.omitted)[title]


def test_report_of_a_run_whose_model_cannot_be_loaded(vae2, tmp_path):
    run = tmp_path / "broken"
    shutil.copytree(vae2, run)
    (run / "model.safetensors").unlink()
    report = write_report(run)
    assert report.sections[:2] == ["Configuration", "Training curves"]
    assert "the model cannot be loaded" in dict(report.omitted)["Samples"]


PAYLOADS = ('<script>alert("config")</script>', '"><img src=x onerror=alert(1)>', "<svg onload=alert(2)>")


def _crafted(vae2: Path, tmp_path: Path, loadable: bool) -> Path:
    """A copy of the run whose directory name, config.json, metrics and stored results carry
    script payloads."""
    run = tmp_path / f'run"><img src=x onerror=alert(0)>{int(loadable)}'
    shutil.copytree(vae2, run)
    config = json.loads((run / "config.json").read_text())
    config["data"]["data_dir"] = PAYLOADS[0]  # the model still loads (digits refuses it: the data sections say so)
    if not loadable:
        config["model"]["activation"] = PAYLOADS[1]  # refused, and the error quotes it
    config["note"] = PAYLOADS[2]
    (run / "config.json").write_text(json.dumps(config))
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"epoch": 3, PAYLOADS[1]: PAYLOADS[2], "train_bound": -40.0}) + "\n")
    save_result(run, "evaluate", {"split": PAYLOADS[0]}, {PAYLOADS[1]: PAYLOADS[2], "elbo": -30.0})
    return run


@pytest.mark.parametrize("loadable", [True, False])
def test_values_from_the_run_are_escaped(vae2, tmp_path, loadable):
    run = _crafted(vae2, tmp_path, loadable)
    page = write_report(run).path.read_text()
    for payload in (*PAYLOADS, "<img src=x"):
        assert payload not in page
    assert "<script" not in page and "<svg" not in page and "onerror=alert" not in page.replace("onerror=alert(", "")
    assert len(IMG.findall(page)) == len(SRC.findall(page))  # every <img> tag is one of ours
    for payload in PAYLOADS:  # the values are shown, escaped
        assert html.escape(payload, quote=True) in page
    assert html.escape(run.name, quote=True) in page
    if not loadable:
        assert "the model cannot be loaded" in page


def test_report_refuses_bad_arguments_in_one_line(vae2, tmp_path):
    assert_one_line_error(run_cli("report", str(tmp_path / "nope")), "does not exist")
    assert_one_line_error(run_cli("report", str(vae2), "-o", str(tmp_path / "page.png")), ".html")
    assert not (tmp_path / "page.png").exists()


# -- in a browser ----------------------------------------------------------------------------------

PROBE = """<img id="control" alt="a broken image, which the probe must see as broken" src="data:image/png;base64,AAAA">
<script>
window.addEventListener("load", () => {
  const seen = [...document.images].map(i => ({id: i.id, ok: i.complete && i.naturalWidth > 0}));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script>
"""


def _chromium(url: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", *flags, url], capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(vae2, tmp_path):
    """The page as written logs nothing to the console (a blocked fetch, a CSP violation or a
    script error would); a copy with a probe script (allowed by a widened policy) records that
    every image decoded, and that a broken control image is seen as broken."""
    page = write_report(vae2, tmp_path / "report.html").path
    proc = _chromium(page.as_uri(), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<h2>Traversals</h2>" in proc.stdout
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []

    text = page.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace(CSP, CSP + "; script-src 'unsafe-inline'").replace("</body>", PROBE + "</body>"))
    proc = _chromium(probe.as_uri(), "--dump-dom", "--virtual-time-budget=10000")
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, flags=re.S)
    assert found, proc.stderr[-2000:]
    seen = json.loads(html.unescape(found.group(1)))
    ours = [s for s in seen if s["id"] != "control"]
    assert len(ours) == len(IMG.findall(text)) == 6
    assert all(s["ok"] for s in ours)
    assert [s["ok"] for s in seen if s["id"] == "control"] == [False]
