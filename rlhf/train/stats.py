"""The training statistics of a step loop between two log rows, summed over every process."""

from __future__ import annotations

import time
from typing import Any

import torch


class TrainStats:
    """The training statistics of a step loop (SFT, reward, DPO) between two log rows, on one or several processes.

    Each process `add`s its own micro-batches' stats (a key may be missing from a batch: a reward batch without a
    tie has no tie loss) and tokens; `row` sums them over every process (a collective: every process calls it at the
    same step), so a logged mean is over all processes' micro-batches since the last row, not over rank 0's alone.
    """

    def __init__(self, prefix: str, keys: tuple[str, ...]):
        self.prefix, self.keys = prefix, keys
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {k: 0.0 for k in self.keys}
        self.counts: dict[str, int] = {k: 0 for k in self.keys}
        self.tokens, self.t0 = 0, time.perf_counter()

    def add(self, stats: dict[str, Any], tokens: int) -> None:
        for k, v in stats.items():
            self.sums[k] += float(v)
            self.counts[k] += 1
        self.tokens += tokens

    def row(self, acc: Any, step: int, micro: int, batches_per_epoch: int) -> dict[str, float]:
        """{step, epoch, PREFIX/KEY: mean over every process, throughput/tokens_per_s}; then starts a new window.

        `micro` is this process's micro-batch count and `batches_per_epoch` the micro-batches of one epoch of all
        processes together: each process takes every N-th batch, so N processes finish an epoch N times sooner."""
        local = [[self.sums[k], self.counts[k]] for k in self.keys] + [[self.tokens, 0]]
        totals = acc.reduce(torch.tensor(local, device=acc.device, dtype=torch.float64), "sum").tolist()
        row: dict[str, float] = {"step": step, "epoch": micro * acc.num_processes / max(1, batches_per_epoch)}
        row.update({f"{self.prefix}/{k}": s / n for k, (s, n) in zip(self.keys, totals) if n})
        row["throughput/tokens_per_s"] = totals[-1][0] / max(time.perf_counter() - self.t0, 1e-9)
        self.reset()
        return row
