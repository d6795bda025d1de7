"""Shared hypothesis strategies and naive reference implementations for tests/core."""

from __future__ import annotations

import torch
from hypothesis import strategies as st


@st.composite
def padded_batches(draw, max_b: int = 5, max_t: int = 8, n_tensors: int = 1, dtype=torch.float64):
    """(tensors, mask): n_tensors random (B, T) tensors and a right-padded bool mask, >= 1 valid token per row."""
    b = draw(st.integers(1, max_b))
    t = draw(st.integers(1, max_t))
    lengths = draw(st.lists(st.integers(1, t), min_size=b, max_size=b))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(b, t, generator=gen, dtype=dtype) * 3 for _ in range(n_tensors)]
    mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return tensors, mask


def mask_from_lengths(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def valid_lists(x: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """The valid entries of each row as plain Python floats."""
    return [[float(v) for v, m in zip(row, mrow) if m] for row, mrow in zip(x.tolist(), mask.tolist())]


def gae_loop(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """GAE over one episode, as a plain loop over Python lists (CleanRL style)."""
    n = len(rewards)
    adv = [0.0] * n
    last = 0.0
    for t in reversed(range(n)):
        next_v = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values)]
