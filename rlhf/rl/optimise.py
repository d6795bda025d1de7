"""The minibatch optimiser of every on-policy algorithm: epochs x minibatches x accumulation over one rollout,
weighted so that neither the split into micro-batches nor the process count changes the gradient; the algorithm
gives its loss as a callback. Also the policy term they share (clipped surrogate, entropy bonus) and the
sampler/trainer log-prob gap measured before the first optimiser step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlhf.core import masked_mean, ppo_policy_loss
from rlhf.rl.distributed import global_sum

MAX_KEYS = {"policy/ratio_max"}  # reduced by max over micro-batches (this process), not by a weighted mean


@dataclass
class Micro:
    """One micro-batch of the rollout: its rows `ix`, their Batch and response mask; `first` = the first minibatch
    of the first epoch (no optimiser step yet, so any log-prob gap is sampler/trainer mismatch)."""

    ix: torch.Tensor
    batch: Any
    mask: torch.Tensor
    first: bool


LossFn = Callable[[Micro], tuple[torch.Tensor, dict[str, Any]]]


def optimise(cfg: Any, update: int, acc: Any, s: Any, rollout: Any, loss_fn: LossFn, models: list[Any], *,
             weight_by: str = "tokens", after_minibatch: Callable[[dict[str, list[float]]], None] | None = None
             ) -> tuple[dict[str, float], int]:
    """cfg.ppo_epochs passes of cfg.num_minibatches seeded minibatches, each cfg.grad_accum micro-batches, one
    optimiser step per minibatch; returns (the loss callback's stats averaged over optimiser steps, 1 if the
    epochs stopped early at cfg.target_approx_kl else 0).

    `loss_fn(micro)` returns (loss of that micro-batch as its own mean, stats). weight_by "tokens": the loss is a
    token mean, weighted by the micro-batch's share of the minibatch's tokens over all processes; "sequences": a
    mean over sequences (GRPO's aggregation modes), weighted by its share of the sequences. Either way the summed
    gradient is the whole minibatch's, after DDP averages over processes. `after_minibatch(stats)` may add more
    backward passes before the step (PPO-ptx)."""
    mask = rollout.mask
    local = mask.shape[0]
    mb_size = local // cfg.num_minibatches
    micro_size = mb_size // cfg.grad_accum
    for model in models:
        model.train()  # dropout is off (see disable_dropout); train() only matters for layers that check it
    acc_stats: dict[str, list[float]] = {}
    n_steps, early_stopped = 0, 0
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + update)
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(local, generator=gen).to(acc.device)
        epoch_kl = []
        for mb_start in range(0, local, mb_size):
            mb = perm[mb_start:mb_start + mb_size]
            size = mask[mb].sum().float() if weight_by == "tokens" else torch.tensor(float(len(mb)))
            total = global_sum(size, acc)  # tokens (or sequences) in this minibatch over all processes
            for micro_start in range(0, mb_size, micro_size):
                ix = mb[micro_start:micro_start + micro_size]
                m_ = mask[ix]
                # weight: the micro-batch's mean x (its share of the minibatch) x processes
                w = (m_.sum().float() if weight_by == "tokens" else torch.tensor(float(len(ix)))) / total * \
                    acc.num_processes
                loss, stats = loss_fn(Micro(ix, rollout.batch.index(ix), m_, epoch == 0 and mb_start == 0))
                acc.backward(loss * w)
                for k, v in stats.items():
                    acc_stats.setdefault(k, []).append(float(v) if k in MAX_KEYS else
                                                       float(v) * float(w) / acc.num_processes)
                if "policy/approxkl" in stats:
                    epoch_kl.append(float(stats["policy/approxkl"]) * float(w) / acc.num_processes)
            if after_minibatch is not None:
                after_minibatch(acc_stats)
            clip_each(acc, models, cfg.max_grad_norm)
            for opt_, sched in zip(s.optimizers, s.schedulers):
                opt_.step()
                sched.step()
                opt_.zero_grad(set_to_none=True)
            n_steps += 1
        # early stop (Schulman et al. 2017 baselines / OpenAI Spinning Up): approx KL over this epoch too large
        if cfg.target_approx_kl > 0 and epoch_kl and global_sum(torch.tensor(sum(epoch_kl) / cfg.num_minibatches),
                                                                acc) > cfg.target_approx_kl:
            early_stopped = 1
            break
    out = {k: max(v) if k in MAX_KEYS else global_sum(torch.tensor(sum(v)), acc) / n_steps
           for k, v in acc_stats.items()}
    return out, early_stopped


class LogprobGap:
    """|training forward - sampler| log-prob on the first minibatch, before any optimiser step: the sampler's own
    log-probs where it reported them (transformers' sampling loop, vLLM), else the rollout's recomputed ones."""

    def __init__(self, rollout: Any):
        self.sampler_logp = rollout.batch.logprobs if rollout.batch.logprobs is not None else rollout.old_logp
        self.sum, self.n, self.max, self.seen = 0.0, 0.0, 0.0, False

    def record(self, logp: torch.Tensor, micro: Micro) -> None:
        if not micro.first:
            return
        d = (logp.detach() - self.sampler_logp[micro.ix]).abs()[micro.mask]
        self.sum, self.n = self.sum + float(d.sum()), self.n + d.numel()
        self.max = max(self.max, float(d.max()) if d.numel() else 0.0)
        self.seen = True

    def stats(self, acc: Any) -> dict[str, float]:
        """rollout/logprob_diff_mean and _max over all processes; {} when no policy forward ran (critic warm-up)."""
        if not self.seen:
            return {}
        return {"rollout/logprob_diff_mean": global_sum(torch.tensor(self.sum), acc) / max(
                    1.0, global_sum(torch.tensor(self.n), acc)),
                "rollout/logprob_diff_max": float(acc.gather(torch.tensor([self.max], device=acc.device)).max())}


def policy_term(cfg: Any, policy: Any, rollout: Any, micro: Micro, advantages: torch.Tensor, gap: LogprobGap, *,
                is_w: torch.Tensor | None = None, policy_loss: Callable = ppo_policy_loss,
                aggregation: str = "token-mean", norm: float | None = None, clip: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, dict[str, Any]]:
    """The policy's forward on a micro-batch and the loss every on-policy algorithm here shares: the (clipped)
    surrogate on `advantages` (B, R) minus cfg.entropy_coef x entropy. Returns (logp, the forward's values or None,
    loss, stats under the metric names). `policy_loss` is `core.ppo_policy_loss` (a stage passes its own name for
    it so that a test can wrap it); clip False gives the unclipped -A * ratio (REINFORCE on-policy)."""
    logp, ent, values = _forward(policy, micro.batch, cfg.temperature, cfg.entropy_coef > 0, cfg.packed)
    gap.record(logp, micro)
    # importance weights for a sampler that is not the trainer (is_correction; 1 = none)
    kw: dict[str, Any] = {} if is_w is None else {"weights": is_w[micro.ix]}
    if aggregation != "token-mean":
        kw.update(aggregation=aggregation, norm=norm)
    ix, m_ = micro.ix, micro.mask
    pg_loss, pg = policy_loss(logp, rollout.old_logp[ix], advantages[ix], m_, cfg.cliprange if clip else None, **kw)
    ent_loss = -masked_mean(ent, m_) if ent is not None else torch.zeros((), device=logp.device)
    stats = {"policy/clipfrac": pg["clipfrac"], "policy/approxkl": pg["approxkl"], "policy/ratio_mean": pg["ratio_mean"],
             "loss/policy": pg_loss.detach(), "loss/entropy": ent_loss.detach(), "policy/ratio_max": pg["ratio_max"]}
    return logp, values, pg_loss + cfg.entropy_coef * ent_loss, stats


def _forward(policy: Any, batch: Any, temperature: float, with_entropy: bool, packed: bool) -> tuple[Any, Any, Any]:
    from rlhf.models.generation import response_forward

    return response_forward(policy, batch, temperature, with_entropy=with_entropy, packed=packed)


def clip_each(acc: Any, models: list[Any], max_norm: float) -> None:
    """Clip each model's gradient norm to max_norm on its own (0 = off), unscaling fp16 gradients exactly once.
    accelerate's clip_grad_norm_ unscales every prepared optimiser each time it is called, so it serves one model;
    for two, the loss scaler unscales once and torch clips each model's (already unscaled) gradients."""
    if max_norm <= 0:
        return
    if len(models) == 1 or acc.distributed_type.name in ("FSDP", "DEEPSPEED"):  # the engine's own clipping
        for model in models:
            acc.clip_grad_norm_(model.parameters(), max_norm)
        return
    acc.unscale_gradients()  # a no-op unless fp16 loss scaling is on
    for model in models:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
