"""GRPO: group-normalised advantages over k samples per prompt, the KL to the reference in the loss, no value model.

    rlhf grpo --policy runs/x/sft --reward runs/x/reward --prompts runs/x/data/prompts_train.jsonl --out runs/x/grpo

Shao et al. 2024, "DeepSeekMath", section 4.1 (eq. 3): for each prompt sample a group of G responses, take as every
token's advantage its response's score normalised within the group, (r - mean) / std (outcome supervision), and
minimise the clipped surrogate plus beta * KL(pi || pi_ref), the KL estimated per token with k3 (eq. 4) and added
to the loss rather than the reward. The loss is aggregated per sequence then over the group (the paper), over all
tokens, or as Dr. GRPO's per-sequence sum over a constant (Liu et al. 2025, "Understanding R1-Zero-Like Training",
which also drops the std division: scale_by_std false). Options and sources: docs/algorithms.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhf.config import check, opt
from rlhf.core import aggregate_loss, grpo_advantages, kl_estimate, ppo_policy_loss
from rlhf.rl import (
    LogprobGap,
    OnPolicyOptions,
    Session,
    collect,
    encode_prompts,
    finish,
    global_masked_mean,
    optimise,
    policy_term,
    start,
    train,
    update_stats,
)
from rlhf.stages.common import stage_outputs


@dataclass
class GRPOConfig(OnPolicyOptions):
    """GRPO options"""

    out: str = opt("runs/grpo", "output folder: the trained policy (HF format), metrics.jsonl, checkpoint/")
    num_samples: int = opt(4, "G: responses sampled per prompt, the group (DeepSeekMath: 64; TRL num_generations 8)")
    kl_coef: float = opt(0.04, "beta: weight of the KL to the reference in the loss (DeepSeekMath: 0.04)")
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k3", "per-token KL estimator in the loss: k3 (DeepSeekMath eq. 4, "
                                                  "unbiased and >= 0), k2 or k1")
    loss_aggregation: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = opt(
        "seq-mean-token-mean", "how per-token losses become one: seq-mean-token-mean (DeepSeekMath eq. 3: each "
        "response's token mean, then the mean over responses), token-mean (every token weighs the same; DAPO), "
        "seq-mean-token-sum-norm (Dr. GRPO: each response's token sum / max_new_tokens)")
    scale_by_std: bool = opt(True, "divide the group-centred score by the group's std (DeepSeekMath); false = Dr. GRPO "
                             "(Liu et al. 2025: the division biases toward too easy or too hard prompts)")
    std_eps: float = opt(1e-6, "added to the group std before dividing (a constant group gets advantage 0 anyway)")

    def validate(self) -> None:
        super().validate()
        check(self.num_samples >= 2, "num_samples", f"a group of {self.num_samples} has nothing to compare with",
              "use --num_samples 2 or more (e.g. 4)")
        check(self.std_eps >= 0, "std_eps", "must be >= 0", "use e.g. 1e-6")


@stage_outputs(out="dir")  # checked before any work; a folder left holding only config.yaml is removed
def run(cfg: GRPOConfig) -> Path:
    s = start(cfg, "grpo", prompts=encode_prompts)  # policy, reference, reward model; no value model
    last, train_s = train(s, lambda update: grpo_update(cfg, update, s.acc, s))
    return finish(s, last, train_s)


def grpo_update(cfg: GRPOConfig, update: int, acc: Any, s: Session) -> dict[str, float]:
    """One GRPO update: a group of k responses per prompt -> group-normalised advantages -> epochs of minibatch
    steps on the clipped surrogate + beta * KL. Returns the logged metrics (reduced over processes)."""
    t0 = time.perf_counter()
    rollout = collect(cfg, update, acc, s, k=cfg.num_samples)  # samples, scores, log-probs of policy and reference
    advantages = group_advantages(cfg, rollout)
    beta = s.kl_ctl.value
    agg = dict(aggregation=cfg.loss_aggregation, norm=float(cfg.max_new_tokens))
    gap = LogprobGap(rollout)

    def loss(mb: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        logp, _, policy_loss, stats = policy_term(cfg, s.m.policy, rollout, mb, advantages, gap,
                                                  policy_loss=ppo_policy_loss, **agg)
        # DeepSeekMath eq. 3-4: + beta * D_KL(pi || pi_ref), k3 per token, aggregated like the surrogate
        kl = aggregate_loss(kl_estimate(logp, rollout.ref_logp[mb.ix], cfg.kl_estimator), mb.mask,
                            cfg.loss_aggregation, agg["norm"])
        stats["loss/kl"] = kl.detach()
        return policy_loss + beta * kl, stats

    # a sequence-level aggregation weighs micro-batches by their share of the responses, token-mean by tokens
    weight_by = "tokens" if cfg.loss_aggregation == "token-mean" else "sequences"
    train_stats, early_stopped = optimise(cfg, update, acc, s, rollout, loss, [s.m.policy], weight_by=weight_by)
    t_train = time.perf_counter()

    return update_stats(cfg, update, acc, s, rollout, beta, train_stats, early_stopped, gap, t0, t_train, kl_in_reward=False,
                        extra={"advantages/mean_raw": global_masked_mean(advantages, rollout.mask, acc)})


def group_advantages(cfg: GRPOConfig, rollout: Any) -> torch.Tensor:
    """(B, R): (r - mean(group)) / (std(group) + eps) of each response at every one of its tokens (outcome
    supervision, DeepSeekMath section 4.1.2); without the division with scale_by_std false (Dr. GRPO)."""
    seq = grpo_advantages(rollout.scores, rollout.group_ids, scale_by_std=cfg.scale_by_std, eps=cfg.std_eps)
    return seq[:, None] * rollout.mask
