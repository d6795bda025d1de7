"""Reductions over every process's share of the batch: sums, means, masked means and whitening, so that a
statistic (and a normalisation) of a 2-process run equals the 1-process one."""

from __future__ import annotations

from typing import Any

import torch

from rlhf.core import masked_whiten


def global_sum(x: torch.Tensor | float, acc: Any) -> float:
    x = torch.as_tensor(x, dtype=torch.float32, device=acc.device)
    return float(acc.reduce(x, "sum")) if acc.num_processes > 1 else float(x)


def global_mean(x: torch.Tensor, acc: Any) -> float:
    return global_sum(x.float().sum(), acc) / global_sum(torch.tensor(float(x.numel())), acc)


def global_masked_mean(x: torch.Tensor, mask: torch.Tensor, acc: Any) -> float:
    return global_sum((x * mask).sum(), acc) / global_sum(mask.sum().float(), acc)


def global_whiten(x: torch.Tensor, mask: torch.Tensor, acc: Any, shift_mean: bool = True) -> torch.Tensor:
    """masked_whiten with the mean and unbiased variance taken over all processes."""
    if acc.num_processes == 1:
        return masked_whiten(x, mask, shift_mean=shift_mean)
    xm = x * mask
    s = acc.reduce(torch.stack([xm.sum(), (xm * xm).sum(), mask.sum().to(x.dtype)]), "sum")
    mean = s[0] / s[2]
    var = (s[1] - s[2] * mean**2) / (s[2] - 1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, acc: Any) -> float:
    """1 - Var(R - V) / Var(R) over all valid tokens of all processes (V = values at rollout time)."""
    def var(x: torch.Tensor) -> float:
        mean = global_masked_mean(x, mask, acc)
        return global_masked_mean((x - mean) ** 2, mask, acc)

    vr = var(returns)
    return 1.0 - var(returns - values) / vr if vr > 0 else 0.0
