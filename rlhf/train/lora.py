"""LoRA adapters (peft) on a model being trained, from a LoRAOptions config."""

from __future__ import annotations

from typing import Any

import torch


def add_lora(model: Any, cfg: Any, seed: int, **lora_kw: Any) -> Any:
    """The peft model wrapping `model` with adapters of rank cfg.lora_r (alpha, dropout, target modules from cfg);
    the adapters' init is drawn under `seed` without touching the global RNG. `lora_kw` goes to LoraConfig
    (task_type="CAUSAL_LM" for a policy; exclude_modules=[head] for a reward model). Train through
    `peft_model.get_base_model()` (the model with the adapters injected); `peft_model.disable_adapter()` gives the
    frozen base (DPO's and PPO's reference) and `merge_and_unload()` a plain model to save."""
    from peft import LoraConfig, get_peft_model

    target: Any = cfg.lora_target
    if target != "all-linear":
        target = [t.strip() for t in target.split(",") if t.strip()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=target,
                                                lora_dropout=cfg.lora_dropout, **lora_kw))


def save_model(acc: Any, model: Any, peft_model: Any, out: Any, dtype: str) -> None:
    """Save an HF folder that plain transformers loads, in `dtype`: LoRA adapters merged; under FSDP/ZeRO-3 the
    full state dict is gathered first (every process must call this)."""
    from rlhf.models.precision import cast_state_dict

    if peft_model is not None:
        if acc.is_main_process:
            merged = peft_model.merge_and_unload()
            merged.save_pretrained(out, safe_serialization=True, state_dict=cast_state_dict(merged.state_dict(), dtype))
        return
    state = acc.get_state_dict(model)  # a collective under FSDP/DeepSpeed: gathers the shards
    if acc.is_main_process:
        acc.unwrap_model(model).save_pretrained(out, safe_serialization=True, state_dict=cast_state_dict(state, dtype))
