"""`rlhf doctor RUN_DIR [--json]`: exit 1 when a finding is severe, 0 otherwise, 2 for bad input.
`rlhf doctor --env [--model M]`: versions, devices, precision support, known bad combinations (exit 1 on a warning)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rlhf.errors import UserError

HELP = "diagnose a run: what went wrong in its metrics, the evidence, and the fix to try"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("doctor", help=HELP, description=HELP + ". Exit status: 1 if any finding is severe, "
                              "0 otherwise, 2 for a bad folder.")
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a run folder (e.g. runs/demo) or one stage's "
                   "folder (e.g. runs/demo/ppo)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON on stdout instead of a report")
    p.add_argument("--env", action="store_true", help="check this machine instead of a run: versions, devices, "
                   "precision support, free memory, known bad combinations")
    p.add_argument("--model", default=None, help="with --env: also check this model's tokenizer (folder or hub id)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.env:
        from rlhf.diagnose.env import env_report

        return env_report(args.model)
    if not args.run_dir:
        raise UserError("doctor needs a RUN_DIR (a run or stage folder), or --env to check this machine")
    from rlhf.diagnose.doctor import diagnose, render

    d = diagnose(args.run_dir)
    if args.json:
        print(json.dumps(d.to_dict(), indent=2))
    else:
        render(d, Console())
    return 1 if d.severe else 0

