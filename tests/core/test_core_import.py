import subprocess
import sys

import rlhf.core

CONTRACT = [
    "masked_mean", "masked_var", "masked_whiten", "logprobs_from_logits", "entropy_from_logits", "kl_estimate",
    "FixedKLController", "AdaptiveKLController", "shape_rewards", "gae", "ppo_policy_loss", "ppo_value_loss",
    "pairwise_loss", "ranking_to_pairs",
]


def test_every_contract_name_is_exported():
    missing = [name for name in CONTRACT if name not in rlhf.core.__all__ or not hasattr(rlhf.core, name)]
    assert missing == []


def test_import_does_not_pull_heavy_libraries():
    code = (
        "import sys, rlhf.core\n"
        "heavy = [m for m in ('transformers', 'accelerate', 'peft', 'datasets') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
