"""REINFORCE++: the KL to the reference in the per-token reward, return-to-go, advantages normalised over the whole
batch (all processes), PPO's clipped loss, and no value model.

    rlhf reinforce_pp --policy runs/x/sft --reward runs/x/reward --prompts runs/x/data/prompts_train.jsonl \\
        --out runs/x/reinforce_pp

Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models" (OpenRLHF's
advantage_estimator reinforce): each token's reward is -beta * KL_t plus the score at the response's last token
(eq. 5, as PPO's), its advantage the return-to-go sum_{s >= t} gamma^(s-t) r_s (eq. 6), normalised by the mean and
std over every token of the global batch (eq. 7) instead of a per-prompt baseline or a critic, trained with the
clipped surrogate (eq. 8). With num_samples k > 1 and group_baseline, each response's score first has its group's
mean subtracted (the paper's "REINFORCE++-baseline", OpenRLHF reinforce_baseline). Options: docs/algorithms.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf.config import check, opt
from rlhf.core import discounted_returns, grpo_advantages, ppo_policy_loss, shape_rewards
from rlhf.rl import (
    LogprobGap,
    OnPolicyOptions,
    Session,
    collect,
    encode_prompts,
    finish,
    global_masked_mean,
    global_whiten,
    optimise,
    policy_term,
    start,
    train,
    update_stats,
)
from rlhf.stages.common import stage_outputs


@dataclass
class ReinforcePPConfig(OnPolicyOptions):
    """REINFORCE++ options"""

    out: str = opt("runs/reinforce_pp", "output folder: the trained policy (HF format), metrics.jsonl, checkpoint/")
    gamma: float = opt(1.0, "discount of the return-to-go (1.0: the paper; the score comes at the end)")
    group_baseline: bool = opt(False, "with num_samples > 1: subtract each prompt's mean score from its responses' "
                               "scores before the KL and the returns (REINFORCE++-baseline)")

    def validate(self) -> None:
        super().validate()
        check(0 <= self.gamma <= 1, "gamma", f"{self.gamma} outside [0, 1]", "use 1.0")
        check(not self.group_baseline or self.num_samples >= 2, "group_baseline", "a group baseline needs more than "
              "one response per prompt", "use --num_samples 2 or more, or --group_baseline false")
        check(self.rollout_batch_size >= 2, "rollout_batch_size", "the global normalisation needs 2 or more responses",
              "use a larger --rollout_batch_size")


@stage_outputs(out="dir")  # checked before any work; a folder left holding only config.yaml is removed
def run(cfg: ReinforcePPConfig) -> Path:
    s = start(cfg, "reinforce_pp", prompts=encode_prompts)  # policy, reference, reward model; no value model
    last, train_s = train(s, lambda update: reinforce_pp_update(cfg, update, s.acc, s))
    return finish(s, last, train_s)


def reinforce_pp_update(cfg: ReinforcePPConfig, update: int, acc: Any, s: Session) -> dict[str, float]:
    """One REINFORCE++ update: responses -> KL-shaped per-token rewards -> return-to-go -> global normalisation ->
    epochs of clipped minibatch steps. Returns the logged metrics (reduced over processes)."""
    t0 = time.perf_counter()
    rollout = collect(cfg, update, acc, s, k=cfg.num_samples)  # samples, scores, log-probs of policy and reference
    kl_coef = s.kl_ctl.value
    scores = rollout.scores
    if cfg.group_baseline:  # REINFORCE++-baseline: the score minus its prompt's mean score
        scores = grpo_advantages(scores, rollout.group_ids, scale_by_std=False)
    # eq. 5: -beta * KL per token, the score added at the last token
    rewards = shape_rewards(scores.clone(), rollout.old_logp, rollout.ref_logp, rollout.mask, kl_coef,
                            cfg.kl_estimator)
    returns = discounted_returns(rewards, rollout.mask, cfg.gamma)  # eq. 6
    advantages = global_whiten(returns, rollout.mask, acc)  # eq. 7: over the global batch, every process
    gap = LogprobGap(rollout)

    def loss(mb: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        _, _, policy_loss, stats = policy_term(cfg, s.m.policy, rollout, mb, advantages, gap,
                                               policy_loss=ppo_policy_loss)  # eq. 8: PPO's clipped surrogate
        return policy_loss, stats

    train_stats, early_stopped = optimise(cfg, update, acc, s, rollout, loss, [s.m.policy])
    t_train = time.perf_counter()
    return update_stats(cfg, update, acc, s, rollout, kl_coef, train_stats, early_stopped, gap, t0, t_train,
                        extra={"advantages/mean_raw": global_masked_mean(returns, rollout.mask, acc)})
