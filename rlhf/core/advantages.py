"""Critic-free advantage estimators (RLOO, GRPO, REINFORCE++) and the loss aggregation modes they use.

Sequence-level estimators take one score per response, `scores` (B,), and a `group_ids` (B,) long tensor: the
responses sampled for one prompt share a group id (any integer values, in any order). Token-level functions take
(B, T) tensors over response tokens with a right-padded bool `mask`, as the rest of rlhf.core.
"""

from __future__ import annotations

import torch

from rlhf.core._checks import check_2d, check_mask, check_number, check_rows, check_tensor
from rlhf.core.stats import masked_mean

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _groups(fn: str, scores: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse (B,) in 0..G-1, counts (G,)) of the groups; every group must hold >= 2 responses."""
    check_tensor(fn, "scores", scores)
    check_tensor(fn, "group_ids", group_ids)
    if scores.dim() != 1:
        raise ValueError(f"{fn}: `scores` must be 1-D (B,), one score per response, got shape {tuple(scores.shape)}")
    if group_ids.shape != scores.shape:
        raise ValueError(f"{fn}: `group_ids` shape {tuple(group_ids.shape)} does not match `scores` shape "
                         f"{tuple(scores.shape)}; give one group id per response")
    if group_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"{fn}: `group_ids` must be an integer tensor (torch.long), got {group_ids.dtype}")
    if not scores.dtype.is_floating_point:
        raise ValueError(f"{fn}: `scores` must be a floating-point tensor, got {scores.dtype}")
    uniq, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    single = uniq[counts < 2].tolist()
    if single:
        raise ValueError(f"{fn}: groups {single[:10]} hold a single response, which has no other member to compare "
                         "with (its advantage would always be 0); sample k >= 2 responses per prompt")
    return inverse, counts


def _group_sum(x: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> torch.Tensor:
    return torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)


def rloo_advantages(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out advantages: each score minus the mean score of the other members of its group.

    scores (B,) float, group_ids (B,) long. A_i = R_i - 1/(k-1) * sum_{j != i in group(i)} R_j, which equals
    k/(k-1) * (R_i - mean of the group) (k = that group's size; groups may differ in size).
    Returns (B,), without gradient. A group of size 1 is a ValueError (it has no baseline).
    """
    # Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    # Feedback in LLMs", eq. 9 (the RLOO estimator of Kool et al. 2019).
    fn = "rloo_advantages"
    inverse, counts = _groups(fn, scores, group_ids)
    with torch.no_grad():
        s = scores.detach()
        total = _group_sum(s, inverse, counts.numel())[inverse]
        k = counts.to(s.dtype)[inverse]
        return s - (total - s) / (k - 1)


def grpo_advantages(scores: torch.Tensor, group_ids: torch.Tensor, scale_by_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """GRPO's group-normalised advantages: (R_i - mean(group)) / (std(group) + eps).

    scores (B,) float, group_ids (B,) long. std is the unbiased (Bessel-corrected) standard deviation within the
    group, as TRL's and OpenRLHF's implementations take it. scale_by_std=False gives R_i - mean(group) (Dr. GRPO,
    Liu et al. 2025, who drop the std division as a question-difficulty bias). A group whose scores are all equal
    gets advantage 0 for every member (no learning signal). Returns (B,), without gradient. A group of size 1 is a
    ValueError (its advantage would always be 0).
    """
    # Shao et al. 2024, "DeepSeekMath", section 4.1.2 (outcome supervision; the advantage in eq. 3):
    # A_i = (r_i - mean(r)) / std(r) over the G outputs sampled for one question.
    fn = "grpo_advantages"
    inverse, counts = _groups(fn, scores, group_ids)
    eps = check_number(fn, "eps", eps, low=0.0)
    with torch.no_grad():
        s = scores.detach()
        n = counts.to(s.dtype)
        mean = (_group_sum(s, inverse, n.numel()) / n)[inverse]
        # a constant group gives exactly 0: its float mean may be off by rounding, and that residue over a ~0 std
        # would be a full-size advantage
        high = torch.full_like(n, -torch.inf).scatter_reduce(0, inverse, s, "amax")
        low = torch.full_like(n, torch.inf).scatter_reduce(0, inverse, s, "amin")
        centred = torch.where((high == low)[inverse], torch.zeros_like(s), s - mean)
        if not scale_by_std:
            return centred
        var = _group_sum(centred * centred, inverse, n.numel()) / (n - 1)
        std = var.sqrt()[inverse]
        return torch.where(centred == 0, centred, centred / (std + eps))


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Return-to-go over each response: G_t = r_t + gamma * G_{t+1}, with G = 0 after the last valid token.

    rewards, mask: (B, T), mask right-padded with >= 1 valid token per row. Returns (B, T), 0 at masked positions,
    without gradient. REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
    Language Models", eq. 6-7) takes these returns of the KL-shaped per-token rewards as the advantage before
    normalising them over the global batch; with gamma = 1 every token of a row gets its score plus the KL
    penalties from that token on.
    """
    fn = "discounted_returns"
    check_tensor(fn, "rewards", rewards)
    check_2d(fn, "rewards", rewards)
    check_mask(fn, mask, rewards, "rewards")
    gamma = check_number(fn, "gamma", gamma, low=0.0, high=1.0)
    check_rows(fn, mask)
    with torch.no_grad():
        r = torch.where(mask, rewards.detach(), torch.zeros((), dtype=rewards.dtype, device=rewards.device))
        running = torch.zeros_like(r[:, 0])
        out = []
        for t in reversed(range(r.shape[1])):
            running = r[:, t] + gamma * running  # padded steps add 0, and come after every valid one
            out.append(running)
        ret = torch.stack(out[::-1], dim=1)
        return torch.where(mask, ret, torch.zeros((), dtype=ret.dtype, device=ret.device))


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str, norm: float | None = None) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar over the valid tokens of `mask`.

    mode "token-mean": sum over all valid tokens / their number (every token weighs the same; PPO here, DAPO).
    mode "seq-mean-token-mean": the mean over rows of each row's token mean (GRPO as written: Shao et al. 2024,
      eq. 3, 1/G sum_i 1/|o_i| sum_t; a long response's tokens weigh less).
    mode "seq-mean-token-sum-norm": the mean over rows of each row's token sum / `norm` (Dr. GRPO: Liu et al. 2025,
      "Understanding R1-Zero-Like Training", section 3.1: the 1/|o_i| length bias removed; `norm` is a constant
      such as max_new_tokens, required in this mode only).
    Values at masked positions never count. Returns a 0-dim tensor (with gradient where per_token has one).
    """
    fn = "aggregate_loss"
    check_tensor(fn, "per_token", per_token)
    check_2d(fn, "per_token", per_token)
    check_mask(fn, mask, per_token, "per_token")
    if mode not in AGGREGATIONS:
        raise ValueError(f"{fn}: unknown mode {mode!r}; use one of {AGGREGATIONS}")
    if mode == "token-mean":
        return masked_mean(per_token, mask)
    if not bool(mask.any(dim=1).all()):
        raise ValueError(f"{fn}: some rows of `mask` have no valid token, so their sequence loss is undefined; "
                         "drop empty responses first")
    valid = torch.where(mask, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    if mode == "seq-mean-token-mean":
        return (valid.sum(dim=1) / mask.sum(dim=1)).mean()
    if norm is None:
        raise ValueError(f"{fn}: mode 'seq-mean-token-sum-norm' needs `norm` (a constant such as max_new_tokens)")
    norm = check_number(fn, "norm", norm, low=0.0, low_open=True)
    return (valid.sum(dim=1) / norm).mean()

