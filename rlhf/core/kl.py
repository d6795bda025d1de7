"""KL estimators, KL coefficient controllers and KL-shaped per-token rewards."""

from __future__ import annotations

import math
from typing import Any

import torch

from rlhf.core._checks import check_2d, check_mask, check_number, check_rows, check_same_shape, check_tensor

KL_KINDS = ("k1", "k2", "k3")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi, with d = logp - ref_logp.

    logp, ref_logp: same shape, e.g. (B, T). Returns the same shape (no masking: mask the result yourself).
    k1 = d (unbiased, high variance, can be negative); k2 = d^2 / 2 (biased, low variance);
    k3 = exp(-d) - 1 + d (unbiased, low variance, always >= 0).
    """
    # Schulman, "Approximating KL divergence" (2020): k1, k2, k3 with r = pi_ref / pi = exp(-d).
    check_tensor("kl_estimate", "logp", logp)
    check_same_shape("kl_estimate", "logp", logp, ref_logp=ref_logp)
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.expm1(-d) + d  # expm1: exact for small d, where exp(-d) - 1 cancels
    raise ValueError(f"kl_estimate: unknown kind {kind!r}; valid kinds are {', '.join(KL_KINDS)}")


class FixedKLController:
    """A constant KL coefficient. Same interface as AdaptiveKLController."""

    def __init__(self, coef: float):
        self.value = check_number("FixedKLController", "coef", coef, low=0.0)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """No-op; returns the coefficient."""
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"type": "fixed", "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _load_value("FixedKLController", "fixed", state)


class AdaptiveKLController:
    """KL coefficient steered towards a target KL (Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences").

    After each batch: e = clip(current_kl / target - 1, -0.2, 0.2); value *= 1 + e * n_steps / horizon.
    `n_steps` is how many samples (episodes) the batch held, `horizon` how many samples a full correction takes.
    """

    def __init__(self, init_coef: float, target: float, horizon: float):
        name = "AdaptiveKLController"
        self.value = check_number(name, "init_coef", init_coef, low=0.0, low_open=True)
        self.target = check_number(name, "target", target, low=0.0, low_open=True)
        self.horizon = check_number(name, "horizon", horizon, low=0.0, low_open=True)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """Move the coefficient after a batch of `n_steps` samples whose mean KL was `current_kl`; returns it."""
        name = "AdaptiveKLController.update"
        kl = float(current_kl)
        if not math.isfinite(kl):
            raise ValueError(f"{name}: current_kl is {kl}; the policy has diverged or log-probs overflowed")
        n = check_number(name, "n_steps", n_steps, low=0.0)
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)  # proportional error, clipped as in Ziegler et al.
        mult = 1.0 + error * n / self.horizon
        if mult <= 0:
            raise ValueError(
                f"{name}: n_steps={n_steps} is more than 5x horizon={self.horizon}, which would make the "
                "coefficient negative; use a larger horizon"
            )
        self.value *= mult
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"type": "adaptive", "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Only the value is restored: target and horizon come from the (possibly edited) config on resume.
        self.value = _load_value("AdaptiveKLController", "adaptive", state)


def _load_value(name: str, kind: str, state: dict[str, Any]) -> float:
    if not isinstance(state, dict) or "value" not in state:
        raise ValueError(f"{name}.load_state_dict: expected a dict with a 'value' key, got {state!r}")
    if state.get("type", kind) != kind:
        raise ValueError(
            f"{name}.load_state_dict: the checkpoint holds a {state['type']!r} KL controller, not {kind!r}; "
            "make the KL controller setting match the run you resume"
        )
    return check_number(f"{name}.load_state_dict", "value", state["value"], low=0.0)


def shape_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kind: str = "k1",
) -> torch.Tensor:
    """Per-token rewards: -kl_coef * kl_estimate at each valid token, plus scores[b] at row b's last valid token.

    scores: (B,) reward-model scores; logp, ref_logp, mask: (B, T), mask right-padded with >= 1 valid token per row.
    Returns (B, T), 0 at masked positions.
    """
    # Ziegler et al. 2019 / InstructGPT: R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x)), the score at EOS.
    fn = "shape_rewards"
    check_tensor(fn, "logp", logp)
    check_2d(fn, "logp", logp)
    check_same_shape(fn, "logp", logp, ref_logp=ref_logp)
    check_mask(fn, mask, logp, "logp")
    check_tensor(fn, "scores", scores)
    if scores.shape != logp.shape[:1]:
        raise ValueError(f"{fn}: `scores` must have shape (B,) = {tuple(logp.shape[:1])}, got {tuple(scores.shape)}")
    kl_coef = check_number(fn, "kl_coef", kl_coef, low=0.0)
    check_rows(fn, mask)
    # Zero padded log-probs first: -inf there would give NaN gradients through torch.where (0 * inf).
    kl = kl_estimate(torch.where(mask, logp, 0.0), torch.where(mask, ref_logp, 0.0), kind)
    zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
    rewards = torch.where(mask, -kl_coef * kl, zero)
    last = mask.sum(dim=1, keepdim=True) - 1  # right-padded: the last valid index is count - 1
    is_last = torch.arange(mask.shape[1], device=mask.device) == last
    return rewards + torch.where(is_last, scores.unsqueeze(1).to(rewards.dtype), zero)
