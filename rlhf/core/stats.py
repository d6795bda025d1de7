"""Masked statistics over valid tokens: mean, variance and whitening."""

from __future__ import annotations

import torch

from rlhf.core._checks import check_mask, check_tensor

# Added to the variance before the square root in masked_whiten, so a constant batch gives 0, not NaN.
WHITEN_EPS = 1e-8


def _valid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where, not x * mask: inf or NaN at padded positions must not leak into sums (inf * 0 = NaN).
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) / sum(mask) over `dim` (all entries if None).

    x, mask: same shape, e.g. (B, T); mask bool, True = valid. Returns a 0-dim tensor (dim=None) or x with
    `dim` reduced. Values at masked positions never affect the result, even if they are inf or NaN.
    Raises ValueError if the reduction has no valid entry (all masked, or a slice along `dim` is all masked).
    """
    check_tensor("masked_mean", "x", x)
    check_mask("masked_mean", mask, x, "x")
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    if (count == 0).any():
        where = "anywhere" if dim is None else f"in some slice along dim={dim}"
        raise ValueError(
            f"masked_mean: `mask` has no valid entry {where}, so the mean is undefined; "
            "check that the responses are not empty and the mask is True at real tokens"
        )
    total = _valid(x, mask).sum() if dim is None else _valid(x, mask).sum(dim=dim)
    return total / count


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries of x (all of them, one number). Returns a 0-dim tensor.

    unbiased=True multiplies the population variance by n / (n - 1) (Bessel's correction), which needs n >= 2.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = int(mask.sum())
        if n < 2:
            raise ValueError(
                f"masked_var: unbiased variance needs at least 2 valid entries, got {n}; "
                "pass unbiased=False or use a larger batch"
            )
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the valid entries (unbiased variance); 0 at masked positions.

    x, mask: same shape, e.g. (B, T). shift_mean=False adds the mean back, so only the scale changes
    (used for rewards, whose sign carries meaning). Needs at least 2 valid entries.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return _valid(whitened, mask)
