"""Early stopping on a held-out loss, keeping the best weights (a reward model or a DPO policy overfits its
comparisons: the held-out loss falls, then rises while the training loss keeps falling)."""

from __future__ import annotations

import math
from typing import Any

import torch


class BestHeldout:
    """A CPU copy of the trainable weights (with LoRA: adapters and head) at the lowest held-out loss so far, and
    how many evaluations have passed without a lower one. `metric` is the held-out loss's name (e.g.
    "eval/rm_loss"); the loop logs the best as `<metric minus _loss>_best_loss` and `..._best_step`."""

    def __init__(self, patience: int, metric: str = "eval/rm_loss"):
        self.patience, self.metric = patience, metric
        self.best_loss, self.best_step, self.since_best = math.inf, -1, 0
        self.weights: dict[str, torch.Tensor] = {}

    def names(self) -> tuple[str, str]:
        """The logged names of the best loss and its step: eval/rm_loss -> eval/rm_best_loss, eval/rm_best_step."""
        stem = self.metric.removesuffix("_loss")
        return f"{stem}_best_loss", f"{stem}_best_step"

    def update(self, module: torch.nn.Module, step: int, loss: float) -> bool:
        """Record the evaluation at `step`; True when `patience` evaluations in a row found no lower loss."""
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.since_best = loss, step, 0
            self.weights = {n: p.detach().to("cpu", copy=True) for n, p in module.named_parameters() if p.requires_grad}
        else:
            self.since_best += 1
        return self.patience > 0 and self.since_best >= self.patience

    @torch.no_grad()
    def restore(self, module: torch.nn.Module) -> None:
        params = dict(module.named_parameters())
        for n, w in self.weights.items():
            params[n].copy_(w)

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "since_best": self.since_best,
                "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss, self.best_step, self.since_best = state["best_loss"], state["best_step"], state["since_best"]
        self.weights = dict(state["weights"])
