"""Optimisers and learning-rate schedules."""

from __future__ import annotations

import math
from typing import Any

import torch


def make_optimizer(cls: type[torch.optim.Optimizer], params: Any, **kw: Any) -> torch.optim.Optimizer:
    """torch.optim.Adam/AdamW with the fused kernel (the whole update in one op per dtype and device: same maths,
    ~2x faster steps on small models; transformers' Trainer default) where every parameter is on CPU or CUDA."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(t.device.type in ("cpu", "cuda") and t.is_floating_point() for t in tensors)
    return cls(groups, fused=fused or None, **kw)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up to 1, then cosine/linear decay to 0 (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress_ = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress_
    return 0.5 * (1.0 + math.cos(math.pi * progress_))


def make_adamw(params: list[torch.nn.Parameter], cfg: Any, total_steps: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `params` from an OptimOptions config (lr, weight_decay, adam_eps) and its LambdaLR schedule from a
    LoopOptions one (warmup_steps, schedule) over `total_steps` optimiser steps."""
    opt = make_optimizer(torch.optim.AdamW, params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.schedule))
    return opt, sched
