"""Several objectives: the reward model plus one or more cost models (each a `rlhf reward` model trained on its own
labels, higher = more costly), combined into the one score every on-policy estimator optimises.

Two ways (the cost options of rlhf.rl.config):
- fixed weights (no cost_threshold): score = r - sum_i w_i c_i
- constrained (cost_threshold d_i given): maximise E[r] subject to E[c_i] <= d_i, as the Lagrangian
  min_{lambda >= 0} max_pi E[r] - sum_i lambda_i (E[c_i] - d_i) (Safe RLHF, Dai et al. 2023, eq. 10). Each update,
  first the multiplier takes one projected gradient-ascent step on the rollout batch's mean cost,
      lambda_i <- max(0, lambda_i + lagrange_lr * (mean c_i - d_i)),
  then the score is (r - sum_i lambda_i c_i) / (1 + sum_i lambda_i) (Safe RLHF, eq. 31: the 1 + lambda keeps the
  score's scale, and so its balance with the KL penalty, from growing with lambda).

The combination is at the score: every estimator (GAE, RLOO, GRPO, REINFORCE++) and the KL shaping work on it
unchanged, and PPO needs one critic, not one per objective (Safe RLHF trains a cost critic too; with a score-level
combination a single critic learns the values of the combined score).

Scores are the models' normalised scores (mean 0, std 1 on the SFT samples given to `rlhf reward --norm_samples`),
so a threshold of 0 means "no more cost on average than the SFT model's samples".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# ---------------------------------------------------------------------------------------------------------------
# the math (pure: tensors in, tensors out)


def combine_scores(reward: torch.Tensor, costs: torch.Tensor, weights: torch.Tensor,
                   normalise: bool = False) -> torch.Tensor:
    """reward (B,), costs (C, B), weights (C,) >= 0 -> (B,): reward - sum_i w_i c_i, divided by 1 + sum_i w_i when
    `normalise` (Safe RLHF's (r - lambda c) / (1 + lambda))."""
    combined = reward - (weights.to(costs.dtype)[:, None] * costs).sum(0)
    return combined / (1 + weights.sum()) if normalise else combined


def lagrange_step(lam: torch.Tensor, mean_cost: torch.Tensor, threshold: torch.Tensor, lr: float) -> torch.Tensor:
    """One projected gradient-ascent step of each multiplier (C,): max(0, lambda + lr * (mean cost - threshold)).
    d/d lambda of the Lagrangian -lambda (E[c] - d) is -(E[c] - d): the multiplier grows while the constraint is
    violated and shrinks to 0 (never below) once it holds."""
    return torch.clamp(lam + lr * (mean_cost - threshold), min=0.0)


# ---------------------------------------------------------------------------------------------------------------
# the run's state: the cost models, the multipliers, the metrics


def suffix(i: int) -> str:
    """Metric suffix of the i-th cost model: '' for the first, '_2', '_3', ... after it."""
    return "" if i == 0 else f"_{i + 1}"


class Objectives:
    """The cost models of a run and their multipliers (constrained) or fixed weights. `combine` is called once per
    update on the rollout batch (rlhf.rl.rollout.collect); `stats` gives the update's objective/* and gold/* rows;
    `state_dict` goes into the checkpoint so a resumed run continues with the same multipliers."""

    def __init__(self, models: Sequence[Any], weights: Sequence[float], thresholds: Sequence[float] | None,
                 lagrange_lr: float, lagrange_init: float, gold_cost: Any = None):
        self.models = list(models)
        n = len(self.models)
        self.constrained = thresholds is not None
        self.threshold = torch.tensor(list(thresholds) if thresholds is not None else [0.0] * n, dtype=torch.float64)
        self.lam = torch.full((n,), float(lagrange_init), dtype=torch.float64) if self.constrained else \
            torch.tensor(list(weights), dtype=torch.float64)
        self.lr = lagrange_lr
        self.gold_cost = gold_cost  # text -> cost, the demo's second gold judge (logged as gold/cost, never optimised)
        self._last: dict[str, float] = {}
        self._batch: Any = None

    def combine(self, batch: Any, reward_scores: torch.Tensor, acc: Any) -> torch.Tensor:
        """The score to optimise for this rollout batch (B,); in constrained mode the multipliers first step on the
        batch's mean cost over all processes (every process computes the same multipliers)."""
        from rlhf.rl.distributed import global_mean

        costs = torch.stack([m(batch.input_ids, batch.attention_mask)[0].float() for m in self.models])  # (C, B)
        mean_cost = torch.tensor([global_mean(c, acc) for c in costs], dtype=torch.float64)
        if self.constrained:
            self.lam = lagrange_step(self.lam, mean_cost, self.threshold, self.lr)
        combined = combine_scores(reward_scores.float(), costs, self.lam.to(costs.device).float(), self.constrained)
        self._batch = batch
        self._last = {"objective/reward": global_mean(reward_scores.float(), acc)}
        for i in range(len(self.models)):
            self._last[f"objective/cost{suffix(i)}"] = float(mean_cost[i])
            key = "objective/lagrange_multiplier" if self.constrained else "objective/cost_weight"
            self._last[f"{key}{suffix(i)}"] = float(self.lam[i])
        return combined.to(reward_scores.dtype)

    def stats(self, s: Any) -> dict[str, float]:
        """The last combined batch's objective/* metrics, and gold/cost when the second gold judge is known."""
        out = dict(self._last)
        if self.gold_cost is not None and self._batch is not None:
            from rlhf.models.generation import decode_responses
            from rlhf.rl.distributed import global_mean

            texts = decode_responses(s.m.tokenizer, self._batch, s.m.eos_ids)
            out["gold/cost"] = global_mean(torch.tensor([self.gold_cost(t) for t in texts], device=s.acc.device),
                                           s.acc)
        self._batch = None
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.lam.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lam = state["lam"].to(torch.float64)
        if lam.shape != self.lam.shape:
            from rlhf.errors import UserError

            raise UserError(f"the checkpoint holds {lam.numel()} cost multipliers and this run has {self.lam.numel()} "
                            "cost models; resume with the same --cost_reward, or start again without --resume")
        self.lam = lam


def load_objectives(cfg: Any, device: Any, tokenizer: Any) -> Objectives | None:
    """The run's cost models (frozen, in eval mode, in cfg.dtype), or None without --cost_reward."""
    if not cfg.cost_reward:
        return None
    from rlhf.errors import UserError
    from rlhf.models.loading import load_tokenizer
    from rlhf.models.reward import load_reward_model

    models = []
    for folder in cfg.cost_reward:
        m = load_reward_model(folder, dtype=cfg.dtype, device=str(device))
        if load_tokenizer(m.tokenizer_path).get_vocab() != tokenizer.get_vocab():
            raise UserError(f"config field 'cost_reward': the cost model '{folder}' uses a different tokenizer than "
                            f"the policy '{cfg.policy}'; train it from the SFT model (rlhf reward --model SFT_FOLDER "
                            "on the cost labels) so the token ids mean the same thing")
        models.append(m.eval().requires_grad_(False))
    n = len(models)
    weights = cfg.cost_weight * n if len(cfg.cost_weight) == 1 else (cfg.cost_weight or [1.0] * n)
    thresholds = None
    if cfg.cost_threshold:
        thresholds = cfg.cost_threshold * n if len(cfg.cost_threshold) == 1 else cfg.cost_threshold
    gold_cost = None
    if cfg.gold == "demo":
        from rlhf.data.gold import cost_score

        gold_cost = cost_score
    return Objectives(models, weights, thresholds, cfg.lagrange_lr, cfg.lagrange_init, gold_cost)
