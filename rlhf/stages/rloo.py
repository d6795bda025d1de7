"""RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt, and no value model.

    rlhf rloo --policy runs/x/sft --reward runs/x/reward --prompts runs/x/data/prompts_train.jsonl --out runs/x/rloo

Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
LLMs": the whole response is one action. Each update samples k responses for each of rollout_batch_size / k
prompts, scores each as r(x, y) - beta * KL(y) (the KL to the reference in the reward, summed over the response),
and takes as its advantage that reward minus the mean reward of the other k - 1 responses to the same prompt
(eq. 9). Every token of a response gets its response's advantage. The loss is the clipped surrogate (TRL's
RLOOTrainer) or plain REINFORCE (loss: reinforce; the ratio's gradient on-policy is grad log pi).
Options and sources: docs/algorithms.md. Metrics: docs/metrics.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhf.config import check, opt
from rlhf.core import kl_estimate, ppo_policy_loss, rloo_advantages
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
class RLOOConfig(OnPolicyOptions):
    """RLOO options"""

    out: str = opt("runs/rloo", "output folder: the trained policy (HF format), metrics.jsonl, checkpoint/")
    num_samples: int = opt(4, "k: responses sampled per prompt, the leave-one-out group (Ahmadian et al. 2024: "
                           "k = 2 or 4; TRL rloo_k 2)")
    loss: Literal["clipped", "reinforce"] = opt(
        "clipped", "clipped: PPO's clipped surrogate on the RLOO advantage (TRL's RLOOTrainer); reinforce: the plain "
        "-A * ratio (Ahmadian et al. 2024; with ppo_epochs 1 and num_minibatches 1 it is exactly REINFORCE)")
    normalize_advantages: bool = opt(False, "whiten the advantages over the whole batch (all processes) after the "
                                     "baseline (TRL's normalize_advantage; off in the paper)")

    def validate(self) -> None:
        super().validate()
        check(self.num_samples >= 2, "num_samples", f"{self.num_samples} response per prompt leaves no other "
              "response for the leave-one-out baseline", "use --num_samples 2 or more (e.g. 4)")


@stage_outputs(out="dir")  # checked before any work; a folder left holding only config.yaml is removed
def run(cfg: RLOOConfig) -> Path:
    s = start(cfg, "rloo", prompts=encode_prompts)  # policy, reference, reward model; no value model
    last, train_s = train(s, lambda update: rloo_update(cfg, update, s.acc, s))
    return finish(s, last, train_s)


def rloo_update(cfg: RLOOConfig, update: int, acc: Any, s: Session) -> dict[str, float]:
    """One RLOO update: k responses per prompt -> KL-penalised sequence rewards -> leave-one-out advantages ->
    epochs of minibatch steps. Returns the logged metrics (reduced over processes)."""
    t0 = time.perf_counter()
    rollout = collect(cfg, update, acc, s, k=cfg.num_samples)  # samples, scores, log-probs of policy and reference
    kl_coef = s.kl_ctl.value
    rewards = sequence_rewards(cfg, rollout, kl_coef)
    advantages = leave_one_out(cfg, acc, rollout, rewards)
    gap = LogprobGap(rollout)

    def loss(mb: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        _, _, policy_loss, stats = policy_term(cfg, s.m.policy, rollout, mb, advantages, gap,
                                               policy_loss=ppo_policy_loss, clip=cfg.loss == "clipped")
        return policy_loss, stats

    train_stats, early_stopped = optimise(cfg, update, acc, s, rollout, loss, [s.m.policy])
    t_train = time.perf_counter()

    return update_stats(cfg, update, acc, s, rollout, kl_coef, train_stats, early_stopped, gap, t0, t_train,
                        extra={"advantages/mean_raw": global_masked_mean(advantages, rollout.mask, acc)})


def sequence_rewards(cfg: RLOOConfig, rollout: Any, kl_coef: float) -> torch.Tensor:
    """(B,) r(x, y) - beta * sum_t KL_t: the response's score with the KL to the reference in the reward, at the
    sequence level (Ahmadian et al. 2024, section 3; kl_estimator k1 = log pi - log pi_ref summed)."""
    kl = (kl_estimate(rollout.old_logp, rollout.ref_logp, cfg.kl_estimator) * rollout.mask).sum(1)
    return rollout.scores - kl_coef * kl


def leave_one_out(cfg: RLOOConfig, acc: Any, rollout: Any, rewards: torch.Tensor) -> torch.Tensor:
    """(B, R) advantages: the leave-one-out advantage of each response (eq. 9) at every one of its tokens, whitened
    over the batch if normalize_advantages."""
    per_token = rloo_advantages(rewards, rollout.group_ids)[:, None] * rollout.mask
    return global_whiten(per_token, rollout.mask, acc) if cfg.normalize_advantages else per_token
