"""The stage registry: every `rlhf STAGE` command, in one place. `rlhf.cli` builds its subcommands from it and
`rlhf.plan` its recipe sections' configs; the name is also the `kind` a stage writes into its summary.json
(rlhf.artifacts).

To add a stage: one line below, `"name": Stage("rlhf.stages.module", "ConfigClass", "one-line help")`; the module
has `ConfigClass` (a dataclass) and `run(cfg) -> Path`, and may have `exit_status(out: Path) -> int` (the CLI's exit
status after `run`; 0 without it). POSITIONAL names a stage's config field also accepted as its first positional
argument (`rlhf monitor RUN` = `rlhf monitor --run RUN`). Nothing here imports a stage, so `rlhf --help` stays quick.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple


class Stage(NamedTuple):
    module: str  # has `run(cfg) -> Path`
    config: str  # the config dataclass's name in that module
    help: str  # one line, shown by `rlhf --help`


STAGES: dict[str, Stage] = {
    "sft": Stage("rlhf.stages.sft", "SFTConfig", "supervised fine-tuning on text or prompt/response JSONL"),
    "sample": Stage("rlhf.stages.sample", "SampleConfig", "sample K responses per prompt (input for labeling)"),
    "reward": Stage("rlhf.stages.reward", "RewardConfig", "train a reward model on preference pairs (Bradley-Terry)"),
    "ppo": Stage("rlhf.stages.ppo", "PPOConfig", "PPO: train the policy and value function against the reward model"),
    "rloo": Stage("rlhf.stages.rloo", "RLOOConfig", "RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt"),
    "grpo": Stage("rlhf.stages.grpo", "GRPOConfig", "GRPO: group-normalised advantages, KL in the loss, no value model"),
    "reinforce_pp": Stage("rlhf.stages.reinforce_pp", "ReinforcePPConfig", "REINFORCE++: KL in the reward, "
                          "batch-normalised returns, no value model"),
    "dpo": Stage("rlhf.stages.dpo", "DPOConfig", "DPO: train the policy directly on the preference pairs (no reward model)"),
    "value-pretrain": Stage("rlhf.stages.value_pretrain", "ValuePretrainConfig", "fit the value model to the SFT "
                            "policy's returns before PPO (rlhf ppo --value OUT)"),
    "eval": Stage("rlhf.stages.evaluate", "EvalConfig", "compare a policy with the SFT baseline: reward, gold, KL, win rates"),
    "monitor": Stage("rlhf.stages.monitor", "MonitorConfig", "drift of production traffic (a JSONL log) against "
                     "the run's eval: reward, KL, length, diversity, prompts, ensemble support, user feedback"),
    "demo": Stage("rlhf.stages.demo", "DemoConfig", "the whole pipeline on the embedded demo task"),
}

POSITIONAL: dict[str, str] = {"monitor": "run"}  # stage -> config field also taken as the first positional argument


def config_class(name: str) -> type:
    """The config dataclass of stage `name` (imports that stage's module)."""
    stage = STAGES[name]
    return getattr(importlib.import_module(stage.module), stage.config)
