"""Conservative rewards from a reward-model ensemble and the length defences against reward hacking: pure functions
on per-response tensors (docs/reward-hacking.md).

- `aggregate_members`: the score from the members' normalised scores (N, B): their mean, their minimum (worst-case
  optimisation) or mean - k * std (uncertainty-weighted optimisation; Coste et al. 2023, "Reward Model Ensembles
  Help Mitigate Overoptimization", arXiv:2310.02743). std is the sample std (N - 1), as `ensemble/disagreement`.
- `clip_scores`: the score clipped to [-C, C], and which rows were clipped (so the fraction can be logged).
- `fit_length` / `length_correct`: the least-squares line of score on response length and the score minus the fitted
  length effect, slope * (length - mean length): the mean score at the fit's mean length is kept (Singhal et al.
  2023, "A Long Way to Go: Investigating Length Correlations in RLHF", arXiv:2310.03716).
"""

from __future__ import annotations

import torch

REWARD_AGGREGATES = ("mean", "min", "mean_minus_std")


def aggregate_members(members: torch.Tensor, how: str = "mean", std_coef: float = 1.0) -> torch.Tensor:
    """(N, B) member scores -> (B,): mean, min, or mean - std_coef * std (sample std over the N members)."""
    if members.dim() != 2:
        raise ValueError(f"members must be (members, batch), got shape {tuple(members.shape)}")
    if how == "mean":
        return members.mean(0)
    if how not in REWARD_AGGREGATES:
        raise ValueError(f"unknown aggregate '{how}'; use one of {', '.join(REWARD_AGGREGATES)}")
    if members.shape[0] < 2:
        raise ValueError(f"'{how}' needs an ensemble of >= 2 members, got {members.shape[0]}; use 'mean'")
    if how == "min":
        return members.min(0).values
    return members.mean(0) - std_coef * members.std(0)


def clip_scores(scores: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) -> (scores clipped to [-bound, bound], bool (B,) True where a score was outside); bound > 0."""
    if bound <= 0:
        raise ValueError(f"clip bound must be > 0, got {bound}")
    return scores.clamp(-bound, bound), scores.abs() > bound


def fit_length(n: float, sum_x: float, sum_y: float, sum_xx: float, sum_xy: float) -> tuple[float, float]:
    """Least-squares line y = a + slope * x from the sums over n points (so processes can add theirs first) ->
    (slope, mean x). A constant x has no slope to fit: slope 0."""
    if n <= 0:
        raise ValueError("no points to fit")
    mean_x, mean_y = sum_x / n, sum_y / n
    var_x = sum_xx / n - mean_x**2
    cov = sum_xy / n - mean_x * mean_y
    return (cov / var_x if var_x > 1e-12 else 0.0), mean_x


def length_correct(scores: torch.Tensor, lengths: torch.Tensor, slope: float, mean_length: float) -> torch.Tensor:
    """(B,) scores minus the fitted length effect slope * (length - mean_length)."""
    return scores - slope * (lengths.to(scores.dtype) - mean_length)
