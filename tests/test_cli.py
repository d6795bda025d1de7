"""The `rlhf` entry point wires every command: recipes' --dry-run and doctor --env go through it."""

from pathlib import Path

import pytest

from rlhf.cli import main

RECIPES = sorted((Path(__file__).parents[1] / "configs" / "recipes").glob("*.yaml"))


def test_dry_run_prints_a_plan_for_every_recipe(capsys):
    assert RECIPES
    for recipe in RECIPES:
        assert main(["ppo", "--config", str(recipe), "--dry-run"]) == 0, recipe
        out = capsys.readouterr().out
        assert "per GPU" in out and "fits" in out, recipe


def test_dry_run_needs_a_recipe(capsys):
    assert main(["sft", "--dry-run"]) == 2
    assert "--dry-run plans a recipe" in capsys.readouterr().err


def test_doctor_env_and_doctor_without_a_folder(capsys):
    assert main(["doctor", "--env"]) in (0, 1)
    assert "torch" in capsys.readouterr().out
    assert main(["doctor"]) == 2
    assert "needs a RUN_DIR" in capsys.readouterr().err


def _subcommands() -> list[list[str]]:
    """Every command and `label` subcommand, read from the parsers themselves."""
    import argparse

    from rlhf.cli import GROUPS, STAGES, build_parser

    commands = [[name] for name in (*STAGES, *GROUPS)]
    label = build_parser("label")
    sub = next(a for a in label._actions if isinstance(a, argparse._SubParsersAction))
    label_parser = sub.choices["label"]
    inner = next(a for a in label_parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands + [["label", name] for name in inner.choices]


def test_every_subcommand_help_works_and_lists_the_choices(capsys):
    commands = _subcommands()
    assert ["reward"] in commands and ["label", "export"] in commands
    for argv in commands:
        with pytest.raises(SystemExit) as e:  # argparse exits 0 after printing the help
            main([*argv, "--help"])
        assert e.value.code == 0, argv
        out = capsys.readouterr().out
        assert out.startswith("usage: rlhf " + " ".join(argv)), argv
    with pytest.raises(SystemExit):  # the % in shared_prefix's help text used to crash it (TypeError: %o format)
        main(["reward", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "saves >= 10% of the tokens" in out and "~30% slower" in out  # a % in help text is printed as written
    assert "--dtype {fp32,bf16,fp16}" in out and "--load_in {'',4bit,8bit}" in out and "--ties {skip,equal}" in out
