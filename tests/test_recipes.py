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


# --- the sharded plan (FSDP2 and ZeRO-3), printed for recipes on 2+ GPUs -----------------------------------------

LLAMA_8B = 8_030_261_248  # the published parameter count
LLAMA_8B_NO_HEAD = LLAMA_8B - 128256 * 4096  # a reward/value model: the LM head replaced by a scalar head
EIGHT_GPU = ROOT / "configs" / "recipes" / "llama3.1-8b-zero3-8gpu.yaml"


@pytest.mark.parametrize("engine", plan.ENGINES, ids=lambda e: e.name)
def test_sharded_plan_follows_the_formulas(engine):
    """Trained state: each of params, grads and optimiser state is total/N per GPU, and the three add up to 16 bytes
    per parameter under either engine; frozen models are whole on every GPU in their storage dtype."""
    r = plan.load_recipe(EIGHT_GPU)
    assert r.gpus == 8 and r.configs["ppo"].shared_value_head and r.configs["ppo"].ref_dtype == "auto"
    bytes_per = {"FSDP2": (4, 4, 8), "ZeRO-3": (2, 2, 12)}[engine.name]
    assert sum(bytes_per) == plan.TRAINED_BYTES
    p = plan.sharded_plan(r, engine)
    assert set(p) == {"sft", "reward", "ppo"}
    trained = {"sft": [("policy", LLAMA_8B)], "reward": [("reward", LLAMA_8B_NO_HEAD)], "ppo": [("policy", LLAMA_8B)]}
    for stage, models in trained.items():
        for name, n in models:
            s = next(s for s in p[stage] if s.model == name)
            assert s.sharded
            for part, b in zip(("params", "grads", "optimizer"), bytes_per):
                assert getattr(s, part) == n * b
                assert s.per_gpu(part) == n * b / 8
            assert s.per_gpu() == pytest.approx(16 * n / 8)
    ppo = {s.model: s for s in p["ppo"]}
    assert ppo["value"].total == 0  # shared_value_head: a head on the policy
    assert not ppo["reference"].sharded and ppo["reference"].per_gpu() == LLAMA_8B * 4  # ref_dtype auto = fp32
    assert not ppo["reward"].sharded and ppo["reward"].per_gpu() == LLAMA_8B_NO_HEAD * 2  # bf16
    assert ppo["reference"].grads == ppo["reference"].optimizer == 0
    r.configs["ppo"].ref_dtype = "bf16"
    assert {s.model: s for s in plan.sharded_plan(r, engine)["ppo"]}["reference"].per_gpu() == LLAMA_8B * 2


def test_sharded_plan_halves_trained_state_with_twice_the_gpus_and_shards_a_separate_value_model():
    r = plan.load_recipe(EIGHT_GPU)
    fsdp2 = plan.ENGINES[0]
    before = {s.model: s.per_gpu() for s in plan.sharded_plan(r, fsdp2)["ppo"]}
    r.gpus = 16
    r.configs["ppo"].shared_value_head = False
    after = {s.model: s for s in plan.sharded_plan(r, fsdp2)["ppo"]}
    assert after["policy"].per_gpu() == pytest.approx(before["policy"] / 2)
    assert after["reference"].per_gpu() == before["reference"] and after["reward"].per_gpu() == before["reward"]
    assert after["value"].sharded and after["value"].per_gpu() == pytest.approx(16 * LLAMA_8B_NO_HEAD / 16)


def test_dry_run_of_the_8_gpu_recipe_shows_both_engines(capsys):
    plan.dry_run(EIGHT_GPU)
    out = capsys.readouterr().out
    sharded = out[out.index("sharded plan over 8 GPUs"):]
    gib = 1024**3
    f = lambda x: f"{x / gib:.1f}"  # noqa: E731
    n = LLAMA_8B
    fsdp2 = f"{f(4 * n / 8)} + {f(4 * n / 8)} + {f(8 * n / 8)} = {f(16 * n / 8)}"
    zero3 = f"{f(2 * n / 8)} + {f(2 * n / 8)} + {f(12 * n / 8)} = {f(16 * n / 8)}"
    for stage in ("sft", "reward", "ppo"):
        block = sharded[sharded.index(f"\n{stage}:"):]
        header = block.splitlines()[1]
        assert header.split()[-2:] == ["FSDP2", "ZeRO-3"]
    policy = next(line for line in sharded[sharded.index("\nppo:"):].splitlines() if "policy:" in line)
    assert fsdp2 in policy and zero3 in policy and policy.index(fsdp2) < policy.index(zero3)
    reference = next(line for line in sharded[sharded.index("\nppo:"):].splitlines() if "reference:" in line)
    assert reference.split()[-2:] == [f(4 * n), f(4 * n)] and "whole on every GPU" in reference
    assert sharded.count("fits") == 6  # 3 stages x 2 engines
    assert out.count("per GPU of") == 5  # the main plan's stage totals are unchanged in form


@pytest.mark.parametrize("path", [p for p in RECIPES if p != EIGHT_GPU], ids=lambda p: p.stem)
def test_one_gpu_recipes_have_no_sharded_plan(path, capsys):
    plan.dry_run(path)
    assert "sharded plan" not in capsys.readouterr().out
