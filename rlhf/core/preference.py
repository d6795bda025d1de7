"""Preference learning: the pairwise (Bradley-Terry) reward-model loss and k-wise rankings to pairs."""

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
