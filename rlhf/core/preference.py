"""Preference learning: the pairwise (Bradley-Terry) reward-model loss, k-wise rankings to pairs, and DPO."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rlhf.core._checks import check_tensor


def pairwise_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry loss -mean(logsigmoid(chosen - rejected - margin)).

    chosen, rejected: (N,) reward scores of the preferred and the other response; margin: None, a float or (N,)
    (e.g. preference strength, as in Llama 2). Returns (loss, stats); stats are detached 0-dim tensors:
      accuracy      fraction of pairs with chosen > rejected (ties count as wrong),
      margin_mean   mean of chosen - rejected.
    """
    fn = "pairwise_loss"
    check_tensor(fn, "chosen", chosen)
    check_tensor(fn, "rejected", rejected)
    if chosen.dim() != 1 or chosen.shape != rejected.shape:
        raise ValueError(
            f"{fn}: `chosen` and `rejected` must both have shape (N,), got {tuple(chosen.shape)} and "
            f"{tuple(rejected.shape)}; squeeze the scalar-head output to (N,)"
        )
    if chosen.numel() == 0:
        raise ValueError(f"{fn}: got no pairs (N = 0); check the preference batch is not empty")
    diff = chosen - rejected
    if margin is not None:
        if isinstance(margin, torch.Tensor) and margin.shape not in (chosen.shape, torch.Size([])):
            raise ValueError(f"{fn}: `margin` must be a float or have shape (N,), got {tuple(margin.shape)}")
        diff_m = diff - margin
    else:
        diff_m = diff
    # Ouyang et al. 2022 (InstructGPT), eq. 1; margin term from Touvron et al. 2023 (Llama 2).
    loss = -F.logsigmoid(diff_m).mean()
    with torch.no_grad():
        stats = {
            "accuracy": (diff > 0).to(diff.dtype).mean(),
            "margin_mean": diff.mean(),
        }
    return loss, stats


def ranking_to_pairs(ranks: Sequence[int]) -> list[tuple[int, int]]:
    """All (better_index, worse_index) pairs of a k-wise ranking; ties give no pair.

    ranks: one rank per item, 1 = best, tied items share a rank (e.g. [2, 1, 2] -> [(1, 0), (1, 2)]).
    Returns pairs sorted by better index, then worse index. A ranking of k items yields up to k(k-1)/2 pairs.
    """
    # InstructGPT (Ouyang et al. 2022, sec. 3.5): each ranking of K responses gives all K-choose-2 comparisons.
    fn = "ranking_to_pairs"
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
        raise ValueError(f"{fn}: `ranks` must be a list of integer ranks (1 = best), got {type(ranks).__name__}")
    if len(ranks) < 2:
        raise ValueError(f"{fn}: a ranking needs at least 2 items, got {len(ranks)}")
    for i, r in enumerate(ranks):
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"{fn}: rank at index {i} is {r!r}; ranks must be integers >= 1 (1 = best)")
    return [(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]


def dpo_loss(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Direct Preference Optimization loss (Rafailov et al. 2023, eq. 7), with conservative-DPO label smoothing.

    All four inputs are (N,): the summed log-prob of each response given its prompt under the policy and under the
    frozen reference. With the log-ratios h_c = policy_chosen_logp - ref_chosen_logp and h_r likewise, the implicit
    rewards are beta * h; the loss is the Bradley-Terry loss of those rewards (pairwise_loss), and with
    label_smoothing = eps, a label flipped with probability eps (cDPO, Mitchell 2023):
        loss = (1 - eps) * -mean logsigmoid(beta (h_c - h_r)) + eps * -mean logsigmoid(beta (h_r - h_c)).
    Returns (loss, stats); stats are detached 0-dim tensors:
      accuracy          fraction of pairs with h_c > h_r (the implicit reward ranks the chosen higher; ties wrong),
      margin            mean of beta (h_c - h_r), the implicit reward margin,
      chosen_logratio   mean of h_c (nats; falling below 0 = the chosen response loses likelihood),
      rejected_logratio mean of h_r.
    """
    fn = "dpo_loss"
    inputs = {"policy_chosen_logp": policy_chosen_logp, "policy_rejected_logp": policy_rejected_logp,
              "ref_chosen_logp": ref_chosen_logp, "ref_rejected_logp": ref_rejected_logp}
    for name, t in inputs.items():
        check_tensor(fn, name, t)
        if t.dim() != 1 or t.shape != policy_chosen_logp.shape:
            raise ValueError(f"{fn}: every input must have the same shape (N,); got "
                             + ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items())
                             + "; sum the per-token log-probs over each response first")
    if not beta > 0:
        raise ValueError(f"{fn}: beta must be > 0, got {beta}; use e.g. 0.1 (Rafailov et al. 2023)")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"{fn}: label_smoothing must be in [0, 0.5), got {label_smoothing}; use 0 (plain DPO) or a "
                         "small flip probability such as 0.1")
    chosen_logratio = policy_chosen_logp - ref_chosen_logp  # h_c = log pi(y_c|x) / pi_ref(y_c|x)
    rejected_logratio = policy_rejected_logp - ref_rejected_logp
    chosen_reward, rejected_reward = beta * chosen_logratio, beta * rejected_logratio  # implicit rewards
    loss, stats = pairwise_loss(chosen_reward, rejected_reward)  # -mean logsigmoid(beta (h_c - h_r)), eq. 7
    if label_smoothing:
        flipped, _ = pairwise_loss(rejected_reward, chosen_reward)  # the same pair with its label flipped
        loss = (1 - label_smoothing) * loss + label_smoothing * flipped  # cDPO (Mitchell 2023)
    with torch.no_grad():
        stats = {"accuracy": stats["accuracy"], "margin": stats["margin_mean"],
                 "chosen_logratio": chosen_logratio.mean(), "rejected_logratio": rejected_logratio.mean()}
    return loss, stats
