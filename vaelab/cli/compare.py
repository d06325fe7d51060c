"""`vaelab compare`: runs side by side, from what they stored."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_compare_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab compare` and its flags."""
    p = subparsers.add_parser("compare", help="runs side by side: differing configuration, best validation bounds, stored results, training curves",
                              description="Compares two or more runs without recomputing anything: one table of the "
                              "configuration values that differ between them, their best validation bounds (from "
                              "metrics.jsonl), every result that vaelab evaluate, gaps and diagnose stored in them, and a "
                              "figure of their validation bound and training loss against the epoch, overlaid.")  # fmt: skip
    p.add_argument("runs", metavar="RUN", nargs="+", help="two or more run directories")
    p.add_argument("-o", "--output", metavar="FILE.png", default="compare.png",
                   help="figure of the overlaid training curves (default: compare.png)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object with the keys runs, config, epochs, "
                   "best_epoch, best_valid_bound, results and plot")  # fmt: skip


def cmd_compare(args: argparse.Namespace) -> int:
    from ..report.compare import compare_runs, curves_figure, run_labels

    summary = compare_runs(args.runs)
    summary["plot"] = str(curves_figure(args.runs, args.output))
    if args.json:
        print(json.dumps(summary))
        return 0
    rows: list[tuple[str, list[str] | None]] = []  # (label, one cell per run); None: a heading
    rows.append(("configuration" + ("" if summary["config"] else ": identical"), None))
    for name, values in summary["config"].items():
        rows.append(("  " + ("data shape" if name == "event_shape" else "--" + name.replace("_", "-")),
                     [_cell(v) for v in values]))  # fmt: skip
    rows.append(("training", None))
    rows.append(("  epochs", [_cell(v) for v in summary["epochs"]]))
    rows.append(("  best validation bound", [_cell(v) for v in summary["best_valid_bound"]]))
    rows.append(("  at epoch", [_cell(v) for v in summary["best_epoch"]]))
    heading = None
    for row in summary["results"]:
        options = ", ".join(f"{k}={_option(v)}" for k, v in row["options"].items() if v not in (None, []))
        if (row["command"], options) != heading:
            heading = (row["command"], options)
            rows.append((f"{row['command']} ({options})" if options else row["command"], None))
        rows.append(("  " + row["metric"], [_cell(v, e) for v, e in zip(row["values"], row["stderr"])]))
    labels = run_labels(summary["runs"])
    first = max(len(label) for label, cells in rows if cells is not None)
    widths = [max(len(labels[i]), *(len(cells[i]) for _, cells in rows if cells is not None)) for i in range(len(labels))]
    print(" " * first + "".join(f"  {label:>{w}}" for label, w in zip(labels, widths)))
    for label, cells in rows:
        print(label if cells is None else f"{label:<{first}}" + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths)))
    print(f"bounds and gaps in nats, +- standard error; -: not in that run (or not a number). Training curves: {summary['plot']}")
    return 0


def _option(value: Any) -> str:
    return ",".join(_option(v) for v in value) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)


def _cell(value: Any, stderr: Any = None) -> str:
    """A value of the compare table as text."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
        return text if stderr is None else f"{text} +- {stderr:.3f}"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value)
    return str(value)
