"""The shared option classes of rlhf.config: inherited by stage configs, validated through the super() chain, one
`--help` group each (the stage's own options first), Literal choices listed."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from rlhf.config import LoopOptions, LoRAOptions, OptimOptions, RunOptions, add_config_arguments, build_config
from rlhf.errors import ConfigError
from rlhf.stages.reward import RewardConfig
from rlhf.stages.sample import SampleConfig
from rlhf.stages.sft import SFTConfig
from rlhf.stages.value_pretrain import ValuePretrainConfig


def _groups(cls: type) -> list[tuple[str, list[str]]]:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    return [(g.title, [a.dest[4:] for a in g._group_actions]) for g in parser._action_groups
            if any(a.dest.startswith("cfg_") for a in g._group_actions)]


def test_help_lists_the_stages_own_options_first_then_one_group_per_shared_class():
    groups = dict(_groups(SFTConfig))
    titles = list(groups)
    assert titles[0] == "SFTConfig options (override the YAML file)"
    assert groups[titles[0]] == ["tokenizer_vocab_size", "data", "eval_data", "max_length", "eval_batches"]
    assert groups["model options"] == ["model", "tokenizer"]  # re-declared by SFT, still in its group
    assert groups["optimiser options"] == ["lr", "weight_decay", "adam_eps", "max_grad_norm"]
    assert groups["LoRA options (peft)"] == ["lora_r", "lora_alpha", "lora_dropout", "lora_target"]
    assert titles[-1] == "run options" and groups["run options"] == ["out", "seed", "device"]
    every = [name for _, names in groups.items() for name in names]
    assert sorted(every) == sorted(f.name for f in dataclasses.fields(SFTConfig))  # each field once


def test_a_redeclared_field_keeps_the_stages_default_and_help():
    assert SFTConfig().lr == 3e-3 and RewardConfig().lr == 1e-3 and ValuePretrainConfig().adam_eps == 1e-5
    lr = next(f for f in dataclasses.fields(RewardConfig) if f.name == "lr")
    assert "InstructGPT: 9e-6" in lr.metadata["help"]
    assert issubclass(RewardConfig, (LoopOptions, OptimOptions, LoRAOptions, RunOptions))


@pytest.mark.parametrize("cls, values, message", [
    (SFTConfig, {"data": "x", "lr": 0}, "config field 'lr': must be > 0"),  # OptimOptions
    (SFTConfig, {"data": "x", "grad_accum": 0}, "config field 'grad_accum': must be >= 1"),  # LoopOptions
    (SFTConfig, {"data": "x", "lora_r": -1}, "config field 'lora_r': must be >= 0"),  # LoRAOptions
    (SFTConfig, {"data": "x", "model": ""}, "config field 'model': no model given"),  # ModelOptions
    (SFTConfig, {"lr": 1e-3}, "config field 'data': no training data given"),  # the stage's own check
    (RewardConfig, {"data": "x", "early_stopping_patience": -1}, "'early_stopping_patience': must be >= 0"),
    (ValuePretrainConfig, {"policy": "p", "reward": "r", "prompts": "x", "max_grad_norm": -1}, "'max_grad_norm'"),
    (SampleConfig, {"model": "m", "prompts": "p", "save_every": 3}, "unknown key 'save_every' for SampleConfig"),
])
def test_each_group_validates_its_own_fields_through_the_super_chain(cls, values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(cls, values)


def test_a_config_made_in_python_is_checked_by_the_root_for_its_choices():
    with pytest.raises(ConfigError, match="config field 'schedule': unknown value 'cosin' .*did you mean cosine"):
        SFTConfig(data="x", schedule="cosin").validate()


def test_dpo_help_lists_its_choices_and_the_shared_groups(capsys):
    from rlhf.cli import main

    with pytest.raises(SystemExit) as e:
        main(["dpo", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--reference {precompute,online}" in out and "--schedule {cosine,linear,constant}" in out
    assert out.index("DPOConfig options") < out.index("model options") < out.index("preference data options") \
        < out.index("run options")
