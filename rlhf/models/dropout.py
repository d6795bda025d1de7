"""Dropout off in every family, by walking the built model (not by editing its config).

Editing `config.dropout` after a model is built does nothing for families that copy the rate into a plain float
attribute at init (OPT: `self.dropout = config.dropout`, then `F.dropout(h, p=self.dropout, training=...)`), so
their forwards stay stochastic in train mode. PPO needs the rollout and training forwards to agree (first ratio 1),
and the reward stage's shared-prefix scorer equals the plain forward only without dropout.
"""

from __future__ import annotations

from typing import Any

import torch

# attribute names that hold a dropout *rate* in transformers' modeling code (float fields, not modules)
_RATE_WORDS = ("dropout", "pdrop", "drop_prob", "layerdrop")


def _is_rate_name(name: str) -> bool:
    n = name.lower()
    return any(w in n for w in _RATE_WORDS) and not n.startswith("_")


def disable_dropout(model: Any) -> int:
    """Set every dropout rate in `model` to 0: `nn.Dropout*` modules' `p`, float rate attributes on any module
    (OPT's `dropout`, `activation_dropout`, `layerdrop`), and the rate fields of every config the model holds.
    Returns how many rates were non-zero before (0 = the model had no dropout)."""
    changed = 0
    configs = []
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
            changed += mod.p != 0
            mod.p = 0.0
        for name, value in list(vars(mod).items()):
            if isinstance(value, float) and not isinstance(value, bool) and _is_rate_name(name):
                changed += value != 0
                setattr(mod, name, 0.0)
        cfg = getattr(mod, "config", None)
        if cfg is not None and all(cfg is not c for c in configs):
            configs.append(cfg)
    for cfg in configs:
        subs = [cfg] + [getattr(cfg, k) for k in ("text_config", "vision_config") if hasattr(cfg, k)]
        for c in subs:
            for name, value in list(vars(c).items()):
                if isinstance(value, float) and _is_rate_name(name):
                    changed += value != 0
                    setattr(c, name, 0.0)
    return int(changed)
