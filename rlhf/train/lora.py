"""A model made ready for training (4/8-bit base, gradient checkpointing, LoRA adapters through peft) from the
shared options, and its save as a plain Hugging Face folder."""

from __future__ import annotations

from typing import Any

import torch

from rlhf.errors import UserError


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


def check_vocab(tokenizer: Any, model: Any) -> None:
    """A tokenizer with more tokens than the model's embedding would index past it: a one-line error instead."""
    n = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n:
        raise UserError(f"tokenizer has {len(tokenizer)} tokens but the model's embedding has {n}; use the model's own "
                        "tokenizer")


def make_trainable(model: Any, cfg: Any, seed: int, **lora_kw: Any) -> tuple[Any, Any]:
    """(model to train, peft model or None) from TrainPrecisionOptions + LoRAOptions: a 4/8-bit base prepared for
    training (cfg.load_in), gradient checkpointing, then LoRA adapters of rank cfg.lora_r (add_lora) if set."""
    from rlhf.models.precision import enable_gradient_checkpointing, prepare_quantized

    model = prepare_quantized(model, cfg.load_in, cfg.gradient_checkpointing)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if not cfg.lora_r:
        return model, None
    peft_model = add_lora(model, cfg, seed, **lora_kw)
    return peft_model.get_base_model(), peft_model
