"""GPU recipes: every recipe loads, its stages chain and its shapes fit, and the dry run prints the plan and a
memory estimate without downloading anything; the parameter count behind the estimate matches real models."""

from pathlib import Path

import pytest
import yaml

from rlhf import plan
from rlhf.config import load_config
from rlhf.errors import ConfigError, UserError
from tests.support.families import save_family

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))


def test_there_are_the_three_recipes_each_with_a_page():
    names = {p.stem for p in RECIPES}
    assert names == {"qwen2.5-0.5b-hh-24gb", "llama3.1-8b-lora-80gb", "llama3.1-8b-zero3-8gpu"}
    for p in RECIPES:
        assert (ROOT / "docs" / "recipes" / f"{p.stem}.md").exists()


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to read a model config must be local-only."""
    import transformers

    real = transformers.AutoConfig.from_pretrained
    calls = []

    def spy(name, **kw):
        calls.append(name)
        assert kw.get("local_files_only") is True, "the dry run must never download"
        return real(name, **kw)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    return calls


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_dry_run_prints_plan_and_memory_for_every_stage(path, capsys, no_download):
    assert plan.dry_run(path) == 0
    out = capsys.readouterr().out
    r = plan.load_recipe(path)
    assert no_download  # it looked for a local config.json, and fell back to the recipe's architecture block
    for stage in ("sft", "sample", "reward", "ppo", "eval"):
        assert f"{stage}: " in out and f"{stage} --config {path}" in out
    assert out.count("per GPU of") == 5 and "DOES NOT FIT" not in out
    assert f"{r.arch.params() / 1e9:.2f}B parameters" in out


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_each_stage_section_is_the_cli_config(path):
    """`rlhf STAGE --config RECIPE` reads the recipe's STAGE section: it must build the stage config as is."""
    r = plan.load_recipe(path)
    for stage, cfg in r.configs.items():
        assert load_config(type(cfg), path, section=stage) == cfg
    assert r.configs["ppo"].policy == r.configs["sft"].out and r.configs["ppo"].reward == r.configs["reward"].out


def test_parameter_count_is_exact_for_llama_3_8b():
    arch = plan.architecture("meta-llama/Llama-3.1-8B-Instruct", None)
    assert arch.params() == 8_030_261_248  # the published count
    assert plan.architecture("Qwen/Qwen2.5-0.5B-Instruct", None).params() == pytest.approx(494_032_768, rel=1e-3)


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral"])
def test_parameter_count_matches_a_real_model_from_its_local_config(name, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = save_family(name, tmp_path / name)
    arch = plan.architecture(str(folder), None)
    assert arch.source.startswith("config.json")
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())
    assert arch.params() == pytest.approx(real, rel=0.01)  # qwen2's q/k/v biases are the only difference


def _recipe(tmp_path, edit):
    data = yaml.safe_load(RECIPES[-1].read_text())  # the 0.5B recipe
    edit(data)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["recipe"].update(gpus=3), "64 is not divisible by num_minibatches x gpus = 4 x 3"),
    (lambda d: d["ppo"].update(policy="runs/other"), "ppo.policy should be sft.out"),
    (lambda d: d["sft"].update(max_lenght=10), "unknown key 'max_lenght'.*did you mean max_length"),
    (lambda d: d["sft"].update(max_length=40000), "exceeds the context 32768"),
    (lambda d: d["sft"].update(load_in="4bit"), "sft.load_in needs sft.lora_r > 0"),
    (lambda d: d["recipe"].update(model="org/unknown", architecture=None) or d["sft"].update(model="org/unknown"),
     "size of 'org/unknown' is unknown here.*architecture"),
    (lambda d: d["recipe"]["architecture"].pop("vocab_size"), "architecture is missing vocab_size"),
    (lambda d: d.update(ppo2={}), r"unknown section\(s\) \['ppo2'\]"),
])
def test_broken_recipes_fail_clearly(tmp_path, edit, message):
    with pytest.raises((ConfigError, UserError), match=message):
        plan.load_recipe(_recipe(tmp_path, edit))


def test_a_recipe_that_does_not_fit_says_which_knobs_to_turn(tmp_path, capsys):
    p = _recipe(tmp_path, lambda d: d["recipe"].update(gpu_memory_gb=12))
    assert plan.dry_run(p) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ppo: "))
    ppo_line = next(line for line in lines[start:] if "per GPU of 12" in line)
    assert "DOES NOT FIT" in ppo_line
    assert "--shared_value_head true" in ppo_line and "--lora_r 16" in ppo_line
    assert "sample" in out and out.count("fits") >= 2  # the small stages still fit


def test_memory_estimate_moves_the_right_way():
    r = plan.load_recipe(RECIPES[-1])
    base = sum(g for _, g in plan.estimate(r)["ppo"])
    r.configs["ppo"].shared_value_head = True
    shared = sum(g for _, g in plan.estimate(r)["ppo"])
    r.configs["ppo"].gradient_checkpointing = False
    no_gc = sum(g for _, g in plan.estimate(r)["ppo"])
    assert shared < base - 7 and no_gc > shared  # drops the 7.4 GiB value model; checkpointing saves activations
    r.configs["sft"].lora_r = 16
    assert sum(g for _, g in plan.estimate(r)["sft"]) < 8  # LoRA: 1 GiB of frozen bf16 weights instead of 7.4


def test_main_prints_usage_and_errors(capsys, tmp_path):
    assert plan.main([]) == 2
    assert plan.main([str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
