"""`vaelab report`: one self-contained HTML page about a run.

The page holds the configuration, the training curves, the results that `vaelab evaluate`,
`gaps` and `diagnose` stored in the run directory, and pictures of the model (samples,
reconstructions, the 2-D latent map, traversals, interpolations), each image inline as a
``data:`` URI. It loads nothing: a Content-Security-Policy allows only inline images and
styles, so the page opens offline and nothing in it can reach the network or run a script.

A run directory is data someone may hand you: every value taken from it (configuration strings,
paths, labels, stored results, error messages) is HTML-escaped before it reaches the page.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.devices import resolve_device
from ..core.errors import UntrustedCodeError, VaelabError
from ..core.files import CONFIG_FILE, atomic_write_bytes, read_metrics
from ..runs.results import load_results
from .figures import RANKING_EXAMPLES

REPORT_FILE = "report.html"
TRAVERSAL_DIMS = 10  # dimensions shown in the report's traversal (the largest KL first)

# default-src 'none': no script, no frame, no fetch; only inline images and styles
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; word-break: break-all; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.v { font-family: ui-monospace, monospace; word-break: break-all; max-width: 60em; }
div.tables { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; }
figure { margin: .5em 0 1.5em; overflow-x: auto; }
figure img { max-width: none; display: block; }
figcaption, p.why { color: #555; font-size: .9em; }
p.why { font-style: italic; }
"""


def esc(value: Any) -> str:
    """Any value as HTML text, quotes included (safe in element text and attribute values)."""
    return html.escape(str(value), quote=True)


@dataclass
class Report:
    """What ``write_report`` wrote: the page, and the sections it left out with the reason."""

    path: Path
    sections: list[str] = field(default_factory=list)
    omitted: list[tuple[str, str]] = field(default_factory=list)


class _Page:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.sections: list[str] = []
        self.omitted: list[tuple[str, str]] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def heading(self, title: str) -> None:
        self.sections.append(title)
        self.add(f"<h2>{esc(title)}</h2>")

    def omit(self, title: str, reason: str) -> None:
        """A section that does not apply (or could not be drawn), with the reason on the page."""
        self.omitted.append((title, reason))
        self.add(f"<h2>{esc(title)}</h2>\n<p class=\"why\">Not shown: {esc(reason)}</p>")

    def image(self, png: bytes, alt: str, caption: str | None = None) -> None:
        data = base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        self.add(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>')


def _cell(value: Any, limit: int = 400) -> str:
    """A value for a table cell: numbers to 6 significant digits, other values as compact JSON."""
    if isinstance(value, float):
        text = f"{value:.6g}" if math.isfinite(value) else str(value)
    elif isinstance(value, (bool, type(None))):
        text = json.dumps(value)  # as config.json spells them: true, false, null
    elif isinstance(value, (str, int)):
        text = str(value)
    else:
        text = json.dumps(value, separators=(", ", ": "), default=str)
    if len(text) > limit:
        text = text[:limit] + f" ... ({len(text)} characters)"
    return esc(text)


def _table(rows: list[tuple[Any, Any]], head: tuple[str, str] = ("key", "value")) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td class=\"v\">{_cell(v)}</td></tr>" for k, v in rows)
    return f"<table><tr><th>{esc(head[0])}</th><th>{esc(head[1])}</th></tr>{body}</table>"


def _png(draw: Callable[[Path], Any]) -> bytes | None:
    """Runs ``draw(path)`` (a figure function of report.py) into a temporary PNG and returns its
    bytes (None when it drew nothing)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        drawn = draw(path)
        if drawn is None or not path.exists():
            return None
        return path.read_bytes()


def _configuration(page: _Page, run_dir: Path) -> dict | None:
    """The configuration as stored in config.json, section by section (read as JSON, so a file
    the model cannot be rebuilt from is still shown)."""
    path = run_dir / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        page.omit("Configuration", f"{path} cannot be read ({err})")
        return None
    if not isinstance(doc, dict):
        page.omit("Configuration", f"{path} does not hold a JSON object")
        return None
    page.heading("Configuration")
    page.add(f"<p>From {esc(path)}.</p>")
    top = [(k, v) for k, v in doc.items() if not isinstance(v, dict)]
    tables = [f"<div><h3>run</h3>{_table(top)}</div>"] if top else []
    for section, values in doc.items():
        if isinstance(values, dict):
            tables.append(f"<div><h3>{esc(section)}</h3>{_table(list(values.items()))}</div>")
    page.add(f"<div class=\"tables\">{''.join(tables)}</div>")
    return doc


def _curves(page: _Page, run_dir: Path) -> None:
    from .figures import curve_panels, curves_figure

    records = read_metrics(run_dir)
    if not records:
        page.omit("Training curves", "metrics.jsonl is missing or empty: the run has not finished an epoch")
        return
    panels = curve_panels(records)
    png = _png(lambda p: curves_figure(records, p))
    if png is None:
        page.omit("Training curves", "metrics.jsonl has none of the quantities drawn (bound, reconstruction, KL, kl_scale, "
                  "active units, mutual information, player losses)")  # fmt: skip
        return
    page.heading("Training curves")
    drawn = ", ".join(title for title, _, _ in panels)
    page.image(png, "training curves", f"{len(records)} epochs of metrics.jsonl: {drawn}.")
    last = records[-1]
    rows = [(k, v) for k, v in last.items() if not isinstance(v, (list, dict))]
    page.add("<h3>Last epoch</h3>" + _table(rows))


def _results(page: _Page, run_dir: Path) -> None:
    try:
        stored = load_results(run_dir)
    except VaelabError as err:
        page.omit("Evaluations and diagnostics", str(err))
        return
    if not any(stored.values()):
        page.omit("Evaluations and diagnostics", "none stored yet; vaelab evaluate, gaps and diagnose keep their "
                  "results in the run directory")  # fmt: skip
        return
    page.heading("Evaluations and diagnostics")
    for command, records in stored.items():
        for record in records:
            options = record.get("options") or {}
            what = ", ".join(f"{k}={_cell(v, 80)}" for k, v in options.items()) if isinstance(options, dict) else _cell(options)
            page.add(f"<h3>vaelab {esc(command)}</h3><p>{what} <span class=\"why\">({esc(record.get('created', ''))})"
                     "</span></p>")  # fmt: skip
            result = record.get("result")
            rows = list(result.items()) if isinstance(result, dict) else [("result", result)]
            page.add(_table(rows))


def _model_sections(page: _Page, run_dir: Path, trust_code: bool = False, device: Any = None) -> None:
    """Samples, reconstructions, the latent map, a traversal and an interpolation, each where it
    applies to the model; otherwise the reason."""
    from ..evaluation.sampling import can_reconstruct
    from ..runs.rundir import load, load_data, read_config
    from .figures import (
        interpolate,
        interpolation_figure,
        latent_codes_available,
        latent_figure,
        points_figure,
        reconstructions_figure,
        samples_figure,
        traversal_figure,
        traverse,
    )

    titles = ("Samples", "Reconstructions", "Latent map", "Traversals", "Interpolation")
    try:
        config, event_shape = read_config(run_dir)
        model = load(run_dir, trust_code=trust_code, device=device)
    except UntrustedCodeError:
        raise  # the reader decides whether the run's code may run, not the page
    except VaelabError as err:
        for title in titles:
            page.omit(title, f"the model cannot be loaded: {err}")
        return
    family = config.model.model
    try:
        test = load_data(config, "test", limit=min(5000, config.data.limit or 5000))  # the run's own --limit
        x = test.fixed()
        if len(x) == 0:
            raise VaelabError(f"the test split of {config.data.data} is empty")
    except VaelabError as err:
        test, x, data_error = None, None, f"the run's test data cannot be loaded: {err}"
    else:
        data_error = None
    points = tuple(event_shape) == (2,)

    # samples
    if points:
        if x is None:
            page.omit("Samples", data_error)
        else:
            page.heading("Samples")
            page.image(_png(lambda p: points_figure(model, x, p)), "samples over the test points",
                       "2500 samples over the test points (the data are points in the plane).")  # fmt: skip
    elif getattr(model, "code_prior", True) is None:
        page.omit("Samples", "a VQ-VAE draws samples from its learned prior over code grids, which this run does not "
                  f"have yet: train it with vaelab prior {run_dir}")  # fmt: skip
    else:
        page.heading("Samples")
        page.image(_png(lambda p: samples_figure(model, p, n=64)), "samples", "64 samples, seed 0.")

    # reconstructions
    if points:
        page.omit("Reconstructions", "the data are points in the plane, which have no picture to reconstruct")
    elif not can_reconstruct(model):
        page.omit("Reconstructions", f"--model {family} has no encoder to reconstruct with")
    elif x is None:
        page.omit("Reconstructions", data_error)
    else:
        page.heading("Reconstructions")
        page.image(_png(lambda p: reconstructions_figure(model, x[:32], p)), "reconstructions",
                   "The first 32 test examples (odd rows) and their reconstructions (even rows).")  # fmt: skip

    codes_reason = latent_codes_available(model)
    if points:
        codes_reason = "the data are points in the plane, which cannot be drawn as images"
    elif codes_reason is None and x is None:
        codes_reason = data_error

    # the 2-D latent map
    latent_dim = getattr(model, "latent_dim", None)
    if codes_reason is not None:
        page.omit("Latent map", codes_reason)
    elif latent_dim != 2:
        page.omit("Latent map", f"the latent has {latent_dim} dimensions; the map of encoder means and the decoded "
                  "manifold are drawn for a 2-D latent (--latent-dim 2)")  # fmt: skip
    else:
        page.heading("Latent map")
        page.image(_png(lambda p: latent_figure(model, x, test.y, p)), "latent map",
                   "Encoder means of the test examples coloured by label, beside the decoded manifold "
                   "(Kingma & Welling 2014, figure 4).")  # fmt: skip

    # traversals
    if codes_reason is not None:
        page.omit("Traversals", codes_reason)
    else:
        t = traverse(model, x[:RANKING_EXAMPLES])
        shown = min(TRAVERSAL_DIMS, len(t.dims))
        if shown < len(t.dims):
            t = traverse(model, x[:RANKING_EXAMPLES], dims=t.dims[:shown])
        page.heading("Traversals")
        ranked = "KL(q(z_d|x) || p(z_d)), mean over test examples" if t.score_name == "KL" else \
            "activity Cov_x E[z_d|x] (Burda et al. 2016): this posterior or prior has no KL per dimension"
        page.image(_png(lambda p: traversal_figure(t, p)), "latent traversal",
                   f"{shown} of {latent_dim} dimensions, ordered by {ranked}; each swept over [-3, 3] prior standard "
                   f"deviations while the others stay at test example 0's code (Higgins et al. 2017). "
                   f"All of them: vaelab traverse {run_dir}")  # fmt: skip

    # interpolation
    if codes_reason is not None:
        page.omit("Interpolation", codes_reason)
    elif len(x) < 2:
        page.omit("Interpolation", "the test split has fewer than two examples")
    else:
        between = interpolate(model, x, 0, 1, steps=10)
        page.heading("Interpolation")
        why = "the prior is N(0, I)" if between.method == "spherical" else "the prior is not N(0, I)"
        page.image(_png(lambda p: interpolation_figure(between, p, x)), "interpolation",
                   f"{between.method.capitalize()} interpolation ({why}) between the codes of test examples 0 and 1.")  # fmt: skip


def write_report(run_dir: str | Path, path: str | Path | None = None, *, trust_code: bool = False,
                 device: str | torch.device | None = None) -> Report:
    """Writes the run's HTML report (``RUN/report.html`` by default), atomically.

    Args:
        run_dir: a run directory.
        path: where to write the page.
        trust_code: allow a run trained with your own network factory to import it
            (``runs.load``); without it such a run is an UntrustedCodeError.
        device: where the model draws the pictures (``runs.load``; None: the CPU).

    Returns:
        A ``Report`` with the page's path, the sections shown and those left out with the reason.
    """
    from ..core.version import __version__

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        from ..core.errors import RunError

        raise RunError(f"run directory {run_dir} does not exist")
    if device is not None:  # an unusable device is refused, not reported as a model that cannot be loaded
        device = resolve_device(device)
    path = Path(path) if path is not None else run_dir / REPORT_FILE
    page = _Page()
    doc = _configuration(page, run_dir)
    _curves(page, run_dir)
    _results(page, run_dir)
    _model_sections(page, run_dir, trust_code, device)
    family = ""
    if doc is not None and isinstance(doc.get("model"), dict):
        family = f" (model {doc['model'].get('model', '?')})"
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    head = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>vaelab report: {esc(run_dir.name)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>vaelab report: {esc(run_dir)}{esc(family)}</h1>\n"
        f"<p>Written {esc(created)} by vaelab {esc(__version__)}.</p>\n"
    )
    text = head + "\n".join(page.parts) + "\n</body>\n</html>\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return Report(path, page.sections, page.omitted)
