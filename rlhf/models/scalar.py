"""Scalar-head models: per-token scalars (value function) and the score at the last real token (reward)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from rlhf.models.loading import scalar_head


def backbone(model: PreTrainedModel) -> torch.nn.Module:
    """The transformer body of a `*ForSequenceClassification` / `*ForCausalLM` model."""
    return getattr(model, model.base_model_prefix)


def per_token_scalars(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) ids and mask -> (B, T) head outputs at every position (float32).

    Calls the backbone and the head directly: the stock `*ForSequenceClassification.forward` pools at the last
    non-pad *id*, which is wrong when pad == EOS; we pool by the attention mask instead.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # correct positions under left padding
    hidden = backbone(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False).last_hidden_state
    return scalar_head(model)(hidden).squeeze(-1).float()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of the last position with mask 1 (works for left and right padding)."""
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    idx = torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values
    if (idx < 0).any():
        raise ValueError("a row of attention_mask is all zeros: there is no real token to read the score at")
    return idx


def score_at_last_token(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B,) the scalar head read at each row's last real token (the reward)."""
    values = per_token_scalars(model, input_ids, attention_mask)
    idx = last_token_index(attention_mask)
    return values.gather(1, idx[:, None]).squeeze(1)


class PerTokenScalar(torch.nn.Module):
    """Wraps a scalar-head model so that `forward(input_ids, attention_mask)` gives (B, T) per-token values.

    Going through `forward` (not the submodules) keeps DDP's gradient synchronisation working when the value
    model is wrapped by `accelerate`.
    """

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return per_token_scalars(self.model, input_ids, attention_mask)
