"""`rlhf report RUN_DIR [--out FILE]`: write one self-contained report.html (exit 0; 2 for a bad folder)."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "write a self-contained HTML report of a run: curves, reward vs KL, proxy vs gold, samples, findings"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help=HELP, description=HELP + ".")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (e.g. runs/demo) or one stage's folder")
    p.add_argument("--out", default=None, help="where to write the HTML (default: RUN_DIR/report.html)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from rlhf.report.build import build_report

    path = build_report(args.run_dir, args.out)
    print(path)
    return 0

