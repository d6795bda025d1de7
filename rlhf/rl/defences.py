"""Defences against reward hacking at the score every on-policy algorithm optimises (docs/reward-hacking.md): the
ensemble aggregate (mean, min, mean - k * std; Coste et al. 2023), a length-regressed score, a length penalty per
response token and clipping to [-C, C]. The math is rlhf.core.reward_shaping; this is the run's state and metrics.

The score of a response with members' normalised scores r_i (N, B) and response length L (tokens, EOS included):

    s = clip(aggregate(r) - slope * (L - mean_L), -C, C) - length_penalty * L

then the missing-EOS option (rlhf.rl.rollout.score). `slope` and `mean_L` are the least-squares fit of the aggregate
on L over the first update's rollouts, i.e. samples of the initial (SFT) policy: the distribution the reward model
was normalised on. The fit is then frozen (and saved in the checkpoint): a fit per rollout batch would follow the
policy, and once it has learnt to write long replies the batch's lengths barely vary and the slope it finds no
longer measures the reward model's length bias.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from rlhf.config import check
from rlhf.core import aggregate_members, clip_scores, fit_length, length_correct

log = logging.getLogger(__name__)


def ensemble_size(reward: str) -> int | None:
    """Members of the reward model folder (reward_config.json; a folder without one loads as a single model), None
    when it cannot be told before loading (a hub id)."""
    path = Path(reward) / "reward_config.json"
    if Path(reward).is_dir() and not path.exists():
        return 1
    try:
        return len(json.loads(path.read_text(encoding="utf-8")).get("members") or [None])
    except (OSError, ValueError):
        return None


class RewardDefences:
    """The defences of one run; None from `from_config` when every option is at its default (today's score)."""

    def __init__(self, aggregate: str = "mean", std_coef: float = 1.0, clip: float = 0.0, length_penalty: float = 0.0,
                 length_regress: bool = False):
        self.aggregate, self.std_coef, self.clip = aggregate, std_coef, clip
        self.length_penalty, self.length_regress = length_penalty, length_regress
        self.slope: float | None = None  # the frozen length fit (length_regress)
        self.mean_length = 0.0
        self._stats: dict[str, float] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> RewardDefences | None:
        """Refuse an aggregate the reward model cannot give (before any model loads), then the run's defences."""
        if cfg.reward_aggregate != "mean":
            n = ensemble_size(cfg.reward)
            check(n is None or n >= 2, "reward_aggregate",
                  f"'{cfg.reward_aggregate}' needs a reward ensemble of >= 2 members; {cfg.reward} has {n}",
                  "train one with `rlhf reward --ensemble 4 ...` and pass its folder as --reward, or use "
                  "--reward_aggregate mean")
        if (cfg.reward_aggregate, cfg.reward_clip, cfg.length_penalty, cfg.length_regress) == ("mean", 0, 0, False):
            return None
        return cls(cfg.reward_aggregate, cfg.reward_std_coef, cfg.reward_clip, cfg.length_penalty, cfg.length_regress)

    def apply(self, members: torch.Tensor, lengths: torch.Tensor, acc: Any) -> torch.Tensor:
        """(N, B) members' normalised scores, (B,) response lengths -> (B,) the score to optimise. The first call with
        length_regress fits the length line over all processes."""
        from rlhf.rl.distributed import global_mean, global_sum

        if members.shape[0] < 2 and self.aggregate != "mean":  # a folder without reward_config.json gets here
            check(False, "reward_aggregate", f"'{self.aggregate}' needs a reward ensemble of >= 2 members; the reward "
                  "model has 1", "train one with `rlhf reward --ensemble 4 ...`, or use --reward_aggregate mean")
        lengths = lengths.float()
        scores = aggregate_members(members.float(), self.aggregate, self.std_coef)
        stats = {"objective/reward_mean": global_mean(members.float().mean(0), acc)}
        if self.aggregate != "mean":
            stats["objective/reward_aggregated"] = global_mean(scores, acc)
        if self.length_regress:
            if self.slope is None:
                sums = [global_sum(x.sum().double(), acc) for x in (lengths, scores, lengths**2, lengths * scores)]
                self.slope, self.mean_length = fit_length(global_sum(torch.tensor(float(len(scores))), acc), *sums)
                log.info("length_regress: fitted %.4f per token around %.1f tokens on the first rollouts",
                         self.slope, self.mean_length)
            scores = length_correct(scores, lengths, self.slope, self.mean_length)
            stats["objective/length_slope"] = self.slope
        if self.clip > 0:
            scores, clipped = clip_scores(scores, self.clip)
            stats["objective/reward_clipfrac"] = global_mean(clipped.float(), acc)
        if self.length_penalty:
            scores = scores - self.length_penalty * lengths
        self._stats = stats
        return scores

    def stats(self) -> dict[str, float]:
        """The last rollout batch's metrics (docs/metrics.md)."""
        return dict(self._stats)

    def state_dict(self) -> dict[str, Any]:
        return {"slope": self.slope, "mean_length": self.mean_length}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.slope, self.mean_length = state.get("slope"), float(state.get("mean_length", 0.0))
