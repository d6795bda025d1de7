"""A policy with a value head on its own backbone (the shared-backbone option of PPO).

One forward gives the LM logits and per-token values, so PPO runs one transformer instead of two per minibatch
(Ziegler et al. 2019 found separate networks more stable; this is the cheaper option, off by default).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from rlhf.errors import UserError


class PolicyWithValueHead(torch.nn.Module):
    def __init__(self, lm: Any):
        super().__init__()
        self.lm = lm
        cfg = self._base().config.get_text_config()
        if getattr(cfg, "final_logit_softcapping", None):
            raise UserError("config field 'shared_value_head': this model soft-caps its logits, which the shared "
                            "head's direct lm_head call would skip; use a separate value model")
        self.v_head = torch.nn.Linear(cfg.hidden_size, 1)
        with torch.no_grad():  # a fresh value head starts at zero (lm-human-preferences)
            self.v_head.weight.zero_()
            self.v_head.bias.zero_()

    def _base(self) -> Any:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                logits_to_keep: int = 0, use_cache: bool = False) -> SimpleNamespace:
        """`.logits` (B, logits_to_keep or T, V) as the LM would give, and `.token_values` (B, T) float32."""
        base = self._base()
        hidden = getattr(base, base.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask,
                                                       position_ids=position_ids, use_cache=False).last_hidden_state
        kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        logits = base.get_output_embeddings()(kept)
        values = self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1).float()
        return SimpleNamespace(logits=logits, token_values=values)

    def generate(self, *args: Any, **kw: Any) -> Any:
        return self.lm.generate(*args, **kw)

    def disable_adapter(self) -> Any:
        return self.lm.disable_adapter()
