"""The `rlhf` command: one subcommand per pipeline stage.

Stage options come from the stage's config dataclass (`--field value`, or `--config FILE.yaml`); only the chosen
stage is imported, so `rlhf --help` is quick. A `UserError` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from rlhf import __version__
from rlhf.errors import UserError
from rlhf.stages.registry import POSITIONAL, STAGES, config_class  # the stage registry: add a stage there (one line)

# name -> (module with register(subparsers), help)
GROUPS: dict[str, tuple[str, str]] = {
    "label": ("rlhf.labeling.cli", "preference collection: tasks, users, web app, simulated labelers, import/export"),
    "doctor": ("rlhf.diagnose.cli", "diagnose a run: what went wrong, the evidence, the fix to try"),
    "report": ("rlhf.report.cli", "write a self-contained HTML report of a run (curves, frontier, samples, findings)"),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    from rlhf.config import add_config_arguments

    parser = argparse.ArgumentParser(prog="rlhf", description="RLHF with PPO, end to end: SFT -> preferences -> "
                                     "reward model -> PPO -> evaluation.")
    parser.add_argument("--version", action="version", version=f"rlhf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, stage in STAGES.items():
        p = sub.add_parser(name, help=stage.help, description=stage.help)
        if name == command:
            add_config_arguments(p, config_class(name))
            if name in POSITIONAL:
                p.add_argument(f"pos_{POSITIONAL[name]}", nargs="?", default=None, metavar=POSITIONAL[name].upper(),
                               help=f"the same as --{POSITIONAL[name]}")
            p.add_argument("--dry-run", action="store_true", help="print the plan and per-GPU memory estimate of the "
                           "--config recipe (configs/recipes/) and exit; nothing is loaded or downloaded")
    for name, (module, help_) in GROUPS.items():
        if name == command:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
        if args.command is None:
            parser.print_help()
            return 1
        if args.command in GROUPS:
            return int(args.func(args) or 0)
        if args.dry_run:
            if not args.config:
                raise UserError("--dry-run plans a recipe: pass --config configs/recipes/NAME.yaml")
            from rlhf.plan import dry_run

            return dry_run(args.config)
        from rlhf.config import load_config, overrides_from_args

        overrides = overrides_from_args(args)
        positional = POSITIONAL.get(args.command)
        if positional and getattr(args, f"pos_{positional}", None) is not None:
            overrides.setdefault(positional, getattr(args, f"pos_{positional}"))
        cfg = load_config(config_class(args.command), args.config, overrides, section=args.command)
        module = importlib.import_module(STAGES[args.command].module)
        out = module.run(cfg)
        status = getattr(module, "exit_status", None)  # e.g. `rlhf monitor`: 1 on a severe finding
        return int(status(out)) if status is not None else 0
    except UserError as e:
        print(f"rlhf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlhf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
