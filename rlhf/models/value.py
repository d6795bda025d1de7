"""A policy with a value head on its own backbone (the shared-backbone option of PPO).

One forward gives the LM logits and per-token values, so PPO runs one transformer instead of two per minibatch
(Stiennon et al. 2020 keep the value network separate so that its updates cannot damage the pretrained policy;
this is the cheaper option, off by default).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch


class PolicyWithValueHead(torch.nn.Module):
    def __init__(self, lm: Any):
        super().__init__()
        self.lm = lm
        cfg = self._base().config.get_text_config()
        self.v_head = torch.nn.Linear(cfg.hidden_size, 1)
        with torch.no_grad():  # a fresh value head starts at zero (lm-human-preferences)
            self.v_head.weight.zero_()
            self.v_head.bias.zero_()

    def _base(self) -> Any:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, logits_to_keep: int | torch.Tensor = 0,
                use_cache: bool = False) -> SimpleNamespace:
        """`.logits` (B, logits_to_keep or T, V) exactly as the LM gives them, and `.token_values` (B, T) float32.

        The logits come from the LM's own forward, so each family's output path applies (Granite's
        `logits_scaling`, Cohere's `logit_scale`, Gemma 2's soft-capping, ...); the value head reads the backbone's
        last hidden state, caught by a forward hook on the way (no second backbone pass). attention_mask None with
        restarting position_ids: packed sequences (rlhf.models.packing); `.token_values` then has the packed shape."""
        base = self._base()
        seen: dict[str, torch.Tensor] = {}

        def keep_hidden(_module: Any, _args: Any, output: Any) -> None:
            seen["h"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

        hook = getattr(base, base.base_model_prefix).register_forward_hook(keep_hidden)
        try:
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False, logits_to_keep=logits_to_keep)
        finally:
            hook.remove()
        hidden = seen["h"]
        values = self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1).float()
        return SimpleNamespace(logits=out.logits, token_values=values)

    def generate(self, *args: Any, **kw: Any) -> Any:
        return self.lm.generate(*args, **kw)

    def disable_adapter(self) -> Any:
        return self.lm.disable_adapter()


VALUE_CONFIG = "value_config.json"  # marks a value model folder written by `rlhf value-pretrain`


def is_value_model(folder: str) -> bool:
    """A folder written by `rlhf value-pretrain` (its value_config.json): a trained value head, not a reward head."""
    from pathlib import Path

    return bool(folder) and (Path(folder) / VALUE_CONFIG).is_file()


def response_values(value_model: Any, batch: Any) -> torch.Tensor:
    """(B, R) values V(s_t) of the state before each response token: the value head at position P-1+t.
    `value_model` is a `PerTokenScalar` (possibly wrapped by DDP)."""
    P, R = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    v = value_model(batch.input_ids, batch.attention_mask)[:, P - 1:P - 1 + R]
    return v * batch.response_mask
