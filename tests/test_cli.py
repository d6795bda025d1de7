"""The `rlhf` entry point wires every command: recipes' --dry-run and doctor --env go through it."""

from pathlib import Path

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
