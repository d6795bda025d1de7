"""Scalar-head models: per-token scalars (value function) and the score at the last real token (reward)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from rlhf.models.loading import scalar_head
from rlhf.models.packing import needs_packing, pack, separates_packed_sequences


def backbone(model: PreTrainedModel) -> torch.nn.Module:
    """The transformer body of a `*ForSequenceClassification` / `*ForCausalLM` model."""
    return getattr(model, model.base_model_prefix)


def per_token_scalars(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      packed: bool = False) -> torch.Tensor:
    """(B, T) ids and mask -> (B, T) head outputs at every position (float32).

    Calls the backbone and the head directly: the stock `*ForSequenceClassification.forward` pools at the last
    non-pad *id*, which is wrong when pad == EOS; we pool by the attention mask instead. packed: only the real
    tokens, in one row (rlhf.models.packing), when there is padding; the outputs at padding are then 0.
    """
    body = backbone(model)
    if packed and needs_packing(attention_mask) and separates_packed_sequences(
            body, lambda **kw: body(**kw, use_cache=False).last_hidden_state, input_ids[attention_mask.bool()]):
        pk = pack(input_ids, attention_mask)
        hidden = body(input_ids=pk.ids, position_ids=pk.position_ids, use_cache=False).last_hidden_state
        return pk.unpack(scalar_head(model)(hidden).float())[..., 0]
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


def score_at_last_token(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        packed: bool = False) -> torch.Tensor:
    """(B, T) -> (B,) the scalar head read at each row's last real token (the reward)."""
    values = per_token_scalars(model, input_ids, attention_mask, packed)
    idx = last_token_index(attention_mask)
    return values.gather(1, idx[:, None]).squeeze(1)


class PerTokenScalar(torch.nn.Module):
    """Wraps a scalar-head model so that `forward(input_ids, attention_mask)` gives (B, T) per-token values.

    Going through `forward` (not the submodules) keeps DDP's gradient synchronisation working when the value
    model is wrapped by `accelerate`.
    """

    def __init__(self, model: PreTrainedModel, packed: bool = False):
        super().__init__()
        self.model = model
        self.packed = packed  # padding-free forwards (rlhf.models.packing)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return per_token_scalars(self.model, input_ids, attention_mask, self.packed)


def shared_prefix_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, groups: torch.Tensor,
                         min_saving: float = 0.1) -> dict[str, torch.Tensor] | None:
    """Split right-padded rows (U, T) into each group's common prefix (computed once) and the rows' suffixes.

    groups: (U,) group index per row (the responses of one prompt). The prefix of a group is the longest common
    prefix of its rows' real tokens, leaving every row at least one token of its own. Returns None when that saves
    less than `min_saving` of the padded tokens, or some group shares no token (then the plain forward is used).
    Layout: prefix_ids/prefix_mask (G, P) left-padded, suffix_ids/suffix_mask (U, S) right-padded, row_group (U,)."""
    lengths = attention_mask.sum(1).tolist()
    rows = input_ids.tolist()
    uniq, row_group = torch.unique(groups, return_inverse=True)
    rg = row_group.tolist()
    prefix_len = []
    members_of: dict[int, list[int]] = {}
    for i, g in enumerate(rg):
        members_of.setdefault(g, []).append(i)
    for g in range(len(uniq)):
        members = [rows[i][: lengths[i]] for i in members_of[g]]
        n = min(len(m) for m in members) - 1  # every row keeps at least its last token
        k = 0
        while k < n and all(m[k] == members[0][k] for m in members):
            k += 1
        prefix_len.append(k)
    if min(prefix_len) == 0:
        return None
    U, G = len(rows), len(prefix_len)
    P = max(prefix_len)
    suffix_len = [lengths[i] - prefix_len[rg[i]] for i in range(U)]
    S = max(suffix_len)
    shared_cost, full_cost = G * P + U * S, U * input_ids.shape[1]  # padded token positions
    if shared_cost > (1 - min_saving) * full_cost:
        return None
    prefix_ids = torch.zeros((G, P), dtype=input_ids.dtype)
    prefix_mask = torch.zeros((G, P), dtype=attention_mask.dtype)
    for g, k in enumerate(prefix_len):
        i = members_of[g][0]  # any member: they all start with the prefix
        prefix_ids[g, P - k:] = torch.tensor(rows[i][:k])
        prefix_mask[g, P - k:] = 1
    suffix_ids = torch.zeros((U, S), dtype=input_ids.dtype)
    suffix_mask = torch.zeros((U, S), dtype=attention_mask.dtype)
    for i in range(U):
        k = prefix_len[rg[i]]
        suffix_ids[i, : suffix_len[i]] = torch.tensor(rows[i][k: lengths[i]])
        suffix_mask[i, : suffix_len[i]] = 1
    device = input_ids.device
    return {"prefix_ids": prefix_ids.to(device), "prefix_mask": prefix_mask.to(device),
            "suffix_ids": suffix_ids.to(device), "suffix_mask": suffix_mask.to(device),
            "row_group": row_group.to(device), "prefix_len": torch.tensor(prefix_len, device=device)}


def score_with_shared_prefix(model: PreTrainedModel, layout: dict[str, torch.Tensor]) -> torch.Tensor:
    """(U,) scores at each row's last real token, equal to `score_at_last_token` on the full rows (to float
    rounding, gradients included): one forward over the groups' prefixes fills a KV cache, which is gathered to one
    copy per row (a differentiable index), then one forward over the suffixes attends to it."""
    from rlhf.models.generation import new_kv_cache

    body = backbone(model)
    cache = new_kv_cache(model)
    p_mask = layout["prefix_mask"]
    body(input_ids=layout["prefix_ids"], attention_mask=p_mask, position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
         cache=cache, use_cache=True)
    if cache.get_seq_length() != p_mask.shape[1]:  # e.g. gradient checkpointing: transformers skips the cache
        raise ValueError("score_with_shared_prefix: the model did not fill its KV cache (gradient checkpointing "
                         "turns it off); score the full rows with score_at_last_token instead")
    rg = layout["row_group"]
    cache.batch_select_indices(rg)
    s_mask = layout["suffix_mask"]
    positions = layout["prefix_len"][rg][:, None] + torch.arange(s_mask.shape[1], device=s_mask.device)[None]
    hidden = body(input_ids=layout["suffix_ids"], attention_mask=torch.cat([p_mask[rg], s_mask], dim=1),
                  position_ids=positions, cache=cache, use_cache=True).last_hidden_state
    last = hidden[torch.arange(len(rg), device=rg.device), s_mask.sum(1) - 1]
    return scalar_head(model)(last).squeeze(-1).float()
