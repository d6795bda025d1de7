"""Input checks shared by the core functions. Every problem raises ValueError naming the function and the fix."""

from __future__ import annotations

import math

import torch


def check_tensor(fn: str, name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{fn}: `{name}` must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_mask(fn: str, mask: object, like: torch.Tensor, like_name: str) -> torch.Tensor:
    """`mask` must be a bool tensor with exactly the shape of `like` (no broadcasting: it hides bugs)."""
    check_tensor(fn, "mask", mask)
    if mask.dtype != torch.bool:
        raise ValueError(
            f"{fn}: `mask` must have dtype torch.bool (True = valid token), got {mask.dtype}; "
            "convert it with mask.bool() or build it with a comparison"
        )
    if mask.shape != like.shape:
        raise ValueError(
            f"{fn}: `mask` shape {tuple(mask.shape)} does not match `{like_name}` shape {tuple(like.shape)}; "
            "both must be the same (B, T) over response tokens"
        )
    return mask


def check_same_shape(fn: str, ref_name: str, ref: torch.Tensor, **others: object) -> None:
    for name, x in others.items():
        check_tensor(fn, name, x)
        if x.shape != ref.shape:
            raise ValueError(
                f"{fn}: `{name}` shape {tuple(x.shape)} does not match `{ref_name}` shape {tuple(ref.shape)}"
            )


def check_2d(fn: str, name: str, x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{fn}: `{name}` must be 2-D (B, T) over response tokens, got shape {tuple(x.shape)}")


def check_rows(fn: str, mask: torch.Tensor) -> None:
    """Rows must be right-padded (True... then False...) and hold at least one valid token.

    Functions that find a row's last token (reward placement, bootstrapping V = 0 after it) need both;
    a left-padded or empty row would silently put the score or the bootstrap in the wrong place.
    """
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"{fn}: rows {empty[:10]} of `mask` have no valid token (empty responses); "
            "drop those samples before this step or check how the response mask is built"
        )
    holes = (mask[:, 1:] & ~mask[:, :-1]).any(dim=1).nonzero().flatten().tolist()
    if holes:
        raise ValueError(
            f"{fn}: rows {holes[:10]} of `mask` are not right-padded (a True follows a False); "
            "the mask must be True for response tokens then False for padding"
        )


def check_number(fn: str, name: str, value: object, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """A finite real number in [low, high] (or (low, high] with low_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{fn}: `{name}` must be a number, got {type(value).__name__}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open else '['}{lo}, {hi}]"
        raise ValueError(f"{fn}: `{name}` must be finite and in {interval}, got {value!r}")
    return value
