"""The RLHF math: pure functions on tensors, importing only torch. See ARCHITECTURE.md for the contract.

All tensors are (B, T) over response tokens unless stated; `mask` is bool, True = a real token, right-padded.
Outputs at masked positions are 0. Bad input raises ValueError naming the problem and the fix.
"""

from rlhf.core.advantages import AGGREGATIONS, aggregate_loss, discounted_returns, grpo_advantages, rloo_advantages
from rlhf.core.kl import KL_KINDS, AdaptiveKLController, FixedKLController, kl_estimate, shape_rewards
from rlhf.core.logits import entropy_from_logits, logprobs_from_logits
from rlhf.core.ppo import IS_KINDS, gae, importance_weights, length_adaptive_lam, ppo_policy_loss, ppo_value_loss
from rlhf.core.preference import dpo_loss, pairwise_loss, ranking_to_pairs
from rlhf.core.reward_shaping import REWARD_AGGREGATES, aggregate_members, clip_scores, fit_length, length_correct
from rlhf.core.stats import masked_mean, masked_var, masked_whiten

__all__ = [
    "AGGREGATIONS",
    "IS_KINDS",
    "KL_KINDS",
    "REWARD_AGGREGATES",
    "AdaptiveKLController",
    "aggregate_loss",
    "aggregate_members",
    "clip_scores",
    "discounted_returns",
    "dpo_loss",
    "FixedKLController",
    "entropy_from_logits",
    "fit_length",
    "gae",
    "grpo_advantages",
    "importance_weights",
    "kl_estimate",
    "length_correct",
    "length_adaptive_lam",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "pairwise_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "ranking_to_pairs",
    "rloo_advantages",
    "shape_rewards",
]
