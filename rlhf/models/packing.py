"""Padding-free forwards: the real tokens of a padded (B, T) batch packed into one (1, N) row, N = the number of
real tokens, with position ids that restart at 0 for every sequence.

transformers (>= 4.44 for flash attention, 5.x for every attention through `masking_utils`) reads restarting
position ids as packed sequences when no 2-D attention mask is given, and builds a block-diagonal causal mask, so
no token attends across sequences (`masking_utils.find_packed_sequence_indices`). The transformer then does no work
at padded positions: on a batch whose prompts and responses vary in length that is the padded share of every
matmul. The attention of one packed row costs N^2 instead of B x T^2 (masked, not skipped, by SDPA on CPU), the
smaller part at these sizes: benchmarks/ppo_step.py --preset smollm2 measures the net effect.

The outputs are scattered back to the padded (B, T) layout (0 at padding), so every caller downstream (log-probs
of response tokens, values, the score at the last real token) is unchanged. Results equal the padded forward's to
float rounding (tests/models/test_packing.py: every architecture we test, log-probs, values, scores and gradients).

An architecture whose causal mask ignores packed position ids (OPT in transformers 5.24) is found by a one-off probe
(`separates_packed_sequences`) and keeps its padded forwards, with a warning.

Requires each row's real tokens to be one contiguous run (a left-padded prompt followed by a right-padded
response is; so are left- or right-padded rows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass
class Packed:
    """`ids` (1, N) the real tokens row after row; `position_ids` (1, N) restarting per row; `flat` (N,) the index of
    each packed token in the flattened (B * T) padded layout; `shape` (B, T); `offsets` (B,) where row b starts in
    the packed row."""

    ids: torch.Tensor
    position_ids: torch.Tensor
    flat: torch.Tensor
    shape: tuple[int, int]
    offsets: torch.Tensor
    first: torch.Tensor  # (B,) the padded column of each row's first real token

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(1, N, ...) -> (B, T, ...) with zeros at padded positions (differentiable)."""
        B, T = self.shape
        out = x.new_zeros((B * T, *x.shape[2:]))
        return out.index_copy(0, self.flat, x[0]).view(B, T, *x.shape[2:])

    def index_of(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Packed positions of padded positions (rows[i], cols[i]) (which must be real tokens)."""
        return self.offsets[rows] + cols - self.first[rows]


def needs_packing(attention_mask: torch.Tensor) -> bool:
    """True when the batch has padding (without it, the padded forward does no wasted work)."""
    return not bool(attention_mask.bool().all())


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Packed:
    """(B, T) ids and 0/1 mask -> `Packed`. Raises ValueError if a row's real tokens are not contiguous or a row
    has none."""
    mask = attention_mask.bool()
    B, T = mask.shape
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError("pack: a row of attention_mask is all zeros (no real token)")
    cols = torch.arange(T, device=mask.device).expand(B, T)
    first = torch.where(mask, cols, torch.full_like(cols, T)).min(1).values
    last = torch.where(mask, cols, torch.full_like(cols, -1)).max(1).values
    if bool((last - first + 1 != lengths).any()):
        raise ValueError("pack: a row's real tokens are not one contiguous run; pad prompts on the left and "
                         "responses on the right")
    flat = mask.reshape(-1).nonzero().squeeze(1)
    offsets = torch.cumsum(lengths, 0) - lengths
    # position of each packed token within its row: its column minus the row's first real column
    position_ids = (flat % T) - first[flat // T]
    return Packed(input_ids.reshape(-1)[flat][None], position_ids[None], flat, (B, T), offsets, first)


def separates_packed_sequences(module: torch.nn.Module, call: Any, real_ids: torch.Tensor) -> bool:
    """Whether `call(input_ids=..., position_ids=...)` (a model's forward: logits or hidden states, (1, N, ...))
    keeps packed sequences apart on this architecture: two pieces of `real_ids` run alone and packed in one row must
    give the same outputs. transformers does for every model whose mask goes through `masking_utils`; one that
    builds its own causal mask (OPT in transformers 5.24) lets the second sequence attend to the first. Probed once
    per module (no grad, dropout off) and remembered on it; the answer is logged where it is no."""
    known = getattr(module, "_rlhf_packing_ok", None)
    if known is not None:
        return known
    ids = real_ids.reshape(-1)[:12]
    ok = ids.numel() >= 4
    if ok:
        a, b = ids[: ids.numel() // 2][None], ids[ids.numel() // 2:][None]
        modes = [(m, m.training) for m in module.modules()]
        module.eval()
        try:
            with torch.no_grad():
                alone = torch.cat([call(input_ids=a, position_ids=None), call(input_ids=b, position_ids=None)], 1)
                pos = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])]).to(ids.device)[None]
                together = call(input_ids=torch.cat([a, b], 1), position_ids=pos)
            ok = bool(torch.allclose(together.float(), alone.float(), atol=1e-3, rtol=1e-3))
        finally:
            for m, training in modes:
                m.training = training
    if not ok:
        logger.warning("%s does not keep packed sequences apart in this transformers version: its forwards stay "
                       "padded (pack_sequences has no effect on it)", type(_innermost(module)).__name__)
    module._rlhf_packing_ok = ok
    return ok


def _innermost(module: torch.nn.Module) -> torch.nn.Module:
    from transformers import PreTrainedModel

    return next((m for m in module.modules() if isinstance(m, PreTrainedModel)), module)
