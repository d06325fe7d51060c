"""Several runs side by side (`vaelab compare`): what differs in their configurations, how far
training got, every result stored in them, and their training curves overlaid.

Nothing is recomputed: the numbers come from each run's ``config.json``, ``metrics.jsonl`` and
the results that `vaelab evaluate`, `gaps` and `diagnose` stored (``vaelab.results``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..core.errors import ConfigError, VaelabError
from ..core.files import read_metrics
from ..runs.results import json_finite, load_results
from ..runs.rundir import read_config

# The numbers of a stored result shown in the comparison, in this order, where the result has
# them; "<key>_stderr" beside a key is its standard error. evaluate's "bounds" (L_K) follow its
# log-likelihood; diagnose's lists are shown per K.
HEADLINES = {
    "evaluate": ("log_likelihood", "elbo", "trained_bound", "discrete_log_likelihood_bound", "bits_per_dim", "kl",
                 "active_units", "ais_lower", "ais_upper", "bdmc_gap", "reconstruction_error"),  # fmt: skip
    "gaps": ("log_likelihood", "local_elbo_gaussian", "local_elbo", "amortized_elbo", "approximation_gap",
             "amortization_gap"),  # fmt: skip
    "diagnose": ("encoder_snr", "decoder_snr", "ess"),
}


def _flat_config(run_dir: Path) -> dict[str, Any]:
    """A run's configuration as {field name: JSON value} (field names are unique across sections),
    plus the data's ``event_shape``."""
    config, event_shape = read_config(run_dir)
    flat: dict[str, Any] = {}
    for section in ("data", "model", "train"):
        flat.update(json.loads(json.dumps(dataclasses.asdict(getattr(config, section)))))
    flat["event_shape"] = list(event_shape)
    return flat


def _training(run_dir: Path) -> dict[str, Any]:
    """Epochs in metrics.jsonl, and the best validation bound and its epoch as the Trainer chose
    them (the last record's ``best_epoch``; None without a validation bound)."""
    records = read_metrics(run_dir)
    if not records:
        return {"epochs": 0, "best_epoch": None, "best_valid_bound": None}
    best_epoch = records[-1].get("best_epoch")
    bound = next((r.get("valid_bound") for r in records if r.get("epoch") == best_epoch), None)
    if bound is None:  # no validation set, or a model without a bound (the adversarial ones)
        best_epoch = None
    return {"epochs": records[-1].get("epoch", len(records)), "best_epoch": best_epoch, "best_valid_bound": bound}


def _numbers(command: str, result: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(metric, value, standard error or None) of a stored result, as HEADLINES says."""
    out = []
    for key in HEADLINES[command]:
        value = result.get(key)
        if command == "diagnose" and isinstance(value, list):
            out += [(f"{key} K={k}", v, None) for k, v in zip(result.get("k", []), value)]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((key, value, result.get(f"{key}_stderr")))
        if command == "evaluate" and key == "log_likelihood" and isinstance(result.get("bounds"), dict):
            errors = result.get("bounds_stderr") or {}
            out += [(f"L_{k}", v, errors.get(k)) for k, v in result["bounds"].items()]
    return out


def compare_runs(run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """What `vaelab compare --json` prints (less ``plot``): lists in the order of ``run_dirs``.

    Returns:
        ``runs``: the run directories; ``config``: {field: [value per run]} for the
        configuration fields (and ``event_shape``) that differ; ``epochs``, ``best_epoch``,
        ``best_valid_bound``: per run, from metrics.jsonl (None without a validation bound);
        ``results``: one entry per stored number, ``{"command", "options", "metric", "values",
        "stderr"}`` with ``values`` and ``stderr`` per run (None where the run has no such result).

    Raises:
        ConfigError: fewer than two runs.
        RunError: a directory is not a run, or a stored file is corrupt.
    """
    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) < 2:
        raise ConfigError(f"compare needs at least two run directories, got {len(run_dirs)}")
    configs = [_flat_config(r) for r in run_dirs]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differing = {k: [c.get(k) for c in configs] for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1}
    training = [_training(r) for r in run_dirs]
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for i, run in enumerate(run_dirs):
        for command, records in load_results(run).items():
            for record in records:
                options = record.get("options") or {}
                for metric, value, stderr in _numbers(command, record["result"]):
                    key = (command, json.dumps(options, sort_keys=True), metric)
                    row = rows.setdefault(key, {"command": command, "options": options, "metric": metric,
                                                "values": [None] * len(run_dirs), "stderr": [None] * len(run_dirs)})  # fmt: skip
                    row["values"][i], row["stderr"][i] = value, stderr
    return json_finite({
        "runs": [str(r) for r in run_dirs],
        "config": differing,
        "epochs": [t["epochs"] for t in training],
        "best_epoch": [t["best_epoch"] for t in training],
        "best_valid_bound": [t["best_valid_bound"] for t in training],
        "results": list(rows.values()),
    })


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Short names for runs: their directory names, or the paths as given where names repeat."""
    names = [Path(r).resolve().name or str(r) for r in run_dirs]
    return names if len(set(names)) == len(names) else [str(r) for r in run_dirs]


def curves_figure(run_dirs: Sequence[str | Path], path: str | Path) -> Path:
    """The runs' validation bound and training loss against the epoch, overlaid, in ``path``.

    Raises:
        ConfigError: an unknown image format.
        VaelabError: the file cannot be written.
    """
    from .figures import save_figure

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    panels = (("valid_bound", "validation bound (nats), * the best epoch"), ("train_loss", "training loss (nats)"))
    for ax, (key, title) in zip(axes, panels):
        drawn = 0
        for label, run in zip(run_labels(run_dirs), run_dirs):
            records = read_metrics(run)
            points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            points = [(e, v) for e, v in points if math.isfinite(v)]
            if points:
                (line,) = ax.plot(*zip(*points), "o-" if len(points) < 20 else "-", ms=3, label=label)
                drawn += 1
                best = [v for e, v in points if e == records[-1].get("best_epoch")]
                if key == "valid_bound" and best:
                    ax.plot(records[-1]["best_epoch"], best[0], "*", ms=12, color=line.get_color())
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no run logged {key}", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    try:
        return save_figure(fig, path)
    except OSError as err:
        raise VaelabError(f"cannot write {path} ({err.strerror or err}); choose another output file") from None
