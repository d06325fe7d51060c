"""`vaelab report`: one self-contained HTML page about a run."""

from __future__ import annotations

import argparse

from ..core.errors import VaelabError
from .common import add_device_flag, add_trust_flag


def add_report_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab report` and its flags."""
    p = subparsers.add_parser("report", help="one self-contained HTML page about a run",
                              description="Writes one HTML file that needs no network: the configuration, the training "
                              "curves, the results stored by vaelab evaluate, gaps and diagnose, samples, reconstructions, "
                              "the 2-D latent map, traversals and an interpolation, images inline. Sections that do not "
                              "apply to the model are listed with the reason.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("-o", "--output", metavar="FILE.html", help="where to write the page (default: RUN/report.html)")


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.html import write_report

    out = args.output
    if out is not None and not str(out).lower().endswith((".html", ".htm")):
        raise VaelabError(f"-o {out}: the report is an HTML page; give a file name ending in .html")
    report = write_report(args.run, out, trust_code=args.trust_code, device=args.device)
    for title, reason in report.omitted:
        print(f"  not shown: {title}: {reason}")
    print(f"report with {len(report.sections)} sections ({', '.join(report.sections)}): {report.path}")
    return 0
