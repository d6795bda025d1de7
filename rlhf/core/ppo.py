"""PPO: generalised advantage estimation, the clipped policy loss and the clipped value loss."""

from __future__ import annotations

import torch

from rlhf.core._checks import check_2d, check_mask, check_number, check_rows, check_same_shape, check_tensor
from rlhf.core.advantages import aggregate_loss
from rlhf.core.stats import masked_mean, masked_var


def _zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where, not x * mask: garbage (inf/NaN) at padded positions must give neither values nor NaN gradients.
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _check_inputs(fn: str, mask: torch.Tensor, first: str, x: torch.Tensor, **others: torch.Tensor) -> None:
    check_tensor(fn, first, x)
    check_2d(fn, first, x)
    check_same_shape(fn, first, x, **others)
    check_mask(fn, mask, x, first)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response, computed without gradients.

    rewards, values, mask: (B, T), mask right-padded with >= 1 valid token per row.
    delta_t = r_t + gamma * V_{t+1} - V_t, with V = 0 after the last valid token (the episode ends there);
    A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V. Returns (advantages, returns), each (B, T),
    0 at masked positions, not whitened. `lam` is a number or a (B,) tensor of one lambda per row (VAPO's
    length-adaptive lambda: `length_adaptive_lam`).
    """
    # Schulman et al. 2015, "High-Dimensional Continuous Control Using Generalized Advantage Estimation", eq. 16.
    fn = "gae"
    _check_inputs(fn, mask, "rewards", rewards, values=values)
    gamma = check_number(fn, "gamma", gamma, low=0.0, high=1.0)
    if isinstance(lam, torch.Tensor):
        if lam.shape != rewards.shape[:1]:
            raise ValueError(f"{fn}: a tensor `lam` must have shape (B,) = ({rewards.shape[0]},), one lambda per row; "
                             f"got {tuple(lam.shape)}")
        if not bool(((lam >= 0) & (lam <= 1)).all()):
            raise ValueError(f"{fn}: every `lam` must be in [0, 1]; got min {float(lam.min())}, max {float(lam.max())}")
        lam = lam.to(rewards.dtype)
    else:
        lam = check_number(fn, "lam", lam, low=0.0, high=1.0)
    check_rows(fn, mask)
    with torch.no_grad():
        r = _zero_masked(rewards, mask)
        v = _zero_masked(values, mask)  # zeros after the last valid token are the terminal V = 0
        next_v = torch.zeros_like(v[:, 0])
        next_adv = torch.zeros_like(next_v)
        advantages = []
        for t in reversed(range(r.shape[1])):
            delta = r[:, t] + gamma * next_v - v[:, t]
            next_adv = delta + gamma * lam * next_adv  # padded steps have delta = 0 and stay 0
            next_v = v[:, t]
            advantages.append(next_adv)
        adv = torch.stack(advantages[::-1], dim=1)
        adv = _zero_masked(adv, mask)
        return adv, _zero_masked(adv + v, mask)


def length_adaptive_lam(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """VAPO's length-adaptive GAE lambda for the policy (Yue et al. 2025, eq. 8): lam = 1 - 1 / (alpha * length),
    so that the sum of the TD weights, 1 / (1 - lam), grows with the response length (alpha = 0.05 there).
    lengths: (B,) valid tokens per response (>= 1). Returns (B,) float, clipped to [0, 1] (short responses get 0)."""
    fn = "length_adaptive_lam"
    check_tensor(fn, "lengths", lengths)
    alpha = check_number(fn, "alpha", alpha, low=0.0, low_open=True)
    if lengths.dim() != 1 or bool((lengths < 1).any()):
        raise ValueError(f"{fn}: `lengths` must be a (B,) tensor of response lengths >= 1")
    return (1.0 - 1.0 / (alpha * lengths.to(torch.float32))).clamp(0.0, 1.0)


IS_KINDS = ("tis", "mis")


def importance_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, kind: str,
                       threshold: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token importance weights that correct for a sampler whose probabilities differ from the trainer's
    (a separate engine such as vLLM, other kernels or precision), computed without gradients.

    rho = exp(trainer_logp - sampler_logp): the trainer's old policy over the distribution that really sampled.
    kind "tis" (truncated IS; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
    training"): w = min(rho, threshold). kind "mis" (masked IS): w = rho where rho <= threshold, else 0 (the token
    is dropped from the policy loss). Returns (w (B, T), 0 at masked positions; stats: mean weight, fraction of
    valid tokens truncated or masked, mean |trainer - sampler| log-prob gap)."""
    fn = "importance_weights"
    _check_inputs(fn, mask, "trainer_logp", trainer_logp, sampler_logp=sampler_logp)
    c = check_number(fn, "threshold", threshold, low=1.0)
    if kind not in IS_KINDS:
        raise ValueError(f"{fn}: unknown kind {kind!r}; use one of {IS_KINDS}")
    with torch.no_grad():
        diff = _zero_masked(trainer_logp - sampler_logp, mask)
        rho = torch.exp(diff)
        over = rho > c
        w = torch.clamp(rho, max=c) if kind == "tis" else torch.where(over, torch.zeros_like(rho), rho)
        w = _zero_masked(w, mask)
        stats = {"weight_mean": masked_mean(w, mask), "clipped_frac": masked_mean(over.to(rho.dtype), mask),
                 "logprob_diff_mean": masked_mean(diff.abs(), mask)}
    return w, stats


def ppo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float | None,
    weights: torch.Tensor | None = None, aggregation: str = "token-mean", norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate policy loss, averaged over valid tokens.

    logp (current policy, with grad), old_logp (policy that sampled), advantages, mask: (B, T).
    weights: optional (B, T) per-token weights without gradient (importance weights from `importance_weights`):
    loss = masked_mean(weights * max(...)); None = all 1. clip_range None: no clipping, the per-token loss is
    -A * ratio (on-policy its gradient is REINFORCE's, -A * grad logp). aggregation, norm: how the per-token loss
    is reduced (`aggregate_loss`: "token-mean", the default and PPO's, or GRPO's per-sequence modes); the stats
    are token means whatever the aggregation.
    Returns (loss, stats): loss is 0-dim; stats are detached 0-dim tensors:
      clipfrac   fraction of valid tokens where the clipped term is the larger one (its gradient is 0 there),
      approxkl   k3 estimate of KL(old || new) from the old policy's samples: mean(ratio - 1 - log ratio),
      ratio_mean, ratio_min, ratio_max   of ratio = exp(logp - old_logp) over valid tokens.
    """
    fn = "ppo_policy_loss"
    _check_inputs(fn, mask, "logp", logp, old_logp=old_logp, advantages=advantages)
    eps = None if clip_range is None else check_number(fn, "clip_range", clip_range, low=0.0, low_open=True)
    log_ratio = _zero_masked(logp - old_logp, mask)
    adv = _zero_masked(advantages, mask)
    ratio = torch.exp(log_ratio)
    # Schulman et al. 2017 (PPO), eq. 7, as a loss to minimise: max of the negated unclipped and clipped terms.
    loss_unclipped = -adv * ratio
    loss_clipped = loss_unclipped if eps is None else -adv * torch.clamp(ratio, 1.0 - eps, 1.0 + eps)
    per_token = torch.maximum(loss_unclipped, loss_clipped)
    if weights is not None:
        check_same_shape(fn, "logp", logp, weights=weights)
        per_token = per_token * _zero_masked(weights.detach(), mask)
    loss = masked_mean(per_token, mask) if aggregation == "token-mean" else aggregate_loss(per_token, mask, aggregation,
                                                                                            norm)
    with torch.no_grad():
        valid_ratio = ratio[mask]
        stats = {
            "clipfrac": masked_mean((loss_clipped > loss_unclipped).to(ratio.dtype), mask),
            # k3 with the old policy as the sampler: KL(old || new) ~ ratio - 1 - log ratio (Schulman's KL blog).
            "approxkl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_min": valid_ratio.min(),
            "ratio_max": valid_ratio.max(),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Value loss 0.5 * mean((V - R)^2), with PPO-style clipping of V around the rollout values.

    values (current, with grad), old_values (at rollout), returns, mask: (B, T).
    With clip_range_value = c: V_clip = old + clip(V - old, -c, c), loss = 0.5 * mean(max((V-R)^2, (V_clip-R)^2)).
    With None: 0.5 * mean((V - R)^2). Returns (loss, stats); stats are detached 0-dim tensors:
      clipfrac             fraction of valid tokens where the clipped error is strictly larger (0 when None),
      explained_variance   1 - var(R - V) / var(R) over valid tokens, with the `values` passed in
                           (1 = perfect, 0 = no better than a constant; 0 when var(R) = 0, where it is undefined),
      value_mean, return_mean.
    """
    fn = "ppo_value_loss"
    _check_inputs(fn, mask, "values", values, old_values=old_values, returns=returns)
    v = _zero_masked(values, mask)
    ret = _zero_masked(returns, mask)
    err = (v - ret) ** 2
    if clip_range_value is None:
        loss = 0.5 * masked_mean(err, mask)
        clipped_more = torch.zeros_like(mask)
    else:
        c = check_number(fn, "clip_range_value", clip_range_value, low=0.0, low_open=True)
        old = _zero_masked(old_values, mask)
        # PPO value clipping (OpenAI baselines ppo2; Ziegler et al. 2019 lm-human-preferences).
        v_clipped = old + torch.clamp(v - old, -c, c)
        err_clipped = (v_clipped - ret) ** 2
        loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
        clipped_more = err_clipped > err
    with torch.no_grad():
        var_returns = masked_var(ret, mask, unbiased=False)
        var_residual = masked_var(ret - v, mask, unbiased=False)
        if var_returns > 0:
            explained = 1.0 - var_residual / var_returns
        else:
            explained = torch.zeros((), dtype=var_returns.dtype, device=var_returns.device)
        stats = {
            "clipfrac": masked_mean(clipped_more.to(v.dtype), mask),
            "explained_variance": explained,
            "value_mean": masked_mean(v, mask),
            "return_mean": masked_mean(ret, mask),
        }
    return loss, stats
